"""Folds side by side: one worker process per slot, each training whole folds.

``trainer.parallel_folds=N`` starts N worker processes (``spawn``). Each worker
loads the clips and their spectrograms once (from the caches the parent just
filled), then takes folds from a queue and trains them with ``fold.run_fold``, the
same function a sequential run calls. A fold's result depends only on the
config, the fold's own seed and the worker's thread count, so with the same
``trainer.num_threads`` a parallel run gives bit-identical fold results to a
sequential one. (PyTorch's CPU kernels split reductions by thread, so a fold
trained with 1 thread and with 2 threads differ in the last bits; the thread
count is therefore part of what a run is, see docs/performance.md.)

Workers report over one queue (fold start, throttled step counts, epochs, the
trained model and the fold result); the parent replays those events into the
ordinary callbacks, so tracking, progress and pruning see what a sequential
run shows them, only interleaved between folds. Workers ignore Ctrl-C: the
parent catches it, stops them, and the folds finished so far stay saved.

Workers die with their parent, however it ends (``kill -9`` included): on Linux
the kernel sends them SIGKILL when it dies (``PR_SET_PDEATHSIG``), and a watchdog
thread in each worker exits when the parent's process id changes (every
platform, and a second guard on Linux). Orphans would otherwise go on training
into the checkpoint folder that a rerun then uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from esc_sweep import errors
from esc_sweep.training.callbacks import Callback
from esc_sweep.training.checkpoint import FoldCheckpoints
from esc_sweep.training.fold import prepare, run_fold
from esc_sweep.training.results import FoldResult

log = logging.getLogger(__name__)

STEP_REPORT_SECONDS = 0.5  # how often a worker sends its step count (progress bars only)
PARENT_CHECK_SECONDS = 0.5  # how often a worker's watchdog looks whether its parent is still alive
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """End this process promptly once ``parent_pid`` is no longer its parent (the parent died).

    Call it first thing in a child process: the kernel's parent-death signal (Linux) and a
    watchdog thread polling the parent's pid (everywhere) both end it.
    """
    _request_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _request_parent_death_signal() -> None:
    # The kernel sends it when the *thread* that started this process ends: that is the thread
    # iterating run_folds_in_parallel, which waits for the workers, so it ends no earlier than they.
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no usable libc: the watchdog alone guards
        pass


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)  # orphaned: adopted by init (or a subreaper); nothing of ours is left to report to


@dataclass
class WorkerPlan:
    """Where one worker runs: its device, its thread count and (optionally) the cores it is pinned to."""

    device: str
    threads: int
    cores: tuple[int, ...] | None


def available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def plan_workers(workers: int, device: torch.device, num_threads: int | None,
                 cores: list[int] | None = None) -> list[WorkerPlan]:
    """Split the machine between ``workers`` processes.

    CPU: each worker gets ``num_threads`` threads (default: its share of the cores, at
    least 1), pinned to its own cores when the cores divide evenly; with more workers
    than cores the operating system shares them out (pinning 5 workers on 2 cores
    would load one core with 3). GPU: workers take the visible GPUs in turn, so
    several folds may share one device.
    """
    cores = cores if cores is not None else available_cores()
    threads = num_threads or max(1, len(cores) // workers)
    plans = []
    for index in range(workers):
        if device.type == "cuda":
            count = torch.cuda.device_count()
            name = f"cuda:{index % count}" if device.index is None else str(device)
            plans.append(WorkerPlan(name, threads, None))
            continue
        pinned = None
        if workers * threads <= len(cores) and len(cores) % workers == 0:
            share = len(cores) // workers
            pinned = tuple(cores[index * share:(index + 1) * share])
        plans.append(WorkerPlan(str(device), threads, pinned))
    return plans


class _QueueCallbacks(Callback):
    """A worker's callbacks: every event goes to the parent's queue."""

    def __init__(self, events):
        self.events = events
        self.last_step_report = 0.0

    def on_fold_start(self, fold, context):
        # The model stays here; the parent needs only what it can show or log.
        light = {k: v for k, v in context.items() if k != "model"}
        self.events.put(("fold_start", fold, light))

    def on_step_end(self, fold, step):
        now = time.monotonic()
        if now - self.last_step_report >= STEP_REPORT_SECONDS:
            self.last_step_report = now
            self.events.put(("step", fold, step))

    def on_epoch_end(self, fold, epoch, metrics):
        self.events.put(("epoch", fold, epoch, dict(metrics)))

    def on_model_trained(self, fold, model):
        self.trained_model = model


def _worker(config: dict, plan: WorkerPlan, folds, events, init, checkpoint_dir, parent_pid: int) -> None:
    """Train folds from ``folds`` until it yields None; report everything on ``events``."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    if plan.cores is not None:
        os.sched_setaffinity(0, plan.cores)
    torch.set_num_threads(plan.threads)
    cfg = OmegaConf.create(config)
    try:
        device = torch.device(plan.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        clips, spectrograms, targets = prepare(cfg, device)
        # In-fold training state (trainer.checkpoint_every) is saved where a sequential run saves it.
        # The parent holds the folder's lock for the whole run (and it is released when the parent dies).
        checkpoints = FoldCheckpoints(checkpoint_dir, lock=False) if checkpoint_dir is not None else None
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises it
        events.put(("error", None, _describe(error)))
        return
    callbacks = _QueueCallbacks(events)
    while True:
        fold = folds.get()
        if fold is None:
            return
        try:
            result = run_fold(cfg, clips, spectrograms, targets, fold, device, callbacks, init, checkpoints)
            # As bytes: a tensor sent through the queue is shared by a handle that dies with this process.
            buffer = io.BytesIO()
            torch.save(callbacks.trained_model.to("cpu"), buffer)
            events.put(("fold_end", fold, result, buffer.getvalue()))
        except BaseException as error:  # noqa: BLE001
            events.put(("error", fold, _describe(error)))
            return


def _describe(error: BaseException) -> tuple[str, str, str]:
    return type(error).__name__, str(error), traceback.format_exc()


def _raise_from_worker(fold: int | None, described: tuple[str, str, str]) -> None:
    """Raise the worker's error in the parent: esc_sweep's own errors keep their type (and exit code)."""
    name, message, trace = described
    where = f"fold {fold}" if fold is not None else "a fold worker"
    error_type = getattr(errors, name, None)
    if isinstance(error_type, type) and issubclass(error_type, errors.EscSweepError):
        raise error_type(message)
    log.debug("worker traceback:\n%s", trace)
    raise RuntimeError(f"{where} failed: {name}: {message}")


def run_folds_in_parallel(
    cfg: DictConfig, folds: list[int], workers: int, device: torch.device, callbacks: Callback, init=None,
    checkpoint_dir=None,
) -> Iterator[FoldResult]:
    """Train ``folds`` in ``workers`` processes; yields each FoldResult as it finishes.

    Events are replayed into ``callbacks`` in the parent. On any error (Ctrl-C
    included) the workers are stopped before the error propagates.
    """
    context = mp.get_context("spawn")  # fork after torch has started threads is unsafe
    task_queue = context.Queue()
    events = context.Queue()
    for fold in folds:
        task_queue.put(fold)
    plans = plan_workers(min(workers, len(folds)), device, cfg.trainer.num_threads)
    for _ in plans:
        task_queue.put(None)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["trainer"]["progress"] = False  # one progress display: the parent's
    processes = [context.Process(target=_worker, args=(config, plan, task_queue, events, init, checkpoint_dir,
                                                        os.getpid()), daemon=True)
                 for plan in plans]
    log.info("training %d folds in %d worker processes (%s)", len(folds), len(plans),
             ", ".join(f"{p.device} x{p.threads} thread(s)" + (f" on cores {list(p.cores)}" if p.cores else "")
                       for p in plans))
    for process in processes:
        process.start()
    remaining = set(folds)
    try:
        while remaining:
            try:
                event = events.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"a fold worker died (exit code {dead[0].exitcode}; a negative code is the signal "
                        "that killed it, e.g. -9 when the machine ran out of memory); finished folds are kept"
                    )
                continue
            kind, fold = event[0], event[1]
            if kind == "fold_start":
                callbacks.on_fold_start(fold, event[2])
            elif kind == "step":
                callbacks.on_step_end(fold, event[2])
            elif kind == "epoch":
                callbacks.on_epoch_end(fold, event[2], event[3])
            elif kind == "fold_end":
                result = event[2]
                model = torch.load(io.BytesIO(event[3]), weights_only=False)  # our own worker's bytes
                callbacks.on_model_trained(fold, model)
                remaining.discard(fold)
                yield result
            elif kind == "error":
                _raise_from_worker(fold, event[2])
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=30)
