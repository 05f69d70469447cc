"""Training throughput (clips/s) of one model + features config, three ways.

    python benchmarks/throughput.py model=resnet18 features=mel --steps 20 --warmup 3

Any ``python -m esc_sweep`` override works (``trainer.batch_size=32``,
``augmentation=none``, ``trainer.compile=true``, ...). In one process, on the
same clips, it measures:

(a) model only: forward + backward + optimizer step on batches of spectrograms
    made beforehand and already on the device. Nothing else happens, so this
    is the ceiling for the configured model, batch size and device.
(b) esc_sweep: the trainer's own ``esc_sweep.training.loop.fit`` (device-resident
    spectrograms, index batches, batched augmentation, ``train_step``), timed
    from the end of the warm-up steps to the end of its hot loop by a
    ``Callback`` (``on_step_end`` counts and stamps the steps).
(c) conventional: a torch ``DataLoader`` whose ``Dataset`` computes one clip's
    log-mel spectrogram and augmentation on the CPU in ``__getitem__`` (the way
    typical ESC-50 code trains), with ``os.cpu_count() - 1`` workers, then the
    same model step. Audio is already decoded in memory, so (c) is not charged
    for file decoding: the comparison is about features and augmentation.

All three modes run the trainer's own step, ``esc_sweep.training.loop.train_step``
on a ``make_trainee`` (forward under the trainer's autocast, soft
cross-entropy, backward, clipping, optimizer and schedule, EMA): (a) and (c)
call it directly, (b) through ``fit``. The modes differ only in how batches
are made.

On CPU, (a) and (b) run step by step in turn (``--sequential`` turns this
off): other processes' load on a shared machine changes within seconds, and
pairing makes both modes see the same load. Per-step times, CPU time per clip
(process plus DataLoader workers, steadier than wall time under load) and
the load average are recorded for every mode.

It prints clips/s per mode and the ratios b/a (how close esc_sweep gets to
the ceiling) and b/c (how much faster than the usual pipeline), and writes
JSON with machine facts (CPU count, load average at start and end, device,
git commit) next to the numbers. Real ESC-50 is used when ESC50_ROOT is set,
synthetic 5-second tones otherwise.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (puts the repo on sys.path too)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from esc_sweep.config import validate  # noqa: E402
from esc_sweep.data import ClipSet, load_clipset  # noqa: E402
from esc_sweep.features.augment import Mixup  # noqa: E402
from esc_sweep.features.store import Spectrograms  # noqa: E402
from esc_sweep.features.transforms import build_features  # noqa: E402
from esc_sweep.runtime import pick_device, seed_everything  # noqa: E402
from esc_sweep.training.callbacks import Callback  # noqa: E402
from esc_sweep.training.loop import TrainingData, Trainee, build_model, fit, make_trainee, train_step  # noqa: E402

MODES = {
    "a": "model only (ceiling)",
    "b": "esc_sweep pipeline",
    "c": "conventional DataLoader",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m esc_sweep")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing, per mode")
    parser.add_argument("--clips", type=int, default=512, help="distinct clips to train on (a seeded random subset)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: trainer.device)")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers for (c); default cpu_count-1")
    parser.add_argument("--modes", default="abc", help="which modes to run, e.g. ab")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all modes; the best round of each counts")
    parser.add_argument("--sequential", action="store_true",
                        help="on CPU, run (a) and (b) one after the other instead of step by step in turn")
    parser.add_argument("--out", default=None, help="JSON path (default: outputs/benchmarks/<name>.json)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.clips < 1 or args.repeat < 1:
        parser.error("--steps, --clips and --repeat must be >= 1 and --warmup >= 0")
    if not set(args.modes) <= set(MODES) or not args.modes:
        parser.error(f"--modes takes letters from {''.join(MODES)}")
    return args


# --------------------------------------------------------------------------
# Shared pieces


def load_clips(cfg: DictConfig, num_clips: int, seed: int) -> ClipSet:
    """A seeded random subset of the configured dataset; every mode trains on it."""
    clips = load_clipset(cfg.dataset, cfg.features.sample_rate, progress=False)
    if num_clips < len(clips):
        rows = torch.randperm(len(clips), generator=torch.Generator().manual_seed(seed))[:num_clips]
        clips = clips.subset(rows.sort().values)
    return clips


def tiled_index(num_clips: int, length: int, device: torch.device) -> torch.Tensor:
    """``length`` row indices cycling over the clips, so any step count fits any subset."""
    return torch.arange(length, device=device) % num_clips


def trainee_for(cfg: DictConfig, model: torch.nn.Module, device: torch.device, total_steps: int) -> Trainee:
    """The trainer's optimizer, schedule (one epoch of ``total_steps``), EMA and forward for (a) and (c)."""
    model.train()
    return make_trainee(cfg, model, device, steps_per_epoch=total_steps, epochs=1)


