"""Peak memory of variable-length clips (dataset.variable_length=true) on a generated FSDKaggle2018-like set.

Writes ``--clips`` WAV files (44.1 kHz, 16-bit, as FSDKaggle2018's) with lengths drawn uniformly from
0.3 to 30 s into the official layout, then in a fresh process: loads them at ``--rate`` (decode + cache),
builds the windowed feature source, draws ``--batches`` training batches of random crops and scores
every clip over predict's windows with a small model. Prints the int16 buffer size, the peak RSS of
each phase, and the extrapolation to FSDKaggle2018's 9473 training clips under the same length
distribution (peak = baseline + their int16 clips + twice the rest measured here).

    python benchmarks/ragged_memory.py --clips 400 --rate 16000 --out /tmp/ragged_bench
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esc_sweep.runtime import configure  # noqa: E402

configure()  # the allocator settings every esc_sweep run has (freed memory stays in the heap), before torch loads

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from esc_sweep.config import FSDKaggle2018DatasetConfig, FeaturesConfig  # noqa: E402
from esc_sweep.data import load_clipset  # noqa: E402
from esc_sweep.features.store import WindowedSpectrograms  # noqa: E402

FSD_TRAIN_CLIPS = 9473


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def generate(out: Path, clips: int, seed: int = 0) -> float:
    """The official layout with ``clips`` training clips (and 10 test clips); returns the seconds of audio."""
    rng = np.random.default_rng(seed)
    train, test, meta = out / "FSDKaggle2018.audio_train", out / "FSDKaggle2018.audio_test", out / "FSDKaggle2018.meta"
    for d in (train, test, meta):
        d.mkdir(parents=True, exist_ok=True)
    rate, total = 44100, 0.0
    rows, test_rows = [], []
    for i in range(clips + 10):
        seconds = float(rng.uniform(0.3, 30.0))
        data = (0.3 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
        name = f"{i:08x}.wav"
        label = f"class{i % 5}"
        if i < clips:
            sf.write(train / name, data, rate, subtype="PCM_16")
            rows.append([name, label, i % 2, i, "CC0"])
            total += seconds
        else:
            sf.write(test / name, data, rate, subtype="PCM_16")
            test_rows.append([name, label, "Private", i, "CC0"])
    for path, header, body in ((meta / "train_post_competition.csv",
                                ["fname", "label", "manually_verified", "freesound_id", "license"], rows),
                               (meta / "test_post_competition_scoring_clips.csv",
                                ["fname", "label", "usage", "freesound_id", "license"], test_rows)):
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(body)
    return total


def measure(out: Path, rate: int, batches: int) -> dict:
    torch.set_num_threads(1)
    result = {"baseline_mb": peak_mb()}
    result["cold"] = not any((out / "cache").glob("*whole*.pt"))  # decoded now, or read from the cache
    dataset = FSDKaggle2018DatasetConfig(root=str(out), cache_dir=str(out / "cache"))
    clips = load_clipset(dataset, rate, progress=False)
    result["after_load_mb"] = peak_mb()
    result["int16_buffer_mb"] = clips.ragged.nbytes / 2**20
    result["seconds_of_audio"] = clips.ragged.samples.numel() / rate
    cfg = OmegaConf.create({"features": OmegaConf.structured(FeaturesConfig(sample_rate=rate, hop_length=320)),
                            "dataset": {"cache_dir": str(out / "cache"), "short_clips": "pad"},
                            "trainer": {"progress": False}})
    source = WindowedSpectrograms(cfg, clips, torch.device("cpu"))
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(64, 5))
    for _ in range(batches):
        index = torch.randint(0, len(clips), (32,))
        model(source[index]).sum().backward()
    result["after_training_batches_mb"] = peak_mb()
    with torch.no_grad():
        for x, _, _ in source.windows(torch.arange(len(clips)), 64):
            model(x)
    result["after_whole_clip_evaluation_mb"] = peak_mb()
    return result


def _generated_seconds(out: Path, clips: int) -> float:
    """The seconds of training audio of a set generated before (rerun on the same --out)."""
    files = sorted((out / "FSDKaggle2018.audio_train").glob("*.wav"))
    if len(files) != clips:
        raise SystemExit(f"{out} holds {len(files)} generated clips, not {clips}: use another --out")
    return sum(sf.info(f).duration for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_only:
        print(json.dumps(measure(args.out, args.rate, args.batches)))
        return
    seconds = generate(args.out, args.clips) if not (args.out / "FSDKaggle2018.meta").is_dir() else \
        _generated_seconds(args.out, args.clips)
    import subprocess  # deferred: only the parent spawns the measuring processes

    for stale in (args.out / "cache").glob("*"):
        stale.unlink()  # the first measurement decodes (cold); the second reads the cache (warm)
    def measured() -> dict:
        # A fresh process: the generator's own memory must not count.
        done = subprocess.run([sys.executable, __file__, "--measure-only", "--out", str(args.out), "--rate",
                               str(args.rate), "--batches", str(args.batches)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the measuring process failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    result = measured()
    peak = max(v for k, v in result.items() if k.endswith("_mb") and k != "int16_buffer_mb")
    warm = measured()
    result["warm_start"] = warm  # the second run: the int16 clips come from the cache (mmap)
    fsd_seconds = FSD_TRAIN_CLIPS * seconds / args.clips
    fsd_int16 = fsd_seconds * args.rate * 2 / 2**20
    # Peak = baseline + the int16 clips + the rest (decode workers' float32 clips, features, model). The rest
    # grew sublinearly here (119, 155, 189 MB for 75, 150, 300 clips on the dev machine): counted twice.
    rest = peak - result["baseline_mb"] - result["int16_buffer_mb"]
    result.update(clips=args.clips, rate=args.rate, generated_seconds=seconds, peak_mb=peak,
                  rest_mb=rest, extrapolated_fsd_seconds=fsd_seconds, extrapolated_fsd_int16_mb=fsd_int16,
                  extrapolated_fsd_peak_mb=result["baseline_mb"] + fsd_int16 + 2 * rest)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
