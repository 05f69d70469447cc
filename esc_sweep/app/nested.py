"""``esc-sweep nested [--outer-folds 1,2,3,4,5] [--name NAME] [--plan] hparams_search=NAME [overrides ...]``: nested CV, the honest accuracy of "search, then pick the best".

A sweep's best value is optimistic: it is the maximum over many noisy trials, chosen
on the very numbers it reports. Nested cross-validation measures the whole procedure:

for each outer fold k (``--outer-folds``, default ``trainer.folds``):

1. **inner search**: the Optuna search ``hparams_search=...`` runs with
   ``trainer.folds=[k] trainer.validation=inner``: every trial trains on the other
   folds minus an inner split, and the inner split's accuracy is its objective. Fold k
   decides nothing (its score is recorded beside each trial, never read);
2. **refit**: the winner's parameters are trained on all the other folds
   (``trainer.validation=none``, fixed epochs) and scored on fold k, once.

The outer scores are the nested estimate (mean, std and 95 % interval); the inner
winners' own values beside them show how optimistic picking the best is.

Everything lives in ``outputs/nested/<name>/`` (studies in ``studies.db``, one folder
per outer fold, ``nested.json``); the same command resumes where it stopped: the
inner studies resume (``n_trials`` counts the total), a refit resumes from its
checkpoints, finished outer folds are not run again. With tracking on, an MLflow run
``nested-<name>`` holds the outer scores and nests each outer fold's study run and
refit run. The cost is printed before anything runs (``--plan`` prints only that).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from esc_sweep.config import register_configs, validate
from esc_sweep.console import console
from esc_sweep.errors import ConfigError, EscSweepError
from esc_sweep.paths import CONFIG_DIR, write_text_atomically
from esc_sweep.stats import mean_interval
from esc_sweep.sweep.messages import override_value  # no Optuna: quotes values as the sweeper does
from esc_sweep.tracking.uri import resolve_tracking_uri

# Keys the nested procedure sets itself for each outer fold.
RESERVED = ("trainer.validation", "hydra.sweeper.study_name", "hydra.sweeper.storage",
            "hydra.sweep.dir", "hydra.run.dir", "sweep.parent_run_id")
# trainer.folds=[...] on the command line names the outer folds (as --outer-folds does).


class NestedError(EscSweepError):
    """An outer fold's search or refit failed."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="esc-sweep nested",
        description="Nested cross-validation: per outer fold, an Optuna search on the other folds (inner "
                    "validation), the winner retrained on them and scored once on the outer fold.",
    )
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                        help="Hydra overrides as for a sweep; hparams_search=NAME is required")
    parser.add_argument("--outer-folds", help="comma-separated outer folds (default: trainer.folds)")
    parser.add_argument("--name", help="name of this nested CV (default: the search and a hash of the overrides)")
    parser.add_argument("--plan", action="store_true", help="print the plan and its cost, run nothing")
    return parser.parse_args(list(argv))


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def _is_sweep(override: str) -> bool:
    """Whether an override is a search parameter (``interval(...)``, ``choice(...)``, ``a,b``), as Hydra parses it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser  # deferred: with compose below

    try:
        return OverridesParser.create().parse_overrides([override])[0].is_sweep_override()
    except Exception:  # not an override Hydra can parse: compose() says so, naming it
        return False


def compose(overrides: Sequence[str]) -> DictConfig:
    """The composed config (with Hydra's section) of a sweep with these overrides."""
    from hydra import compose as hydra_compose  # deferred: hydra's compose API (~0.5 s)
    from hydra import initialize_config_dir  # deferred: as above
    from hydra.core.global_hydra import GlobalHydra  # deferred: as above


    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR)):
            return hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    except Exception as err:  # a misspelt key or option: Hydra's message names it
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"nested: the overrides do not compose: {first}") from None
    finally:
        GlobalHydra.instance().clear()