def timed_loop(
    step: Callable[[int], torch.Tensor], steps: int, warmup: int, device: torch.device,
    cpu_clock: Callable[[], float | None] = common.cpu_seconds,
) -> dict[str, Any]:
    """Run ``warmup + steps`` calls of ``step(i)``; time the last ``steps``.

    Losses are summed on the device and read once at the end, like the
    trainer does per epoch, so the GPU is never waited on between steps.
    """
    loss_sum = torch.zeros((), device=device)
    stamps: list[float] = []
    started, cpu_started = time.perf_counter(), cpu_clock()
    for i in range(warmup + steps):
        if i == warmup:
            common.sync(device)
            started, cpu_started = time.perf_counter(), cpu_clock()
        loss_sum += step(i)
        if device.type == "cpu":  # CPU work is synchronous: per-step times are real
            stamps.append(time.perf_counter())
    loss = float(loss_sum)  # the one host synchronisation
    seconds = time.perf_counter() - started
    cpu_ended = cpu_clock()
    return {
        "seconds": seconds,
        "cpu_seconds": None if cpu_started is None or cpu_ended is None else cpu_ended - cpu_started,
        "loss": loss / (warmup + steps),
        "step_seconds": _step_seconds(started, stamps[warmup:]),
    }


def _step_seconds(start: float, ends: list[float]) -> list[float]:
    """Durations of consecutive steps from the timing start and each step's end stamp."""
    stamps = [start] + ends
    return [round(b - a, 4) for a, b in zip(stamps, stamps[1:])] if ends else []


# --------------------------------------------------------------------------
# (a) model only


def model_only_step(cfg: DictConfig, data: TrainingData, device: torch.device, total: int) -> Callable[[int], torch.Tensor]:
    """``step(i)`` for mode (a): a fresh model trained on batches made before timing."""
    batch_size = cfg.trainer.batch_size
    trainee = trainee_for(cfg, build_model(cfg, data, device), device, total)
    eye = torch.eye(data.num_classes, device=device)
    index = tiled_index(len(data.train_index), batch_size * min(8, total), device)
    batches = []
    for chunk in index.split(batch_size):
        x = data.spectrograms[chunk].contiguous()
        if cfg.trainer.channels_last:  # made before timing: train_step's own conversion is then a no-op
            x = x.contiguous(memory_format=torch.channels_last)
        batches.append((x, eye[data.targets[chunk]]))
    return lambda i: train_step(trainee, *batches[i % len(batches)])


def run_model_only(cfg: DictConfig, data: TrainingData, device: torch.device, steps: int, warmup: int) -> dict:
    return timed_loop(model_only_step(cfg, data, device, warmup + steps), steps, warmup, device)


# --------------------------------------------------------------------------
# (b) esc_sweep: the trainer's own fit


