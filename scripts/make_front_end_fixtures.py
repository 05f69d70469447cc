"""Run the authors' front ends once on fixed signals and save their outputs as test fixtures.

    .venv/bin/python scripts/make_front_end_fixtures.py \
        --efficientat /tmp/eat_ref/preprocess.py --esc50 /work/shared/esc50/audio

writes tests/models/fixtures/front_ends.npz (see tests/models/fixtures/README.md). The references:

- PANNs: torchlibrosa's ``Spectrogram`` + ``LogmelFilterBank`` as ``panns_inference``'s Cnn14 builds
  them (the authors' package, installed with the dev extra);
- EfficientAT: ``AugmentMelSTFT`` from models/preprocess.py of github.com/fschmid56/EfficientAT
  (commit a425fdce92572e602a1d5634799bd9f1f2efa806), a file given on the command line: it is
  executed here, once, and never copied into esc_sweep; in eval mode with the settings of
  EfficientAT's inference.py and ex_audioset.py (128 mels, 800-sample window, 320 hop, fmax=None);
- AST: transformers' ``ASTFeatureExtractor`` with its defaults (input_values, unpadded frames only).

The tests (tests/models/test_front_end_fixtures.py) fetch nothing: they read this file.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.models.front_end_signals import CLIP_FILE, CLIP_RATE, CLIP_START, FIXTURES, make_signals  # noqa: E402
from tests.models.reference import panns_reference_models  # noqa: E402


def efficientat_reference(path: Path) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("efficientat_preprocess", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # fmax=None: 16000 - 2000 // 2 = 15000 Hz, what the AudioSet checkpoints were trained with.
    return module.AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--efficientat", type=Path, required=True, help="EfficientAT's models/preprocess.py")
    parser.add_argument("--esc50", type=Path, required=True, help="folder of ESC-50 audio (16 or 44.1 kHz)")
    args = parser.parse_args()

    clip, rate = sf.read(args.esc50 / CLIP_FILE, dtype="int16")
    assert rate == CLIP_RATE, f"{CLIP_FILE}: {rate} Hz, the fixtures use the 16 kHz copy"
    clip_16k = clip[CLIP_START:CLIP_START + CLIP_RATE]
    out: dict[str, np.ndarray] = {"clip_16k": clip_16k}

    panns = panns_reference_models().Cnn14(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64,
                                           fmin=50, fmax=14000, classes_num=527).eval()
    efficientat = efficientat_reference(args.efficientat)
    from transformers import ASTFeatureExtractor

    ast = ASTFeatureExtractor()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.cuda.amp.autocast's deprecation notice in preprocess.py
        for name, wave in make_signals(32000, clip_16k).items():
            # [1, 1, frames, mels] -> [mels, frames]; decibels, no floor but 1e-10 (bn0 follows in the model)
            log_mel = panns.logmel_extractor(panns.spectrogram_extractor(wave))[0, 0].T
            out[f"panns/{name}"] = log_mel.numpy().astype(np.float32)
            # [1, mels, frames] in the model's input units: (ln(mel + 1e-5) + 4.5) / 5
            out[f"efficientat/{name}"] = efficientat(wave)[0].numpy().astype(np.float16)
        for name, wave in make_signals(16000, clip_16k).items():
            values = ast(wave[0].numpy(), sampling_rate=16000, return_tensors="np").input_values[0]
            frames = 1 + (wave.shape[1] - 400) // 160  # the rest is padding to 1024 frames
            assert np.all(values[frames:] == values[-1]), "padding expected after the signal's frames"
            out[f"ast/{name}"] = values[:frames].T.astype(np.float16)  # [mels, frames]
            out["ast/padding_value"] = np.float32(values[-1, 0])
    FIXTURES.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURES, **out)
    print(f"wrote {FIXTURES} ({FIXTURES.stat().st_size / 1024:.0f} KB): "
          + ", ".join(f"{k} {v.shape}" for k, v in out.items()))


if __name__ == "__main__":
    main()