class Plan:
    """What a nested CV will run, from its overrides; checks them before anything runs."""

    def __init__(self, overrides: Sequence[str], outer_folds: Optional[str], name: Optional[str]):
        # trainer.folds names the outer folds; each outer fold's commands set their own.
        self.overrides = [o for o in overrides if _key(o) != "trainer.folds"]
        reserved = sorted({_key(o) for o in self.overrides if _key(o) in RESERVED})
        if reserved:
            raise ConfigError(f"nested: {', '.join(reserved)} cannot be set: the nested procedure sets them per "
                              "outer fold (choose the outer folds with --outer-folds)")
        # Search parameters given on the command line (interval(...), choice(...)) compose only in a sweep.
        sweeps = [o for o in self.overrides if _is_sweep(o)]
        self.cfg = compose([o for o in overrides if o not in sweeps])
        search = OmegaConf.select(self.cfg, "hydra.runtime.choices.hparams_search", default=None)
        if not search:
            raise ConfigError("nested: hparams_search=NAME is required (the search to nest), e.g. "
                              "hparams_search=esc50_optuna")
        self.search = str(search)
        folds = [int(f) for f in self.cfg.trainer.folds]
        if outer_folds:
            try:
                folds = [int(f) for f in outer_folds.split(",") if f.strip()]
            except ValueError:
                raise ConfigError(f"--outer-folds {outer_folds!r}: must be comma-separated fold numbers") from None
        if len(folds) < 2 or len(set(folds)) != len(folds):
            raise ConfigError(f"--outer-folds {folds}: at least 2 different folds")
        self.cfg.trainer.folds = folds
        validate(self.cfg)  # the outer folds exist in the data set, every value is in range
        self.outer_folds = folds
        self.n_trials = int(self.cfg.hydra.sweeper.n_trials)
        self.params = dict(OmegaConf.to_container(self.cfg.hydra.sweeper.params or {}, resolve=False))
        for override in sweeps:
            self.params[_key(override)] = override.partition("=")[2]
        from esc_sweep.sweep.identity import digest  # deferred: with the plan only

        self.name = name or f"{self.search}-{digest({'overrides': sorted(self.overrides), 'folds': folds})}"
        self.tracking = bool(OmegaConf.select(self.cfg, "tracking.enabled", default=False))

    def epochs_text(self) -> str:
        searched = self.params.get("trainer.epochs")
        fixed = any(_key(o) == "trainer.epochs" for o in self.overrides)
        if searched is not None and not fixed:
            return f"epochs searched ({searched})"
        return f"{int(self.cfg.trainer.epochs)} epochs"

    def cost_text(self) -> str:
        outer = len(self.outer_folds)
        trainings = outer * (self.n_trials + 1)
        return (f"nested CV {self.name}: {outer} outer folds x ({self.n_trials} trials + 1 refit) = {trainings} "
                f"trainings of one fold each ({self.epochs_text()}; a trial trains on the other folds minus "
                f"{self.cfg.trainer.inner_fraction:.0%} held out for its inner score). That is about "
                f"{trainings / max(1, len(self.cfg.trainer.folds)):.1f}x the cost of one "
                f"{len(self.cfg.trainer.folds)}-fold CV of this config, plus pruning savings.")


def _run(cmd: list[str], what: str) -> None:
    """Run one esc_sweep command in a child process, its output on this console."""
    code = subprocess.run(cmd).returncode
    if code in (130, -2):
        raise KeyboardInterrupt
    if code != 0:
        raise NestedError(f"{what} failed (exit {code}; its error is printed above); fix that and run the same "
                          "nested command again: finished outer folds and trials are kept")