class StepClock(Callback):
    """Times ``fit``'s steps through the trainer's callback hooks.

    ``on_step_end`` counts and stamps the steps after the warm-up (one device
    synchronisation at the end of the warm-up, none elsewhere).
    ``on_epoch_end`` closes the window: the end of the hot loop is the epoch's
    end minus its ``eval_seconds`` (the epoch's ``train_seconds`` ends after
    its one host synchronisation). ``between(i)``, when given, runs after step
    ``i`` on the clock's own time, which is not charged to esc_sweep: the
    paired mode runs the model-only step there. After the last step it points
    ``data.train_index`` (the benchmark's own ``TrainingData``) at one row, so
    the training-set evaluation ``fit`` runs after its last epoch costs nothing.
    """

    def __init__(self, device: torch.device, warmup: int, total: int, data: TrainingData,
                 between: Callable[[int], None] | None = None):
        self.device, self.warmup, self.total, self.data, self.between = device, warmup, total, data, between
        self.count = 0
        self.warm_at = self.resumed = self.hot_loop_end = 0.0
        self.first_step_end = 0.0
        self.cpu_used = 0.0  # CPU time of timed steps
        self.cpu_resumed = None
        self.away = 0.0  # wall time spent in between() after the warm-up
        self.step_seconds: list[float] = []
        self.record: dict[str, float] | None = None

    def on_fold_start(self, fold: int, context: dict) -> None:
        assert context["steps_per_epoch"] == self.total and context["epochs"] == 1, context
        self.warm_at = self.resumed = time.perf_counter()
        self.cpu_resumed = common.cpu_seconds()

    def on_step_end(self, fold: int, step: int) -> None:
        now, cpu_now = time.perf_counter(), common.cpu_seconds()
        self.count += 1
        if self.count == 1:
            self.first_step_end = now
        if self.count > self.warmup:
            if self.device.type == "cpu":  # CPU work is synchronous: per-step times are real
                self.step_seconds.append(round(now - self.resumed, 4))
            if cpu_now is not None and self.cpu_resumed is not None:
                self.cpu_used += cpu_now - self.cpu_resumed
        if self.count == self.total:
            self.data.train_index = self.data.train_index[:1]
        if self.between is not None:
            self.between(self.count - 1)
            if self.count > self.warmup:
                self.away += time.perf_counter() - now
        if self.count == self.warmup:  # timing starts here, after the last warm-up step of both modes
            common.sync(self.device)
            self.warm_at = time.perf_counter()
        self.resumed, self.cpu_resumed = time.perf_counter(), common.cpu_seconds()

    def on_epoch_end(self, fold: int, epoch: int, record: dict[str, float]) -> None:
        now = time.perf_counter()
        assert self.count == self.total, (self.count, self.total)
        self.record = dict(record)
        epoch_start = now - record["epoch_seconds"]
        self.hot_loop_end = epoch_start + record["train_seconds"]
        if self.warmup == 0:  # the window opens when the epoch's loop does, not at on_fold_start
            self.warm_at = epoch_start
            if self.step_seconds:
                self.step_seconds[0] = round(self.first_step_end - epoch_start, 4)


def run_esc_sweep(
    cfg: DictConfig, data: TrainingData, device: torch.device, steps: int, warmup: int,
    between: Callable[[int], None] | None = None,
) -> dict:
    total = warmup + steps
    cfg = copy.deepcopy(cfg)
    cfg.trainer.epochs = 1  # one epoch of exactly warmup + steps steps
    run_data = TrainingData(
        spectrograms=data.spectrograms,
        targets=data.targets,
        num_classes=data.num_classes,
        train_index=tiled_index(len(data.train_index), total * cfg.trainer.batch_size, device),
        val_index=None,
    )
    clock = StepClock(device, warmup, total, run_data, between)
    fit(cfg, run_data, device, fold=1, callbacks=clock)
    assert clock.record is not None, "fit ran no epoch"
    return {
        "seconds": clock.hot_loop_end - clock.warm_at - clock.away,
        "cpu_seconds": clock.cpu_used if clock.cpu_resumed is not None else None,
        "loss": clock.record["train_loss"],
        "step_seconds": clock.step_seconds,
    }


