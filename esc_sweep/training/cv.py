"""Cross-validation in plain PyTorch.

The story of a run:
1. pick the device and seed everything;
2. load the clips (decoded once, then cached) and move them to the device;
3. turn them into log-spectrograms on the device, once;
4. for each fold: train a fresh model on the other folds (``fold.run_fold``),
   evaluate it on this fold after every epoch, save the fold's result so a
   killed run can resume (``trainer.parallel_folds``: several folds at once,
   each in its own process, see ``parallel.py``);
5. aggregate the folds.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from omegaconf import DictConfig

from esc_sweep.data import ClipSet
from esc_sweep.features.store import Spectrograms
from esc_sweep.paths import checkpoint_dir
from esc_sweep.runtime import pick_device, seed_everything
from esc_sweep.training.callbacks import Callback, CallbackList
from esc_sweep.training.checkpoint import FoldCheckpoints, config_key
from esc_sweep.training.distill import describe, fold_targets, read_teacher
from esc_sweep.training.fold import check_folds, prepare, run_fold
from esc_sweep.training.loop import InitWeights
from esc_sweep.training.parallel import run_folds_in_parallel
from esc_sweep.training.results import CVResult, FoldResult


def repeat_config(cfg: DictConfig, repeat: int) -> DictConfig:
    """The config of repeat ``repeat`` of the CV (``trainer.repeats``): the same folds, seed ``seed + repeat``.

    Repeat 0 is the plain run. Each repeat has its own checkpoint folder (the seed is part
    of its key), so resume and parallel folds work per repeat unchanged.
    """
    if repeat == 0:
        return cfg
    copy = cfg.copy()
    copy.trainer.seed = int(cfg.trainer.seed) + repeat
    return copy


def open_checkpoints(cfg: DictConfig, fingerprint: str) -> FoldCheckpoints:
    """The run's checkpoint folder, ready: afresh after a completed run, reopened for other folds."""
    checkpoints = FoldCheckpoints(checkpoint_dir(cfg) / config_key(cfg, fingerprint))
    completed = checkpoints.completed_folds()
    if not cfg.trainer.resume or completed == sorted(cfg.trainer.folds):
        checkpoints.reset()  # resuming is for interrupted runs: the same command after a completed run starts afresh
    elif completed is not None:
        checkpoints.reopen()  # other folds than the completed run's: its finished folds are reused
    return checkpoints


def cross_validate(
    cfg: DictConfig, callbacks: list[Callback] | None = None, init: InitWeights | None = None,
    mark_complete: bool = True,
) -> CVResult:
    """Run the configured folds (``trainer.repeats`` times); returns per-fold and aggregate results.

    ``init``: weights every fold's model starts from (``model.init_from``, read by the caller).
    ``mark_complete=False`` leaves marking the run complete to the caller (``mark_cv_complete``).
    """
    started = time.perf_counter()
    callbacks = CallbackList(callbacks or [])
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    device = pick_device(cfg.trainer.device)
    teacher = read_teacher(cfg)  # a leaking or mismatched teacher is refused before any data is read
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic, cfg.trainer.compile)
    clips, spectrograms, targets = prepare(cfg, device)
    check_folds(clips, cfg.trainer.folds)

    repeats = [repeat_config(cfg, repeat) for repeat in range(cfg.trainer.repeats)]
    checkpoints = [open_checkpoints(repeat_cfg, clips.fingerprint) for repeat_cfg in repeats]
    callbacks.on_cv_start({
        "config": cfg,
        "clips": clips,
        "device": device,
        "checkpoints": checkpoints[0],
        "repeats": len(repeats),
        "feature_shape": tuple(spectrograms[torch.zeros(1, dtype=torch.long, device=device)].shape[1:]),
    })

    try:
        results: list[FoldResult] = []
        for repeat, (repeat_cfg, kept) in enumerate(zip(repeats, checkpoints)):
            callbacks.on_repeat_start(repeat, int(repeat_cfg.trainer.seed))
            results += run_folds(repeat_cfg, repeat, clips, spectrograms, targets, device, callbacks, init, kept)
        cv = CVResult(folds=results, class_names=clips.class_names, seconds=time.perf_counter() - started,
                      validation=cfg.trainer.validation, checkpoint_dir=checkpoints[0].directory,
                      checkpoint_dirs=[c.directory for c in checkpoints],
                      dataset=str(cfg.dataset.name), fingerprint=str(clips.fingerprint),
                      dataset_folds=(clips.num_folds if clips.protocol == "holdout"
                                     else int(torch.unique(clips.folds).numel())),
                      distill=_distill_record(teacher, cfg, clips, device),
                      protocol=clips.protocol, objective_metric=str(cfg.trainer.objective))
        callbacks.on_cv_end(cv)
    except BaseException as error:  # Ctrl-C included: trackers mark their runs KILLED / FAILED
        callbacks.on_exception(error)
        raise
    if mark_complete:
        mark_cv_complete(cv, cfg)
    return cv


def _distill_record(teacher, cfg: DictConfig, clips: ClipSet, device: torch.device) -> dict[str, Any] | None:
    """What results.json says of the teacher: which one, which member per fold, its accuracy on that fold."""
    record = describe(teacher, cfg)
    if record is not None:
        record["teacher_val_acc_by_fold"] = {  # cached logits: no teacher runs again
            int(f): fold_targets(teacher, cfg, clips, int(f), device).description["teacher_val_acc"]
            for f in cfg.trainer.folds}
    return record


def run_folds(
    cfg: DictConfig, repeat: int, clips: ClipSet, spectrograms: Spectrograms, targets: torch.Tensor,
    device: torch.device, callbacks: Callback, init: InitWeights | None, checkpoints: FoldCheckpoints,
) -> list[FoldResult]:
    """One repeat of the CV: the folds saved in ``checkpoints`` are reused, the others trained."""
    by_fold: dict[int, FoldResult] = {}
    todo = []
    for fold in cfg.trainer.folds:
        result = checkpoints.load(fold)
        if result is None:
            todo.append(fold)
        else:
            result.repeat = repeat
            by_fold[fold] = result
            callbacks.on_fold_end(result, True)
    if cfg.trainer.parallel_folds > 1 and len(todo) > 1:
        trained = run_folds_in_parallel(cfg, todo, cfg.trainer.parallel_folds, device, callbacks, init,
                                        checkpoints.directory)
    else:
        trained = (run_fold(cfg, clips, spectrograms, targets, fold, device, callbacks, init, checkpoints)
                   for fold in todo)
    for result in trained:
        result.repeat = repeat
        checkpoints.save(result)
        by_fold[result.fold] = result
        callbacks.on_fold_end(result, False)
    return [by_fold[fold] for fold in cfg.trainer.folds]


def mark_cv_complete(cv: CVResult, cfg: DictConfig) -> None:
    """Record that this run finished: the same command again starts afresh (until then it resumes).

    The app calls it only after results.json is written and the final fit is done, so a
    crash, a full disk or a kill in between leaves every finished fold resumable.
    """
    for directory in cv.checkpoint_dirs or ([cv.checkpoint_dir] if cv.checkpoint_dir is not None else []):
        # This process holds the folder's lock already (open_checkpoints): no second lock to take.
        FoldCheckpoints(directory, lock=False).mark_complete(list(cfg.trainer.folds))

