"""The end-of-study report: console tables, figures, optimization_results.yaml,
and the same on the study's MLflow parent run."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

log = logging.getLogger(__name__)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --------------------------------------------------------------------------
# One line per trial while the sweep runs (the sweeper logs them)

# Loggers of the launchers that echo a job's every override as ``#N : k=v k=v ...``.
LAUNCHER_LOGGERS = (
    "hydra._internal.core_plugins.basic_launcher",
    "hydra_plugins.hydra_joblib_launcher._core",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
)


class HideLaunchEcho(logging.Filter):
    """Drops a launcher's ``#N : <overrides>`` line.

    It repeats every fixed override of the command line, the internal
    ``sweep.*`` keys that tell a job its trial (storage URL included), and
    sampled floats with all their digits; ``trial_start_line`` says what differs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not _LAUNCH_ECHO.match(str(record.msg) if not record.args else record.getMessage())


_LAUNCH_ECHO = re.compile(r"\s*#\d+ : ")


def hide_launch_echo() -> None:
    """Install ``HideLaunchEcho`` on the launchers' loggers (once; it survives Hydra's logging set-up)."""
    for name in LAUNCHER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, HideLaunchEcho) for f in logger.filters):
            logger.addFilter(HideLaunchEcho())


def trial_start_line(number: int, params: Mapping[str, Any]) -> str:
    """``trial 3: optimizer.lr=0.00123 model.dropout=0.231``: the sampled values, rounded to 4 significant digits."""
    text = " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
    return f"trial {number}: {text or '(no sampled parameters)'}"


def trial_result_line(number: int, values: Sequence[float], user_attrs: Mapping[str, Any],
                      names: Sequence[str] = ()) -> str:
    """``trial 3 COMPLETE: mean_inner_acc 0.8125 ± 0.0412 over 5 folds (test folds acc 0.8)``.

    The ± is the standard deviation over folds the trial reporter recorded
    (``objective_std``); a one-fold trial shows none rather than ``± 0``.
    """
    names = list(names) if len(names) == len(values) else ["value"] * len(values)
    parts = []
    for index, (name, value) in enumerate(zip(names, values)):
        text = f"{name} {_fmt(float(value))}"
        folds = user_attrs.get("folds_done")
        if index == 0 and folds:
            std = user_attrs.get("objective_std")
            text += (f" ± {_fmt(float(std))}" if std is not None and int(folds) > 1 else "") + f" over {folds} fold{'' if int(folds) == 1 else 's'}"
        parts.append(text)
    # With trainer.validation=inner the objective is the inner split's score: the test folds' beside it.
    test = user_attrs.get("test_fold_acc_mean")
    differs = test is not None and abs(float(test) - float(values[0])) > 1e-9
    tail = f" (test folds acc {_fmt(float(test))})" if differs else ""
    return f"trial {number} COMPLETE: {', '.join(parts)}{tail}"


def _duration(trial: FrozenTrial) -> str:
    if trial.datetime_start and trial.datetime_complete:
        return f"{(trial.datetime_complete - trial.datetime_start).total_seconds():.0f}s"
    return ""


def _note(trial: FrozenTrial) -> str:
    if trial.state == TrialState.FAIL:
        return str(trial.user_attrs.get("fail_reason", ""))[:120]
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        return f"pruned at step {max(trial.intermediate_values)}"
    return ""


def short_names(names: list[str]) -> dict[str, str]:
    """``optimizer.lr`` -> ``lr`` where the last part is unambiguous, for narrow tables."""
    last = [n.rsplit(".", 1)[-1] for n in names]
    return {n: (s if last.count(s) == 1 else n) for n, s in zip(names, last)}


def trials_table(study: optuna.Study) -> Table:
    table = Table(title=f"Optuna study {study.study_name}")
    trials = study.get_trials(deepcopy=False)
    # With trainer.validation=inner the value is the inner split's score and the test folds are only
    # scored: show that score beside it (the reporter records it as a user attribute).
    test_column = any("test_fold_acc_mean" in t.user_attrs for t in trials)
    columns = ["trial", "state", "value", *(["test acc"] if test_column else []), "epochs", "time", "params", "note"]
    for column in columns:
        table.add_column(column, justify="right" if column in ("trial", "value", "test acc", "epochs", "time")
                         else "left", max_width=60 if column == "note" else None, overflow="fold")
    short = short_names(sorted({name for t in trials for name in t.params}))
    for t in trials:
        values = "" if t.values is None else ", ".join(_fmt(v) for v in t.values)
        params = " ".join(f"{short[k]}={_fmt(v)}" for k, v in t.params.items())
        style = {TrialState.PRUNED: "yellow", TrialState.FAIL: "red"}.get(t.state)
        test = [_fmt(t.user_attrs["test_fold_acc_mean"]) if "test_fold_acc_mean" in t.user_attrs else ""]
        table.add_row(str(t.number), t.state.name, values, *(test if test_column else []),
                      str(t.user_attrs.get("epochs_trained", "")), _duration(t), params, _note(t), style=style)
    return table