def run_paired(cfg: DictConfig, data: TrainingData, device: torch.device, steps: int, warmup: int) -> tuple[dict, dict]:
    """(a) and (b) step by step in turn, so both see the same load from other processes.

    On a shared CPU the load changes within seconds; measuring the modes one
    after the other then compares the load, not the pipelines.
    """
    a_step = model_only_step(cfg, data, device, warmup + steps)
    a = {"seconds": 0.0, "cpu_seconds": 0.0, "step_seconds": [], "loss_sum": torch.zeros((), device=device)}

    def between(i: int) -> None:
        started, cpu_started = time.perf_counter(), common.cpu_seconds()
        a["loss_sum"] += a_step(i)
        if i >= warmup:
            elapsed = time.perf_counter() - started
            a["seconds"] += elapsed
            a["step_seconds"].append(round(elapsed, 4))
            cpu = common.cpu_seconds()
            a["cpu_seconds"] = None if cpu is None or a["cpu_seconds"] is None else a["cpu_seconds"] + cpu - cpu_started

    b = run_esc_sweep(cfg, data, device, steps, warmup, between)
    a["loss"] = float(a.pop("loss_sum")) / (warmup + steps)
    return a, b


# --------------------------------------------------------------------------
# (c) conventional: per-clip CPU features in DataLoader workers


class ConventionalDataset(torch.utils.data.Dataset):
    """One clip per ``__getitem__``: waveform augmentation, log-mel, SpecAugment, on the CPU.

    This is the usual ESC-50 recipe: numpy gain and circular time shift on the
    waveform, torchaudio's MelSpectrogram + AmplitudeToDB (esc_sweep's own
    extractor modules, so the shape matches the config), then torchaudio's
    frequency and time masking. Mixup, which needs pairs, happens on the batch.
    """

    def __init__(self, cfg: DictConfig, waveforms: torch.Tensor, targets: torch.Tensor, length: int):
        import torchaudio

        self.waveforms = waveforms.float().numpy()
        self.targets = targets.numpy()
        self.length = length
        self.extractor = build_features(cfg.features)
        aug = cfg.augmentation
        self.gain_db, self.time_shift = float(aug.gain_db), float(aug.time_shift)
        self.masks = []
        if aug.freq_masks > 0 and aug.freq_mask_width > 0:
            self.masks += [torchaudio.transforms.FrequencyMasking(aug.freq_mask_width)] * aug.freq_masks
        if aug.time_masks > 0 and aug.time_mask_width > 0:
            self.masks += [torchaudio.transforms.TimeMasking(aug.time_mask_width)] * aug.time_masks

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = i % len(self.waveforms)
        wave = self.waveforms[row]
        # torch's RNG, not numpy's: DataLoader seeds it differently in every worker.
        if self.gain_db > 0:
            wave = wave * np.float32(10 ** (float(torch.empty(()).uniform_(-self.gain_db, self.gain_db)) / 20))
        if self.time_shift > 0:
            limit = int(len(wave) * self.time_shift)
            wave = np.roll(wave, int(torch.randint(-limit, limit + 1, ())))
        with torch.no_grad():
            spec = self.extractor(torch.from_numpy(np.ascontiguousarray(wave)).unsqueeze(0))[0]  # [1, F, T]
            for mask in self.masks:
                spec = mask(spec)
        return spec, int(self.targets[row])


