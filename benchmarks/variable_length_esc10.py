"""A real variable-length data set from ESC-10: each clip with its leading and trailing digital silence cut.

ESC-50's clips are 5 s because shorter recordings were padded with digital silence (exact zeros).
Cutting that padding off gives real clips of 0.3 to 5 s (on the shared 8-bit copy; the full-rate
release has fewer exact zeros in quiet stretches, so its clips come out as long or longer), in
the folder layout with the official folds: ``OUT/audio/<stem>.flac`` and ``OUT/meta.csv``
(``filename,label,fold``). Lengths are summarised in ``OUT/lengths.json``.

Usage: python benchmarks/variable_length_esc10.py OUT   (ESC50_ROOT: the ESC-50 folder)
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf


def trimmed(samples: np.ndarray) -> np.ndarray:
    """The stretch from the first to the last non-zero sample (at least one sample)."""
    loud = np.flatnonzero(samples != 0)
    return samples[loud[0]:loud[-1] + 1] if len(loud) else samples[:1]


def main(out: Path) -> None:
    root = Path(os.environ["ESC50_ROOT"])
    rows = [r for r in csv.DictReader(open(root / "meta" / "esc50.csv")) if r["esc10"] == "True"]
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lengths = []
    with open(out / "meta.csv.partial", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label", "fold"])
        for row in rows:
            stem = Path(row["filename"]).stem
            source = next(p for p in (root / "audio" / f"{stem}{ext}" for ext in (".flac", ".wav")) if p.exists())
            samples, rate = sf.read(source, dtype="float32", always_2d=True)
            clip = trimmed(samples.mean(axis=1))
            sf.write(out / "audio" / f"{stem}.flac", clip, rate, subtype="PCM_16")
            writer.writerow([f"audio/{stem}.flac", row["category"], row["fold"]])
            lengths.append(len(clip) / rate)
    os.replace(out / "meta.csv.partial", out / "meta.csv")
    seconds = np.array(lengths)
    summary = {"clips": len(seconds), "seconds_percentiles_0_10_25_50_75_90_100":
               np.percentile(seconds, [0, 10, 25, 50, 75, 90, 100]).round(2).tolist(),
               "share_under_2.5_s": round(float((seconds < 2.5).mean()), 4),
               "share_under_5_s": round(float((seconds < 4.99).mean()), 4), "source": str(root)}
    (out / "lengths.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
