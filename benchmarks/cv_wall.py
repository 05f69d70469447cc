"""Wall time of one full cross-validation, broken down by phase.

    python benchmarks/cv_wall.py model=baseline_cnn trainer.epochs=2 trainer.folds=[1,2]

Any ``python -m esc_sweep`` override works. The script times only public
calls it makes itself and the trainer's callback hooks; it replaces nothing
inside esc_sweep. It

1. loads the dataset twice with ``esc_sweep.data.load_clipset``: the first
   load decodes into an empty, temporary cache folder (cold; ``--warm-cache``
   uses the configured cache as it is), the second is a cache hit. Then it
   makes, one by one and timed, the other calls ``cross_validate`` makes
   before its first hook: ``esc_sweep.runtime.seed_everything`` (the first
   call in the process: the determinism flags) and
   ``esc_sweep.features.store.Spectrograms`` on the cache-hit clips (the
   features computed, with the feature cache bypassed so that the
   cross-validation below finds that cache as it was). These are
   ``prepare_seconds``;
2. runs ``esc_sweep.training.cv.cross_validate`` with the app's callbacks
   (``esc_sweep.app.train.build_callbacks``: ``MlflowTracker`` when tracking
   is enabled, into a temporary SQLite store created beforehand unless
   ``tracking.uri`` is given), handed to it inside one ``CVClock`` callback
   that forwards every hook to them and times the phases from the hooks:

   * "seeding + load + features": from the start to ``on_cv_start`` (data
     and features ready; device, seeding, ``prepare``, checkpoint folder);
   * "model build + normalisation stats": from a fold's start (the previous
     fold's ``on_fold_end``, or ``on_cv_start``) to its ``on_fold_start``: the
     fold's seeding, ``build_model`` (normalisation statistics included) and
     ``make_trainee`` (optimizer, schedule, EMA; the first optimizer of a
     process imports ``torch._dynamo``, about 1 s, more under load);
   * "train steps" and "evaluation": the ``train_seconds`` and
     ``eval_seconds`` of every epoch record (``on_epoch_end``);
   * "checkpoint writes": from ``on_model_trained`` to ``on_fold_end`` (the
     fold's result and its checkpoint file);
   * "tracking": building the callbacks plus the time inside the tracker's
     hooks (per hook in ``callback_seconds``); other callbacks of the app get
     a "callback <class>" phase of their own. Their ``on_step_end`` is not
     timed (it lies inside ``train_seconds``);
   * "other": the rest, so that the phases add up to the total.

   On a GPU, ``on_cv_start`` and ``on_fold_start`` synchronise the device
   first, so queued work is charged to the phase that queued it. The first
   training step is the first ``on_step_end``: the end of the first step;
3. starts a fresh process on the now warm cache and reports the time from
   launch to the end of the first training step (target: under 5 s). The
   child does what ``python -m esc_sweep`` does up to the cross-validation
   (CPU runtime settings before torch loads, the config composed from the
   same overrides as the CLI would (Hydra compose API, no run folder or
   logging set-up), then the app's own public steps: the background
   ``torch._dynamo`` import, ``esc_sweep.app.train.check_run`` (validation
   and the dry run) and ``esc_sweep.app.train.start_run`` (the progress
   callback, the tracker, ``model.init_from``)) and passes ``cross_validate``
   its own ``FirstStep`` callback, first in the list: it stamps
   ``on_cv_start`` (data + features ready), ``on_fold_start`` (model built;
   the training loop starts right after) and the first ``on_step_end``,
   prints the stamps and ends the process.

It prints a table and writes JSON with machine facts and load averages.
Checkpoints, the waveform cache (when cold) and the tracking store live in a
temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __name__ == "__main__" and "--first-step-child" in sys.argv:
    # As ``python -m esc_sweep`` does: the CPU runtime settings before anything imports torch.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from esc_sweep.runtime import configure

    configure()

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (puts the repo on sys.path too)

from esc_sweep.training.callbacks import Callback  # noqa: E402

FIRST_STEP_MARK = "CV_WALL_FIRST_STEP "
TTFS_TARGET_SECONDS = 5.0
TIMED_HOOKS = ("on_cv_start", "on_fold_start", "on_epoch_end", "on_model_trained", "on_fold_end", "on_cv_end",
               "on_exception")


def callback_phase(callback: Callback) -> str:
    is_tracker = type(callback).__name__ == "MlflowTracker" or getattr(callback, "name", None) == "mlflow"
    return "tracking" if is_tracker else f"callback {type(callback).__name__}"


class CVClock(Callback):
    """Phase times of a cross-validation, from its hooks; forwards every hook to ``callbacks``.

    Time between two hooks is charged to the phase the later hook ends (see
    the module docstring); time inside the forwarded callbacks is charged to
    their own phase, never to a span. Spans not charged here are "other".
    """

    def __init__(self, callbacks: list[Callback], device, started: float):
        self.callbacks = [(callback, callback_phase(callback)) for callback in callbacks]
        self.device = device
        self.last = started  # end of the previous hook (its callbacks included)
        self.seconds: dict[str, float] = defaultdict(float)
        self.detail: dict[str, float] = defaultdict(float)  # per callback hook, e.g. "tracking.on_fold_end"
        self.marks: dict[str, float] = {}  # perf_counter() when a hook was first reached
        self.trained = False

    def _span(self, phase: str | None, mark: str | None = None, sync: bool = False) -> None:
        if sync:
            common.sync(self.device)  # charge queued GPU work to the phase that queued it
        now = time.perf_counter()
        if phase is not None:
            self.seconds[phase] += now - self.last
        if mark is not None:
            self.marks.setdefault(mark, now)

    def _forward(self, hook: str, *args: Any) -> None:
        for callback, phase in self.callbacks:
            started = time.perf_counter()
            try:
                getattr(callback, hook)(*args)
            finally:
                elapsed = time.perf_counter() - started
                self.seconds[phase] += elapsed
                self.detail[f"{phase}.{hook}"] += elapsed
        self.last = time.perf_counter()

    def on_cv_start(self, context):
        self._span("seeding + load + features", "data + features ready (on_cv_start)", sync=True)
        self._forward("on_cv_start", context)

    def on_fold_start(self, fold, context):
        self._span("model build + normalisation stats", "first model built (on_fold_start)", sync=True)
        self.trained = False
        self._forward("on_fold_start", fold, context)

    def on_step_end(self, fold, step):
        if "first training step (on_step_end)" not in self.marks:
            self.marks["first training step (on_step_end)"] = time.perf_counter()
        for callback, _ in self.callbacks:  # not timed: this lies inside the epoch's train_seconds
            callback.on_step_end(fold, step)

    def on_epoch_end(self, fold, epoch, metrics):
        self._span(None)  # train and eval seconds come from the epoch records
        self._forward("on_epoch_end", fold, epoch, metrics)

    def on_model_trained(self, fold, model):
        self._span(None)
        self.trained = True
        self._forward("on_model_trained", fold, model)

    def on_fold_end(self, result, resumed=False):
        self._span("checkpoint writes" if self.trained else None)
        self.trained = False
        self._forward("on_fold_end", result, resumed)

    def on_cv_end(self, result):
        self._span(None)
        self._forward("on_cv_end", result)

    def on_exception(self, error):
        self._span(None)
        self._forward("on_exception", error)


# --------------------------------------------------------------------------
# The fresh-process run (child): launch -> first training step


class FirstStep(Callback):
    """Stamps the run's hooks (``time.time()``) and ends the process after the first training step.

    Prints one line: FIRST_STEP_MARK + JSON of the stamps, so the parent,
    which knows when it launched us, can compute the delays.
    """

    def __init__(self, stamps: dict[str, float]):
        self.stamps = stamps

    def on_cv_start(self, context):
        self.stamps.setdefault("data_ready", time.time())

    def on_fold_start(self, fold, context):
        self.stamps.setdefault("model_built", time.time())

    def on_step_end(self, fold, step):
        self.stamps["first_step"] = time.time()
        print(FIRST_STEP_MARK + json.dumps({"stamps": self.stamps}), flush=True)
        sys.stderr.flush()
        os._exit(0)  # the benchmark needs nothing after this point


def first_step_child(overrides: list[str]) -> None:
    """What ``python -m esc_sweep`` does up to its first training step, with a ``FirstStep`` callback."""
    stamps: dict[str, float] = {"imported": time.time()}
    from esc_sweep.app import train as app_train

    cfg = common.compose_config(overrides)
    # As app.train.run does: the first optimizer imports torch._dynamo; the app imports it while the data loads.
    warm_up = app_train.import_in_background("torch._dynamo")
    from esc_sweep.training.cv import cross_validate

    app_train.check_run(cfg)
    stamps["app_started"] = time.time()
    started = time.perf_counter()
    start = app_train.start_run(cfg, first=warm_up)  # the app's own set-up: progress, tracker, init weights
    stamps["tracking_seconds"] = time.perf_counter() - started  # not a time of day: building the callbacks
    cross_validate(cfg, [FirstStep(stamps), *start.callbacks], init=start.init)
    print("cv_wall: the run ended without a training step", file=sys.stderr)
    sys.exit(3)


def measure_first_step(overrides: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, str(Path(__file__).resolve()), "--first-step-child", "--", *overrides]
    launched = time.time()
    proc = subprocess.run(args, cwd=common.REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(FIRST_STEP_MARK)]
    if not lines:
        raise RuntimeError(
            f"the fresh-process run failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    stamps = json.loads(lines[-1][len(FIRST_STEP_MARK):])["stamps"]

    def since(t: float | None) -> float | None:
        return None if t is None else round(t - launched, 3)

    return {
        "seconds_to_first_step": round(stamps["first_step"] - launched, 3),
        "target_seconds": TTFS_TARGET_SECONDS,
        # Milestones, in seconds after launch.
        "milestones": {
            "interpreter + torch/hydra imports": since(stamps["imported"]),
            "app started (config composed)": since(stamps.get("app_started")),
            "data + features ready (on_cv_start)": since(stamps.get("data_ready")),
            "model built (on_fold_start)": since(stamps.get("model_built")),
            "first training step (on_step_end)": since(stamps["first_step"]),
        },
        "phase_seconds": {"tracking": round(stamps.get("tracking_seconds", 0.0), 3)},
    }


# --------------------------------------------------------------------------
# The parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m esc_sweep")
    parser.add_argument("--warm-cache", action="store_true",
                        help="use the configured waveform cache as it is (default: a cold, temporary one)")
    parser.add_argument("--no-first-step", action="store_true", help="skip the fresh-process time-to-first-step run")
    parser.add_argument("--out", default=None, help="JSON path (default: outputs/benchmarks/<name>.json)")
    parser.add_argument("--first-step-child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _set(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides)


def run_overrides(user: list[str], tmp: Path, cold: bool) -> list[str]:
    """The user's overrides plus what keeps the benchmark self-contained and repeatable."""
    defaults = ["trainer.progress=false"]
    forced = [f"trainer.checkpoint_dir={tmp / 'checkpoints'}", "trainer.resume=false"]
    if cold and not _set(user, "dataset.cache_dir"):
        forced.append(f"dataset.cache_dir={tmp / 'waveforms'}")
    if not _set(user, "tracking.uri") and not os.environ.get("MLFLOW_TRACKING_URI"):
        forced.append(f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    forced_keys = {f.split("=", 1)[0] for f in forced}
    # The synthetic fallback depends on what the user said about the dataset, so it comes first.
    chosen = common.with_defaults(user, defaults)
    return [o for o in chosen if o.split("=", 1)[0].lstrip("+~") not in forced_keys] + forced


def create_temporary_store(cfg, tmp: Path) -> None:
    """Create the temporary MLflow store and its experiment, with the artifacts inside ``tmp``.

    An experiment created without an artifact location keeps its artifacts in
    ``./mlruns`` of the current folder, which would litter the user's folder.
    """
    import logging

    from mlflow import MlflowClient

    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)  # schema creation logs ~50 lines at INFO
    (tmp / "mlruns").mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    client.create_experiment(cfg.tracking.experiment_name, artifact_location=(tmp / "mlruns" / "artifacts").as_uri())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.first_step_child:
        first_step_child(args.overrides)
        return {}

    import torch

    from esc_sweep.app.train import build_callbacks
    from esc_sweep.config import validate
    from esc_sweep.data import load_clipset
    from esc_sweep.features.store import Spectrograms
    from esc_sweep.runtime import pick_device, seed_everything
    from esc_sweep.training.cv import cross_validate

    load_start = common.load_average()
    tmp = Path(tempfile.mkdtemp(prefix="cv_wall-"))
    try:
        overrides = run_overrides(args.overrides, tmp, cold=not args.warm_cache)
        cfg = common.compose_config(overrides)
        validate(cfg)
        notes: list[str] = []
        if cfg.tracking.enabled:
            try:
                import esc_sweep.tracking  # noqa: F401
            except ImportError:
                cfg.tracking.enabled = False
                overrides.append("tracking.enabled=false")
                notes.append("esc_sweep.tracking is absent: tracking reported as 0")
        else:
            notes.append("tracking disabled by the config: tracking reported as 0")
        if cfg.tracking.enabled and not _set(args.overrides, "tracking.uri") and not os.environ.get("MLFLOW_TRACKING_URI"):
            create_temporary_store(cfg, tmp)
            notes.append("tracking store created before timing (a user's store exists after their first run)")
        if cfg.trainer.num_threads:
            torch.set_num_threads(cfg.trainer.num_threads)
        device = pick_device(cfg.trainer.device)

        # 1. decode / cache, then the other calls made before on_cv_start, one by one
        decode: dict[str, Any] = {}
        for label in ("first load", "second load"):
            started = time.perf_counter()
            clips = load_clipset(cfg.dataset, cfg.features.sample_rate, progress=False)
            decode[label] = time.perf_counter() - started
        if cfg.dataset.kind == "synthetic":
            decode["note"] = "synthetic data is generated on every load (no cache)"
        else:
            first = "warm cache as configured" if args.warm_cache else "cold (empty cache)"
            decode["note"] = f"first load: {first}; second: cache hit"
        num_clips, num_classes = len(clips), clips.num_classes

        prepare: dict[str, float] = {}
        started = time.perf_counter()
        seed_everything(cfg.trainer.seed, cfg.trainer.deterministic, cfg.trainer.compile)
        prepare["seeding + determinism flags"] = time.perf_counter() - started
        prepare["load (cache hit)"] = decode["second load"]
        uncached = copy.deepcopy(cfg)
        uncached.features.cache = False  # compute them; leave the feature cache as the CV will find it
        started = time.perf_counter()
        spectrograms = Spectrograms(uncached, clips, device)
        common.sync(device)
        prepare["features"] = time.perf_counter() - started
        del clips, spectrograms

        # 2. the cross-validation, in this process
        cv_started = time.perf_counter()
        callbacks = build_callbacks(cfg)  # constructs the tracker: counted as tracking
        tracker_construct = time.perf_counter() - cv_started
        clock = CVClock(callbacks, device, started=time.perf_counter())
        clock.seconds["tracking"] += tracker_construct
        cv = cross_validate(cfg, [clock])
        total = time.perf_counter() - cv_started

        histories = [h for fold in cv.folds for h in fold.history]
        train = sum(h["train_seconds"] for h in histories)
        evaluation = sum(h["eval_seconds"] for h in histories)
        phases = {
            "seeding + load + features": clock.seconds.get("seeding + load + features", 0.0),
            "model build + normalisation stats": clock.seconds.get("model build + normalisation stats", 0.0),
            "train steps": train,
            "evaluation": evaluation,
            "tracking": clock.seconds.get("tracking", 0.0),
            "checkpoint writes": clock.seconds.get("checkpoint writes", 0.0),
        }
        phases.update({k: v for k, v in clock.seconds.items() if k.startswith("callback ")})
        phases["other"] = total - sum(phases.values())
        milestones = {k: t - cv_started for k, t in clock.marks.items()}
        folds = [
            {
                "fold": f.fold,
                "seconds": f.seconds,
                "epochs": f.epochs,
                "train_seconds": [round(h["train_seconds"], 3) for h in f.history],
                "eval_seconds": [round(h["eval_seconds"], 3) for h in f.history],
                "val_acc": f.val_acc,
            }
            for f in cv.folds
        ]

        # 3. a fresh process on the warm cache: launch -> first training step
        fresh = None
        if not args.no_first_step:
            fresh = measure_first_step(overrides)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    payload = {
        "benchmark": "cv_wall",
        "machine": common.machine_info(device),
        "load_avg_start": load_start,
        "load_avg_end": common.load_average(),
        "overrides": args.overrides,
        "config": {
            "dataset": cfg.dataset.kind,
            "clips": num_clips,
            "classes": num_classes,
            "model": cfg.model.name,
            "features": f"{cfg.features.kind} n_mels={cfg.features.n_mels} hop={cfg.features.hop_length}",
            "folds": list(cfg.trainer.folds),
            "epochs": cfg.trainer.epochs,
            "batch_size": cfg.trainer.batch_size,
            "tracking": bool(cfg.tracking.enabled),
        },
        "decode_seconds": decode,
        "prepare_seconds": prepare,
        "cv_total_seconds": total,
        "phases_seconds": phases,
        "callback_seconds": {"tracking.construct": tracker_construct, **dict(clock.detail)},
        "milestones_in_process_seconds": milestones,
        "first_step_in_process_seconds": milestones.get("first training step (on_step_end)", float("nan")),
        "first_step_fresh_process": fresh,
        "folds": folds,
        "mean_val_acc": cv.mean_val_acc,
        "notes": notes,
    }
    report(payload)
    out = Path(args.out) if args.out else default_out(cfg, device)
    print(f"wrote {common.write_json(out, payload)}")
    return payload