def run_conventional(
    cfg: DictConfig, clips: ClipSet, data: TrainingData, device: torch.device, steps: int, warmup: int, num_workers: int
) -> dict:
    batch_size = cfg.trainer.batch_size
    total = warmup + steps
    dataset = ConventionalDataset(cfg, clips.waveforms, clips.targets, total * batch_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    trainee = trainee_for(cfg, build_model(cfg, data, device), device, total)
    mixup = Mixup(cfg.augmentation.mixup_alpha, cfg.augmentation.mixup_prob) if cfg.augmentation.mixup_alpha > 0 else None
    eye = torch.eye(data.num_classes, device=device)
    batches = iter(loader)

    def step(_: int) -> torch.Tensor:
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        soft = eye[y]
        if mixup is not None:
            x, soft = mixup(x, soft)
        return train_step(trainee, x, soft)

    def cpu_clock() -> float | None:  # this process plus its DataLoader workers
        own = common.cpu_seconds()
        workers = [common.cpu_seconds(w.pid) for w in getattr(batches, "_workers", [])]
        return None if own is None or None in workers else own + sum(workers)

    try:
        result = timed_loop(step, steps, warmup, device, cpu_clock)
    finally:
        del batches  # shuts the workers down
    result["num_workers"] = num_workers
    return result


# --------------------------------------------------------------------------


def _ratios(modes: dict[str, Any], key: str) -> dict[str, float]:
    ratios = {}
    for top, bottom in (("b", "a"), ("b", "c")):
        if top in modes and bottom in modes and modes[top][key] and modes[bottom][key]:
            ratios[f"{top}_over_{bottom}"] = modes[top][key] / modes[bottom][key]
    return ratios


def describe(cfg: DictConfig) -> dict[str, Any]:
    tc = cfg.trainer
    return {
        "dataset": cfg.dataset.kind,
        "model": cfg.model.name,
        "features": OmegaConf.to_container(cfg.features, resolve=True),
        "augmentation": cfg.augmentation.name,
        "optimizer": cfg.optimizer.name,
        "batch_size": tc.batch_size,
        "amp": tc.amp,
        "compile": tc.compile,
        "channels_last": tc.channels_last,
        "deterministic": tc.deterministic,
        "num_threads": tc.num_threads,
    }


def default_out(cfg: DictConfig, device: torch.device) -> Path:
    f = cfg.features
    bins = {"mel": f.n_mels, "mfcc": f.n_mfcc, "stft": f.n_fft // 2 + 1}[f.kind]
    name = f"throughput_{cfg.model.name}_{f.kind}{bins}_{device.type}_bs{cfg.trainer.batch_size}"
    return common.REPO / "outputs" / "benchmarks" / f"{name}.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    extra = [f"trainer.device={args.device}"] if args.device else []
    overrides = common.with_defaults(args.overrides + extra, ["trainer.progress=false"])
    cfg = common.compose_config(overrides)
    validate(cfg)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    device = pick_device(cfg.trainer.device)
    num_workers = common.conventional_num_workers() if args.num_workers is None else args.num_workers
    load_start = common.load_average()
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic, cfg.trainer.compile)

    clips = load_clips(cfg, args.clips, cfg.trainer.seed)
    spectrograms = Spectrograms(cfg, clips, device)
    data = TrainingData(
        spectrograms=spectrograms,
        targets=clips.targets.to(device),
        num_classes=clips.num_classes,
        train_index=torch.arange(len(clips), device=device),
        val_index=None,
    )
    feature_shape = list(spectrograms[torch.zeros(1, dtype=torch.long, device=device)].shape[1:])
    paired = device.type == "cpu" and not args.sequential and {"a", "b"} <= set(args.modes)
    print(
        f"{cfg.model.name} on {cfg.dataset.kind} ({len(clips)} clips), features {list(feature_shape)}, "
        f"batch {cfg.trainer.batch_size}, device {device}, {args.warmup} warm-up + {args.steps} timed steps"
        + (f", {args.repeat} rounds" if args.repeat > 1 else "") + (", (a) and (b) paired step by step" if paired else ""),
        flush=True,
    )

    runners = {
        "a": lambda: {"a": run_model_only(cfg, data, device, args.steps, args.warmup)},
        "b": lambda: {"b": run_esc_sweep(cfg, data, device, args.steps, args.warmup)},
        "ab": lambda: dict(zip("ab", run_paired(cfg, data, device, args.steps, args.warmup))),
        "c": lambda: {"c": run_conventional(cfg, clips, data, device, args.steps, args.warmup, num_workers)},
    }
    # Rounds alternate the modes, so slow drifts in machine load hit every mode alike.
    order = (["ab"] if paired else [m for m in args.modes if m in "ab"]) + [m for m in args.modes if m == "c"]
    rounds: dict[str, list[dict]] = {m: [] for m in args.modes}
    clips_done = args.steps * cfg.trainer.batch_size
    for round_number in range(args.repeat):
        for runner in order:
            before = common.load_average()
            for mode, result in runners[runner]().items():
                result.update(
                    round=round_number + 1,
                    clips_per_s=clips_done / result["seconds"],
                    # Less sensitive to other processes than clips/s: work per clip, in CPU time.
                    clips_per_cpu_s=clips_done / result["cpu_seconds"] if result.get("cpu_seconds") else None,
                    load_avg_start=before,
                    load_avg_end=common.load_average(),
                )
                rounds[mode].append(result)
                print(f"  round {round_number + 1} ({mode}) {MODES[mode]}: {result['clips_per_s']:.2f} clips/s", flush=True)

    modes: dict[str, Any] = {}
    for mode, results in rounds.items():
        best = max(results, key=lambda r: r["clips_per_s"])
        per_cpu = [r["clips_per_cpu_s"] for r in results if r["clips_per_cpu_s"]]
        steps = [t for r in results for t in r["step_seconds"]]
        modes[mode] = {
            "name": MODES[mode],
            "clips_per_s": best["clips_per_s"],
            "median_clips_per_s": statistics.median(r["clips_per_s"] for r in results),
            "clips_per_cpu_s": max(per_cpu) if per_cpu else None,
            # timeit-style: the fastest single step, the least disturbed by other processes (CPU only).
            "best_step_clips_per_s": cfg.trainer.batch_size / min(steps) if steps else None,
            "rounds": results,
        }
    ratios = _ratios(modes, "clips_per_s")
    # The same ratios in CPU time per clip: the steadier view on a machine others are using.
    cpu_ratios = _ratios(modes, "clips_per_cpu_s")
    best_step_ratios = _ratios(modes, "best_step_clips_per_s")

    payload = {
        "benchmark": "throughput",
        "machine": common.machine_info(device),
        "load_avg_start": load_start,
        "load_avg_end": common.load_average(),
        "overrides": overrides,
        "config": {
            **describe(cfg),
            "feature_shape": feature_shape,
            "clips": len(clips),
            "steps": args.steps,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "paired_a_b": paired,
            "num_workers_conventional": num_workers,
        },
        "modes": modes,
        "ratios": ratios,
        "ratios_cpu_time": cpu_ratios,
        "ratios_best_step": best_step_ratios,
    }
    print()
    def cell(value: float | None) -> str:
        return f"{value:.2f}" if value else "-"

    rows = [[f"({m}) {MODES[m]}", cell(r["clips_per_s"]), cell(r["median_clips_per_s"]), cell(r["clips_per_cpu_s"]),
             cell(r["best_step_clips_per_s"])] for m, r in modes.items()]
    print(common.fmt_table(["mode", "clips/s (best)", "clips/s (median)", "clips per CPU-s", "best step clips/s"], rows))
    print("  ".join(f"{k.replace('_over_', '/')} = {v:.2f}" for k, v in ratios.items()))
    for label, extra in (("in CPU time per clip", cpu_ratios), ("fastest step of each mode", best_step_ratios)):
        if extra:
            print(f"{label}: " + "  ".join(f"{k.replace('_over_', '/')} = {v:.2f}" for k, v in extra.items()))
    print(f"load average: start {load_start}, end {payload['load_avg_end']}")
    out = Path(args.out) if args.out else default_out(cfg, device)
    print(f"wrote {common.write_json(out, payload)}")
    return payload


if __name__ == "__main__":
    common.run_main(main)