# Fewer finished trials than this give importances that are mostly noise: none are shown.
MIN_TRIALS_FOR_IMPORTANCES = 10


def importances(study: optuna.Study, directions: list[str]) -> dict[str, float]:
    """fANOVA parameter importances of the first objective; {} when they cannot be computed
    or rest on fewer than MIN_TRIALS_FOR_IMPORTANCES complete trials."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCES:
        return {}
    target = (lambda t: t.values[0]) if len(directions) > 1 else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study, target=target))
    except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. every trial had the same params
        log.info("no parameter importances: %s", err)
        return {}


def figures(study: optuna.Study, directions: list[str], have_importances: bool) -> dict[str, Any]:
    """Matplotlib figures of the study, by name; a figure that cannot be drawn is left out."""
    import matplotlib  # deferred: matplotlib (~0.6 s), only when a report is drawn

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as plots  # deferred: ~1.6 s, and only after matplotlib.use("Agg")

    target = (lambda t: t.values[0]) if len(directions) > 1 else None
    makers = {
        "optimization_history": lambda: plots.plot_optimization_history(
            study, target=target, target_name=(metric_names(study) or ["mean val acc"])[0]),
    }
    if have_importances:
        makers["param_importances"] = lambda: plots.plot_param_importances(study, target=target)
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        makers["intermediate_values"] = lambda: plots.plot_intermediate_values(study)
    if len(directions) > 1:
        makers["pareto_front"] = lambda: plots.plot_pareto_front(study)
    out = {}
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's matplotlib plots are "experimental"
                axes = make()
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            out[name] = figure
        except Exception as err:  # a figure is a nicety; the study is what matters
            log.info("figure %s not drawn: %s", name, err)
    return out


def within_noise_of_best(study: optuna.Study, best: FrozenTrial) -> dict[str, Any]:
    """Which complete trials cannot be told apart from ``best`` on their per-fold values.

    Each trial's fold values (the ``fold_values`` the trial reporter records) are paired with
    the best trial's; a trial is within noise when the 95 % interval of the corrected resampled
    t-test (esc_sweep.stats) holds 0. Returns ``{"within": [numbers], "distinct": [numbers],
    "unknown": [numbers], "reason": str | None}``; ``reason`` says why nothing could be compared.
    """
    from esc_sweep.stats import compare_paired  # deferred: scipy (~0.3 s), only at the end of a study

    out: dict[str, Any] = {"within": [], "distinct": [], "unknown": [], "reason": None}
    reference = best.user_attrs.get("fold_values") or {}
    if len(reference) < 2:
        out["reason"] = ("one fold per trial: there is no fold-to-fold spread to tell noise from signal"
                         if len(reference) == 1 else "the trials recorded no per-fold values")
    folds = int(best.user_attrs.get("dataset_folds") or 0) or max(len(reference), 2)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.number == best.number:
            continue
        values = trial.user_attrs.get("fold_values") or {}
        keys = sorted(set(values) & set(reference))
        if out["reason"] or len(keys) < 2 or len(keys) != len(reference):
            out["unknown"].append(trial.number)
            continue
        comparison = compare_paired([values[k] for k in keys], [reference[k] for k in keys], folds=folds)
        low, high = comparison.ci95
        out["within" if low <= 0 <= high else "distinct"].append(trial.number)
    return out


def noise_sentence(best: FrozenTrial, noise: dict[str, Any]) -> str:
    """``best: trial 7, 78.1 %; trials 3, 12 within noise (paired by fold, corrected t-test)``."""
    value = f"{100 * best.value:.1f} %" if best.value is not None and 0 <= best.value <= 1 else _fmt(best.value)
    head = f"best: trial {best.number}, {value}"
    if noise["reason"]:
        return f"{head}; {noise['reason']}"
    within = noise["within"]
    if not within:
        tail = "no other trial is within noise of it" if noise["distinct"] else "no other trial to compare"
    else:
        names = ", ".join(map(str, within))
        tail = (f"trial{'s' if len(within) > 1 else ''} {names} within noise (the 95 % interval of the paired, "
                f"corrected difference holds 0): {'they are' if len(within) > 1 else 'it is'} as good as far as "
                "these folds can tell")
    return f"{head}; {tail}"


def summary(study: optuna.Study, n_trials: int) -> dict[str, float]:
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    return {
        "n_trials_target": n_trials,
        "n_complete": count[TrialState.COMPLETE],
        "n_pruned": count[TrialState.PRUNED],
        "n_fail": count[TrialState.FAIL],
        # Cost: epochs trained over all trials (pruned and failed ones included).
        "total_epochs_trained": sum(int(t.user_attrs.get("epochs_trained", 0)) for t in trials),
    }


def study_report(
    study: optuna.Study, directions: list[str], sweep_dir: str, parent_run_id: str | None, *,
    n_trials: int, storage: str, console: Console | None = None, full: bool = True,
) -> dict[str, Any]:
    """Print and save the study's report. ``full=False`` (a summary) leaves out the
    parameter importances and the figures, whose imports (scikit-learn, matplotlib)
    alone take seconds."""
    # Wide enough for the trials table when the output is a log file, not a terminal.
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    out_dir = Path(sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    console.print(trials_table(study))
    counts = summary(study, n_trials)
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "storage": storage, **counts}
    metrics: dict[str, float] = dict(counts)
    # What the values are (e.g. mean_inner_acc under trainer.validation=inner), as the sweeper named them.
    names = metric_names(study)
    if names:
        results["objectives"] = names

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        console.print("[bold red]No trial completed[/]: no best parameters.")
    elif len(directions) == 1:
        best = study.best_trial
        results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
        metrics["best_value"] = best.value
        console.print(f"[bold]Best trial {best.number}[/]: {names[0] if names else 'value'} {best.value:.4f}")
        for key, value in best.params.items():
            console.print(f"  {key} = {_fmt(value)}")
        noise = within_noise_of_best(study, best)
        results.update(within_noise_of_best=noise["within"], distinct_from_best=noise["distinct"],
                       noise_summary=noise_sentence(best, noise))
        console.print(noise_sentence(best, noise))
    else:
        pareto = [{"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials]
        results["solutions"] = pareto
        console.print(f"[bold]{len(pareto)} Pareto-optimal trials[/]:")
        for t in pareto:
            console.print(f"  trial {t['number']}: values {t['values']}  {t['params']}")

    imp = importances(study, directions) if full else {}
    if full and not imp and len(complete) < MIN_TRIALS_FOR_IMPORTANCES:
        console.print(f"[dim]no parameter importances: {len(complete)} complete trial(s); below "
                      f"{MIN_TRIALS_FOR_IMPORTANCES} they are mostly noise[/]")
    if imp:
        results["param_importances"] = imp
        table = Table(title="Parameter importances (fANOVA)")
        table.add_column("parameter")
        table.add_column("importance", justify="right")
        for name, value in imp.items():
            table.add_row(name, f"{value:.3f}")
            metrics[f"importance.{name}"] = value
        console.print(table)
    console.print(
        f"{counts['n_complete']} complete, {counts['n_pruned']} pruned, {counts['n_fail']} failed; "
        f"{counts['total_epochs_trained']} epochs trained in all"
    )

    results_path = out_dir / "optimization_results.yaml"
    OmegaConf.save(OmegaConf.create(_plain(results)), results_path)
    trials_csv = out_dir / "trials.csv"
    study.trials_dataframe().to_csv(trials_csv, index=False)
    figs = figures(study, directions, bool(imp)) if full else {}
    if figs:
        figure_dir = out_dir / "study_figures"
        figure_dir.mkdir(exist_ok=True)
        for name, figure in figs.items():
            figure.savefig(figure_dir / f"{name}.png", dpi=100)
    log.info("study report written to %s", out_dir)

    if parent_run_id:
        from esc_sweep.tracking.study_run import log_study_report  # deferred: mlflow (~5 s), only with a parent run

        log_study_report(parent_run_id, figs, metrics, [results_path, trials_csv], objectives=names)
        console.print(f"Study report logged to MLflow run {parent_run_id}")
    if figs:
        import matplotlib.pyplot as plt  # deferred: pyplot (~1.9 s), only to close drawn figures

        for figure in figs.values():
            plt.close(figure)
    return results


def metric_names(study: optuna.Study) -> list[str]:
    """The study's objective names (``Study.metric_names``); [] when none were set or they cannot be read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # metric_names is experimental in some Optuna versions
        try:
            return list(study.metric_names or [])
        except Exception:
            return []


def _plain(value: Any) -> Any:
    """YAML-safe copy: numpy scalars and tuples become plain Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value
