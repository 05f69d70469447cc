"""Wall time of one full cross-validation, broken down by phase.

    python benchmarks/cv_wall.py model=baseline_cnn trainer.epochs=2 trainer.folds=[1,2]

Any ``python -m esc_sweep`` override works. The script

1. loads the dataset twice with ``esc_sweep.data.load_clipset``: the first
   load decodes into an empty, temporary cache folder (cold; ``--warm-cache``
   uses the configured cache as it is), the second is a cache hit;
2. runs ``esc_sweep.trainer.cross_validate`` with the app's callbacks
   (``MlflowTracker`` when tracking is enabled, into a temporary SQLite store
   created beforehand unless ``tracking.uri`` is given) and times each phase
   by wrapping the trainer's functions: seeding (the determinism flags), load,
   features (``compute_features``), model build (including the normalisation
   statistics), train steps and evaluation (the trainer's per-epoch
   ``train_seconds`` / ``eval_seconds``), tracking (the tracker's construction
   and the time inside each of its callback methods), checkpoint writes, and
   "other" (the rest, so that the phases add up to the total);
3. starts ``python -m esc_sweep`` with the same overrides in a fresh process
   on the now warm cache and reports the time from launch to the first
   training step (target: under 5 s), with its own breakdown.

It prints a table and writes JSON with machine facts and load averages.
Checkpoints, the waveform cache (when cold) and the tracking store live in a
temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (puts the repo on sys.path too)

HOOKS = ("on_cv_start", "on_fold_start", "on_epoch_end", "on_fold_end", "on_cv_end", "on_exception")
FIRST_STEP_MARK = "CV_WALL_FIRST_STEP "
TTFS_TARGET_SECONDS = 5.0


class PhaseClock:
    """Accumulates wall time per phase by wrapping functions and methods in place.

    ``wrap(owner, name, phase)`` replaces ``owner.name`` (a module function, a
    class's method or an instance's bound method) with a timed version;
    ``restore()`` puts the originals back. Phases must not nest, so that they
    add up.
    """

    def __init__(self, device=None):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.first_start: dict[str, float] = {}  # time.time() when a phase first began
        self.first_end: dict[str, float] = {}
        self.detail: dict[str, float] = defaultdict(float)  # per wrapped callable, e.g. "tracking.on_fold_end"
        self._originals: list[tuple[Any, str, Any, bool]] = []

    def wrap(self, owner: Any, name: str, phase: str, sync: bool = False, detail: str | None = None) -> None:
        own_attribute = name in vars(owner)
        original = getattr(owner, name)
        clock = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            clock.first_start.setdefault(phase, time.time())
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if sync and clock.device is not None:
                    common.sync(clock.device)  # charge queued GPU work to this phase
                elapsed = time.perf_counter() - started
                clock.seconds[phase] += elapsed
                clock.calls[phase] += 1
                if detail:
                    clock.detail[detail] += elapsed
                clock.first_end.setdefault(phase, time.time())

        setattr(owner, name, timed)
        self._originals.append((owner, name, original, own_attribute))

    def restore(self) -> None:
        for owner, name, original, own_attribute in reversed(self._originals):
            if own_attribute:
                setattr(owner, name, original)
            else:  # the method came from the class: drop the instance's shadow
                delattr(owner, name)
        self._originals.clear()


def instrument_trainer(clock: PhaseClock, on_first_step: Callable[[], None]) -> None:
    """Wrap the trainer's phases; ``on_first_step`` runs when the first training batch is augmented."""
    from esc_sweep import trainer
    from esc_sweep.checkpoint import FoldCheckpoints

    # Seeding sets the determinism flags; the first call has cost seconds of imports.
    clock.wrap(trainer, "seed_everything", "seeding + determinism flags")
    clock.wrap(trainer, "load_clipset", "load (cache hit)")
    clock.wrap(trainer, "compute_features", "features", sync=True)
    clock.wrap(trainer, "build_model", "model build + normalisation stats", sync=True)
    clock.wrap(FoldCheckpoints, "save", "checkpoint writes")

    # Augment runs at the start of every training step and nowhere else.
    base = trainer.Augment

    class FirstStepAugment(base):
        def forward(self, x, soft_targets):
            on_first_step()
            return super().forward(x, soft_targets)

    trainer.Augment = FirstStepAugment
    clock._originals.append((trainer, "Augment", base, True))


def instrument_callbacks(clock: PhaseClock, callbacks: list) -> None:
    for callback in callbacks:
        is_tracker = type(callback).__name__ == "MlflowTracker" or getattr(callback, "name", None) == "mlflow"
        phase = "tracking" if is_tracker else f"callback {type(callback).__name__}"
        for hook in HOOKS:
            if hasattr(callback, hook):
                clock.wrap(callback, hook, phase, detail=f"{phase}.{hook}")


# --------------------------------------------------------------------------
# The fresh-process run (child): launch -> first training step


