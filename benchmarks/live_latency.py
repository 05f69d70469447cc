"""Live tagging latency of ``esc-sweep serve``: milliseconds from a microphone chunk's arrival to its labels.

    python benchmarks/live_latency.py <bundle> [more bundles...] [--rate 48000] [--chunk 0.5] [--seconds 30]
    python benchmarks/live_latency.py --default-model      # no bundle: the default config, random weights

Feeds a recording to the app's own streaming function (``esc_sweep.app.tagging.live_step``, what
the ``.stream`` handler calls) in chunks as a browser sends them (int16 at the microphone's rate):
each chunk is added to the sliding window, which is resampled to the bundle's rate and tagged by
every model. The recording is a real ESC-50 clip when ``ESC50_ROOT`` is set (looped), else noise.
Prints the median and 95th percentile per chunk, after ``--warmup`` untimed chunks; ``--out``
writes them as JSON with the machine facts. The browser's chunking and the network are not
included (on 127.0.0.1 they add a few ms).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose_config  # noqa: E402  (puts the repo on sys.path)


def default_model_bundle(folder: Path) -> Path:
    """A bundle of the default configuration (baseline_cnn, 64 mels, 5 s at 16 kHz, 50 classes), random weights:
    latency depends on the architecture and input size, not on what the weights learned."""
    from esc_sweep.bundle.format import save_bundle
    from esc_sweep.models import create_model

    cfg = compose_config([])
    model = create_model(cfg.model, 50, cfg.features.normalize, int(cfg.features.n_mels))
    return save_bundle(folder / "bundle", model, cfg, [f"class_{i}" for i in range(50)])


def recording(seconds: float, rate: int) -> np.ndarray:
    """int16 mono at ``rate``: a real ESC-50 clip looped when ESC50_ROOT is set, else pink-ish noise."""
    import torch

    from esc_sweep.data.audio import read_audio, resample

    root = os.environ.get("ESC50_ROOT")
    clips = sorted((Path(root) / "audio").glob("1-26806-A-1.*")) if root else []
    if clips:
        data, clip_rate = read_audio(clips[0])
        wave = resample(torch.from_numpy(data.mean(axis=1).astype(np.float32)), clip_rate, rate).numpy()
        wave = np.tile(wave, int(np.ceil(seconds * rate / wave.shape[0])))[: int(seconds * rate)]
    else:
        wave = np.cumsum(np.random.default_rng(0).standard_normal(int(seconds * rate))).astype(np.float32)
        wave -= np.convolve(wave, np.ones(64) / 64, mode="same")
        wave /= np.abs(wave).max()
    return np.clip(wave * 32767, -32768, 32767).astype(np.int16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="*", help="bundle folders or MLflow run ids (side by side, as serve)")
    parser.add_argument("--default-model", action="store_true", help="no bundle: the default config, random weights")
    parser.add_argument("--rate", type=int, default=48000, help="the microphone's sample rate (default 48000)")
    parser.add_argument("--chunk", type=float, default=0.5, help="seconds per chunk (default 0.5, as the app)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the fed recording (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed chunks first (default 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    if not args.bundles and not args.default_model:
        parser.error("name a bundle, or pass --default-model")
    if args.chunk <= 0 or args.seconds < args.chunk * (args.warmup + 1):
        parser.error("--seconds must hold at least --warmup + 1 chunks of --chunk seconds")

    from esc_sweep.runtime import configure

    configure()
    import torch

    from esc_sweep.app.tagging import live_step
    from esc_sweep.bundle import load_bundle

    with tempfile.TemporaryDirectory() as tmp:
        sources = list(args.bundles) or [str(default_model_bundle(Path(tmp)))]
        bundles = [load_bundle(s, device=args.device) for s in sources]
    pcm = recording(args.seconds, args.rate)
    step = int(round(args.chunk * args.rate))
    stream, latencies, top = None, [], ""
    for index, start in enumerate(range(0, pcm.shape[0] - step + 1, step)):
        labels, stream, milliseconds = live_step(bundles, stream, args.rate, pcm[start:start + step])
        if index >= args.warmup:
            latencies.append(milliseconds)
        top = next(iter(labels[0]))
    median, p95 = float(np.median(latencies)), float(np.percentile(latencies, 95))
    models = " + ".join(b.describe() for b in bundles)
    print(f"live tagging: {len(latencies)} chunks of {args.chunk:g} s at {args.rate} Hz, {torch.get_num_threads()} "
          f"CPU threads, {models}")
    print(f"latency per chunk: median {median:.1f} ms, p95 {p95:.1f} ms (last top label: {top})")
    if args.out:
        from common import machine_info, write_json

        write_json(Path(args.out), {
            "benchmark": "live_latency", "models": [b.describe() for b in bundles], "sources": list(args.bundles),
            "rate": args.rate, "chunk_seconds": args.chunk, "chunks": len(latencies),
            "median_ms": median, "p95_ms": p95, "latencies_ms": latencies, "machine": machine_info(torch.device(args.device)),
        })
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