class NestedCV:
    def __init__(self, plan: Plan, root: Path):
        self.plan = plan
        self.dir = root / "outputs" / "nested" / plan.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.dir / "nested.json"
        self.storage = f"sqlite:///{(self.dir / 'studies.db').resolve()}"
        self.state: dict[str, Any] = self._load_state()
        self.uri: Optional[str] = None
        self.run_id: Optional[str] = None

    def _load_state(self) -> dict[str, Any]:
        if self.state_file.is_file():
            state = json.loads(self.state_file.read_text())
            if state.get("overrides") != self.plan.overrides or state.get("outer_folds") != self.plan.outer_folds:
                raise ConfigError(f"nested: {self.dir} holds a nested CV with other overrides or folds; "
                                  "choose another --name")
            return state
        return {"name": self.plan.name, "search": self.plan.search, "overrides": self.plan.overrides,
                "outer_folds": self.plan.outer_folds, "n_trials": self.plan.n_trials, "folds": {}}

    def _save(self) -> None:
        write_text_atomically(self.state_file, json.dumps(self.state, indent=2))

    def start_tracking(self) -> None:
        if not self.plan.tracking:
            return
        from esc_sweep.tracking.nested_run import get_or_create_nested_run  # deferred: MLflow (~2 s)

        self.uri = resolve_tracking_uri(self.plan.cfg)
        self.run_id = get_or_create_nested_run(
            self.uri, str(self.plan.cfg.tracking.experiment_name), self.plan.name,
            {"esc_sweep.search": self.plan.search, "esc_sweep.overrides": " ".join(self.plan.overrides)[:5000]})

    def study_name(self, fold: int) -> str:
        return f"nested-{self.plan.name}-outer{fold}"

    def search(self, fold: int) -> None:
        cmd = [sys.executable, "-m", "esc_sweep", "-m", *self.plan.overrides, f"trainer.folds=[{fold}]",
               "trainer.validation=inner", f"hydra.sweeper.study_name={self.study_name(fold)}",
               f"hydra.sweeper.storage={self.storage}", f"hydra.sweep.dir={self.dir / f'outer{fold}' / 'search'}"]
        _run(cmd, f"outer fold {fold}: the inner search")

    def winner(self, fold: int):
        import optuna  # deferred: optuna (~0.8 s), only once a search ran

        from esc_sweep.sweep.storage import open_storage  # deferred: as above

        study = optuna.load_study(study_name=self.study_name(fold), storage=open_storage(self.storage))
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if not complete:
            raise NestedError(f"outer fold {fold}: no trial of the inner search completed; see its trials in "
                              f"{self.dir / f'outer{fold}' / 'search'}")
        return study, study.best_trial

    def refit(self, fold: int, params: dict[str, Any]) -> dict[str, Any]:
        run_dir = self.dir / f"outer{fold}" / "refit"
        searched = set(params)
        fixed = [o for o in self.plan.overrides if _key(o) not in searched]
        cmd = [sys.executable, "-m", "esc_sweep", *fixed, *(f"{k}={override_value(v)}" for k, v in params.items()),
               f"trainer.folds=[{fold}]", "trainer.validation=none", "trainer.early_stopping_patience=0",
               f"hydra.run.dir={run_dir}"]
        if self.run_id:
            cmd.append(f"sweep.parent_run_id={self.run_id}")
        if not (run_dir / "results.json").exists():  # else it finished before an interruption: not trained again
            _run(cmd, f"outer fold {fold}: the refit")
        return json.loads((run_dir / "results.json").read_text())

    def run_fold(self, fold: int) -> dict[str, Any]:
        started = time.perf_counter()
        self.search(fold)
        study, best = self.winner(fold)
        results = self.refit(fold, dict(best.params))
        record = {
            "outer_fold": fold,
            "study": study.study_name,
            "best_trial": best.number,
            "best_params": dict(best.params),
            "inner_value": float(best.value),  # what the search maximised: the inner split's accuracy
            "outer_val_acc": float(results["folds"][0]["val_acc"]),  # the refit, scored once on fold k
            "complete_trials": sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)),
            "seconds": time.perf_counter() - started,
        }
        if self.run_id:
            from esc_sweep.tracking.nested_run import link_child, log_outer_fold  # deferred: MLflow

            study_run = study.user_attrs.get("mlflow_parent_run_id")
            if study_run:
                link_child(self.uri, study_run, self.run_id, {"esc_sweep.outer_fold": fold})
            log_outer_fold(self.uri, self.run_id, fold, {"val_acc": record["outer_val_acc"],
                                                          "inner_value": record["inner_value"]})
        return record

    def summary(self) -> dict[str, Any]:
        folds = [self.state["folds"][str(f)] for f in self.plan.outer_folds]
        outer = [f["outer_val_acc"] for f in folds]
        inner = [f["inner_value"] for f in folds]
        low, high = mean_interval(outer)
        return {
            "nested_val_acc_mean": statistics.fmean(outer),
            "nested_val_acc_std": statistics.stdev(outer) if len(outer) > 1 else 0.0,
            "nested_val_acc_ci95_low": low,
            "nested_val_acc_ci95_high": high,
            "inner_best_mean": statistics.fmean(inner),
            # How much picking the best flatters it: the winners' own (inner) values minus their outer scores.
            "selection_optimism": statistics.fmean(inner) - statistics.fmean(outer),
        }