def first_step_child(overrides: list[str]) -> None:
    """Run ``python -m esc_sweep`` in this process and exit at the first training step.

    Prints one line: FIRST_STEP_MARK + JSON of time.time() stamps, so the
    parent, which knows when it launched us, can compute the delays.
    """
    stamps: dict[str, float] = {"imported": time.time()}
    from esc_sweep import app

    clock = PhaseClock()
    build_callbacks = app.build_callbacks

    def timed_build_callbacks(cfg, **kwargs):
        stamps.setdefault("app_started", time.time())
        started = time.perf_counter()
        callbacks = build_callbacks(cfg, **kwargs)
        clock.seconds["tracking"] += time.perf_counter() - started
        instrument_callbacks(clock, callbacks)
        return callbacks

    app.build_callbacks = timed_build_callbacks

    def first_step() -> None:
        stamps["first_step"] = time.time()
        payload = {"stamps": stamps, "first_start": clock.first_start, "first_end": clock.first_end,
                   "seconds": dict(clock.seconds)}
        print(FIRST_STEP_MARK + json.dumps(payload), flush=True)
        sys.stderr.flush()
        os._exit(0)  # the benchmark needs nothing after this point

    instrument_trainer(clock, first_step)
    from esc_sweep.cli import main

    sys.argv = ["esc_sweep", *overrides]
    main()
    print("cv_wall: the run ended without a training step", file=sys.stderr)
    sys.exit(3)


def measure_first_step(overrides: list[str], hydra_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, str(Path(__file__).resolve()), "--first-step-child", "--",
            *overrides, f"hydra.run.dir={hydra_dir}"]
    launched = time.time()
    proc = subprocess.run(args, cwd=common.REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(FIRST_STEP_MARK)]
    if not lines:
        raise RuntimeError(
            f"the fresh-process run failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    child = json.loads(lines[-1][len(FIRST_STEP_MARK):])
    stamps = child["stamps"]
    first_start = child["first_start"]

    def since(t: float | None) -> float | None:
        return None if t is None else round(t - launched, 3)

    return {
        "seconds_to_first_step": round(stamps["first_step"] - launched, 3),
        "target_seconds": TTFS_TARGET_SECONDS,
        # Milestones, in seconds after launch.
        "milestones": {
            "interpreter + torch/hydra imports": since(stamps["imported"]),
            "app started (config composed)": since(stamps.get("app_started")),
            "seeding started": since(first_start.get("seeding + determinism flags")),
            "load started": since(first_start.get("load (cache hit)")),
            "features started": since(first_start.get("features")),
            "model build started": since(first_start.get("model build + normalisation stats")),
            "first training step": since(stamps["first_step"]),
        },
        "phase_seconds": {k: round(v, 3) for k, v in child["seconds"].items()},
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

    from esc_sweep.config import validate
    from esc_sweep.data import load_clipset
    from esc_sweep.trainer import cross_validate, pick_device

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

        # 1. decode / cache, outside the cross-validation
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
        del clips

        # 2. the cross-validation, in this process
        from esc_sweep.app import build_callbacks

        clock = PhaseClock(device)
        first_step: dict[str, float] = {}
        instrument_trainer(clock, lambda: first_step.setdefault("at", time.perf_counter()))
        try:
            cv_started = time.perf_counter()
            callbacks = build_callbacks(cfg)  # constructs the tracker: counted as tracking
            tracker_construct = time.perf_counter() - cv_started
            clock.seconds["tracking"] += tracker_construct
            instrument_callbacks(clock, callbacks)
            cv = cross_validate(cfg, callbacks)
            total = time.perf_counter() - cv_started
        finally:
            clock.restore()
        histories = [h for fold in cv.folds for h in fold.history]
        train = sum(h.get("train_seconds", h["epoch_seconds"]) for h in histories)
        evaluation = sum(h.get("eval_seconds", 0.0) for h in histories)
        if not all("train_seconds" in h for h in histories):
            notes.append("the trainer records no train_seconds: evaluation is counted in train steps")
        phases = {
            "seeding + determinism flags": clock.seconds.get("seeding + determinism flags", 0.0),
            "load (cache hit)": clock.seconds.get("load (cache hit)", 0.0),
            "features": clock.seconds.get("features", 0.0),
            "model build + normalisation stats": clock.seconds.get("model build + normalisation stats", 0.0),
            "train steps": train,
            "evaluation": evaluation,
            "tracking": clock.seconds.get("tracking", 0.0),
            "checkpoint writes": clock.seconds.get("checkpoint writes", 0.0),
        }
        phases.update({k: v for k, v in clock.seconds.items() if k.startswith("callback ")})
        phases["other"] = total - sum(phases.values())
        folds = [
            {
                "fold": f.fold,
                "seconds": f.seconds,
                "epochs": f.epochs,
                "train_seconds": [round(h.get("train_seconds", h["epoch_seconds"]), 3) for h in f.history],
                "eval_seconds": [round(h.get("eval_seconds", 0.0), 3) for h in f.history],
                "val_acc": f.val_acc,
            }
            for f in cv.folds
        ]

        # 3. a fresh process on the warm cache: launch -> first training step
        fresh = None
        if not args.no_first_step:
            fresh = measure_first_step(overrides, tmp / "hydra")
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
        "cv_total_seconds": total,
        "phases_seconds": phases,
        "callback_seconds": {"tracking.construct": tracker_construct, **dict(clock.detail)},
        "first_step_in_process_seconds": first_step.get("at", float("nan")) - cv_started,
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
    print(f"first training step: {p['first_step_in_process_seconds']:.2f} s after the run started (in process, cache hit)")
    fresh = p["first_step_fresh_process"]
    if fresh:
        verdict = "meets" if fresh["seconds_to_first_step"] < fresh["target_seconds"] else "MISSES"
        print(f"first training step, fresh `python -m esc_sweep` on a cache hit: {fresh['seconds_to_first_step']:.2f} s "
              f"after launch ({verdict} the {fresh['target_seconds']:.0f} s target)")
        print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in fresh["milestones"].items() if v is not None))
    for note in p["notes"]:
        print(f"note: {note}")
    print(f"load average: start {p['load_avg_start']}, end {p['load_avg_end']}")


if __name__ == "__main__":
    common.run_main(main)