def default_out(cfg, device) -> Path:
    name = f"cv_wall_{cfg.model.name}_{cfg.dataset.kind}_{len(cfg.trainer.folds)}folds_{cfg.trainer.epochs}ep_{device.type}"
    return common.REPO / "outputs" / "benchmarks" / f"{name}.json"


def report(p: dict[str, Any]) -> None:
    c = p["config"]
    print(f"cross-validation of {c['model']} on {c['dataset']} ({c['clips']} clips, {c['classes']} classes), "
          f"folds {c['folds']}, {c['epochs']} epochs, batch {c['batch_size']}, device {p['machine']['device']}")
    d = p["decode_seconds"]
    print(f"decode/cache: first load {d['first load']:.2f} s, second load {d['second load']:.2f} s ({d['note']})")
    print("before the CV, call by call: " + ", ".join(f"{k} {v:.2f} s" for k, v in p["prepare_seconds"].items())
          + " (features computed, feature cache bypassed)")
    total = p["cv_total_seconds"]
    rows = [[name, f"{s:.2f}", f"{100 * s / total:.1f}"] for name, s in p["phases_seconds"].items()]
    rows.append(["total", f"{total:.2f}", "100.0"])
    print(common.fmt_table(["phase (inside cross_validate)", "seconds", "%"], rows))
    print(common.fmt_table(
        ["fold", "seconds", "train s per epoch", "eval s per epoch"],
        [[f["fold"], f"{f['seconds']:.2f}", " ".join(f"{x:.2f}" for x in f["train_seconds"]),
          " ".join(f"{x:.2f}" for x in f["eval_seconds"])] for f in p["folds"]],
    ))
    hooks = {k: v for k, v in p["callback_seconds"].items() if v >= 0.005}
    if hooks:
        print("callbacks: " + ", ".join(f"{k} {v:.2f} s" for k, v in hooks.items()))
    print("in process (cache hit), seconds after the run started: "
          + ", ".join(f"{k} {v:.2f}" for k, v in p["milestones_in_process_seconds"].items()))
    fresh = p["first_step_fresh_process"]
    if fresh:
        verdict = "meets" if fresh["seconds_to_first_step"] < fresh["target_seconds"] else "MISSES"
        print(f"end of the first training step, fresh process on a cache hit: {fresh['seconds_to_first_step']:.2f} s "
              f"after launch ({verdict} the {fresh['target_seconds']:.0f} s target)")
        print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in fresh["milestones"].items() if v is not None))
    for note in p["notes"]:
        print(f"note: {note}")
    print(f"load average: start {p['load_avg_start']}, end {p['load_avg_end']}")


if __name__ == "__main__":
    common.run_main(main)
