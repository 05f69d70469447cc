"""Does band-limit augmentation look like a real 8 kHz recording, to a trained model?

    python benchmarks/band_limit_check.py outputs/runs/<run>/bundle_ensemble --fold 1

Takes one fold model of a CV kept with ``trainer.keep_fold_models=true`` (member of
the held-out ``--fold``; a plain bundle works too, but then say which clips it saw)
and scores that fold's clips three ways, all in memory, through the bundle's own
front end:

* as recorded, and after a 16 -> 48 -> 16 kHz round trip (should change nothing);
* after a real 8 kHz round trip (the resampler ``predict`` uses: nothing above 4 kHz);
* with the augmentation's band limit (``RandomBandLimit``: silence floor and taper) at
  fixed cutoffs, and how far each is from the real 8 kHz spectrogram (mean squared
  difference after per-clip standardisation).

If the synthetic cutoff nearest the real one scores like the real 8 kHz input, the
augmentation imitates the recording well and what is left of the 8 kHz gap is what
the model makes of a narrower band, not a mismatch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.robustness import audio_path, esc50_rows, fold_member_bundles  # noqa: E402
from esc_sweep.bundle import load_bundle  # noqa: E402
from esc_sweep.data.audio import decode, resample  # noqa: E402
from esc_sweep.features.augment import RandomBandLimit  # noqa: E402

CUTOFFS = (0.15, 0.20, 0.244, 0.30)  # fractions of the mel axis removed; 0.244: 4 kHz of 64 HTK mels to 8 kHz


def band_limited(x: torch.Tensor, fraction: float, floor_db: float) -> torch.Tensor:
    """``RandomBandLimit`` applied to every clip with the cutoff fixed at ``fraction`` of the axis."""
    removed = torch.full((x.shape[0],), fraction * x.shape[-2])
    return RandomBandLimit(prob=1.0, max_fraction=fraction, floor_db=floor_db).limit(x, removed)


def standardised(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean((1, 2, 3), keepdim=True)) / x.std((1, 2, 3), keepdim=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--root", default=os.environ.get("ESC50_ROOT", str(REPO.parent / "shared" / "esc50")))
    parser.add_argument("--floor-db", type=float, default=80.0, help="augmentation.band_limit_floor_db")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(Path(args.bundle))
    if bundle.meta.get("members"):  # a CV's fold models: the one that never saw the fold
        members = fold_member_bundles(bundle)
        if args.fold not in members:
            raise SystemExit(f"no member of {args.bundle} was held out from fold {args.fold}")
        bundle = members[args.fold]
    root = Path(args.root)
    rows = [r for r in esc50_rows(root) if int(r["fold"]) == args.fold and r["category"] in bundle.class_names]
    waves = torch.stack([decode(audio_path(root, r["filename"]), bundle.sample_rate, bundle.clip_samples)
                         for r in rows])
    labels = torch.tensor([bundle.class_names.index(r["category"]) for r in rows])
    sr = bundle.sample_rate

    def accuracy(spectrograms: torch.Tensor) -> float:
        with torch.inference_mode():
            return 100 * (bundle.model(spectrograms).argmax(1) == labels).float().mean().item()

    recorded = bundle.spectrogram(waves)
    real8 = bundle.spectrogram(resample(resample(waves, sr, 8000), 8000, sr))
    real48 = bundle.spectrogram(resample(resample(waves, sr, 48000), 48000, sr))
    print(f"{len(rows)} clips of fold {args.fold}, {args.bundle}")
    print(f"  as recorded              {accuracy(recorded):5.1f} %")
    print(f"  16 -> 48 -> 16 kHz       {accuracy(real48):5.1f} %")
    print(f"  real 8 kHz round trip    {accuracy(real8):5.1f} %   distance to recorded "
          f"{((standardised(recorded) - standardised(real8)) ** 2).mean():.3f}")
    for fraction in CUTOFFS:
        synthetic = band_limited(recorded, fraction, args.floor_db)
        distance = ((standardised(synthetic) - standardised(real8)) ** 2).mean()
        print(f"  band limit, top {fraction:5.3f}  {accuracy(synthetic):5.1f} %   distance to real 8 kHz {distance:.3f}")


if __name__ == "__main__":
    main()