# The plan and the results go to stdout; progress and errors to stderr (esc_sweep.console), as in training.
results_console = Console()


def print_summary(nested: NestedCV) -> None:
    console = results_console

    table = Table(title=f"Nested CV {nested.plan.name} (accuracies in %)")
    for column in ("outer fold", "refit: outer acc", "winner's inner value", "winner", "trials", "seconds"):
        table.add_column(column, justify="right")
    for fold in nested.plan.outer_folds:
        f = nested.state["folds"][str(fold)]
        table.add_row(str(fold), f"{100 * f['outer_val_acc']:.1f}", f"{100 * f['inner_value']:.1f}",
                      f"trial {f['best_trial']}", str(f["complete_trials"]), f"{f['seconds']:.0f}")
    s = nested.state["summary"]
    console.print(table)
    for fold in nested.plan.outer_folds:  # which settings won where: a stable winner is a good sign
        f = nested.state["folds"][str(fold)]
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in f["best_params"].items())
        console.print(f"  outer fold {fold} winner: {params}")
    interval = (f", 95 % interval {100 * s['nested_val_acc_ci95_low']:.1f}-{100 * s['nested_val_acc_ci95_high']:.1f}"
                if math.isfinite(s["nested_val_acc_ci95_low"]) else "")
    console.print(f"[bold]nested estimate[/]: {100 * s['nested_val_acc_mean']:.1f} % ± "
                  f"{100 * s['nested_val_acc_std']:.1f}{interval} (outer folds, each scored once by a model "
                  "its search never saw)")
    console.print(f"the winners' inner values average {100 * s['inner_best_mean']:.1f} %: picking the best flatters "
                  f"it by {100 * s['selection_optimism']:+.1f} points here")


def main(argv: Sequence[str]) -> None:

    args = parse_args(argv)
    plan = Plan(args.overrides, args.outer_folds, args.name)
    results_console.print(plan.cost_text())
    if args.plan:
        return
    nested = NestedCV(plan, Path.cwd())
    done = [f for f in plan.outer_folds if str(f) in nested.state["folds"]]
    if done:
        spent = sum(nested.state["folds"][str(f)]["seconds"] for f in done)
        left = len(plan.outer_folds) - len(done)
        results_console.print(f"resuming: outer folds {done} done in {spent / 60:.1f} min; about "
                      f"{spent / len(done) * left / 60:.0f} min for the {left} left at that pace")
    nested.start_tracking()
    try:
        for fold in plan.outer_folds:
            if str(fold) in nested.state["folds"]:
                continue
            console.print(f"[bold]outer fold {fold}[/]: inner search on the other folds, then the refit")
            nested.state["folds"][str(fold)] = nested.run_fold(fold)
            nested._save()
            record = nested.state["folds"][str(fold)]
            console.print(f"[bold]outer fold {fold}[/]: winner trial {record['best_trial']} (inner "
                          f"{100 * record['inner_value']:.1f} %), refit scored {100 * record['outer_val_acc']:.1f} % "
                          f"on fold {fold} ({record['seconds'] / 60:.1f} min)")
        nested.state["summary"] = nested.summary()
        nested._save()
    except BaseException as err:
        if nested.run_id:
            from esc_sweep.tracking.nested_run import end_nested_run  # deferred: MLflow

            end_nested_run(nested.uri, nested.run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if isinstance(err, KeyboardInterrupt):
            console.print(f"[bold yellow]interrupted:[/] finished work is kept in {nested.dir}; run the same "
                          "command again to resume")
            sys.exit(130)
        raise
    if nested.run_id:
        from esc_sweep.tracking.nested_run import finish_nested_run  # deferred: MLflow

        finish_nested_run(nested.uri, nested.run_id, nested.state["summary"], nested.state_file)
    print_summary(nested)
    results_console.print(f"results: {nested.state_file}")
