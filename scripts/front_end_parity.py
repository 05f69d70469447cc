"""Print how close esc_sweep's front ends are to the authors' (the committed reference fixtures).

    .venv/bin/python scripts/front_end_parity.py

One row per family and front end, one column per test signal: correlation / mean absolute
difference in the model's input units (tests/models/fixtures/README.md says what the references
are). The fixtures keep EfficientAT's and AST's references in float16, which adds up to 0.0003 to
the differences; tests/models/test_front_end_fixtures.py asserts the same numbers.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esc_sweep.features.transforms import build_features  # noqa: E402
from esc_sweep.models import create_model, mobilenet  # noqa: E402
from tests.conftest import compose_config  # noqa: E402
from tests.models.front_end_signals import FIXTURES, SIGNALS, make_signals  # noqa: E402


def agreement(ours: torch.Tensor, theirs: np.ndarray) -> str:
    a, b = ours.detach().double().numpy().ravel(), theirs.astype(np.float64).ravel()
    difference = np.abs(a - b).mean()
    if a.std() < 1e-3 or b.std() < 1e-3:
        return f"- / {difference:.4f}"
    return f"{np.corrcoef(a, b)[0, 1]:.5f} / {difference:.4f}"


def main() -> None:
    with np.load(FIXTURES) as data:
        ref = {k: data[k] for k in data.files}
    s32, s16 = make_signals(32000, ref["clip_16k"]), make_signals(16000, ref["clip_16k"])
    rows: dict[str, list[str]] = {}
    with torch.no_grad():
        panns = build_features(compose_config(["model=panns_cnn14"]).features)
        rows["PANNs, features.kind=mel (dB)"] = [agreement(panns(s32[n])[0, 0], ref[f"panns/{n}"]) for n in SIGNALS]

        exact, model = mobilenet.EfficientATMel(), mobilenet.MobileNetAudio(5, 0.1, front_end="efficientat")
        rows["EfficientAT, EfficientATMel"] = [agreement(model.prepare(exact(s32[n]))[0, 0], ref[f"efficientat/{n}"])
                                               for n in SIGNALS]
        cfg = compose_config(["model=efficientat_mn01"])
        plain, model = build_features(cfg.features), mobilenet.MobileNetAudio(5, 0.1)
        rows["EfficientAT, features.kind=mel + correction"] = [
            agreement(model.prepare(plain(s32[n]))[0, 0, :, :100], ref[f"efficientat/{n}"]) for n in SIGNALS]
        rows["EfficientAT, before (dB read as ln, 1e-10 floor)"] = [
            agreement((plain(s32[n])[0, 0, :, :100] * math.log(10) / 10 + 4.5) / 5, ref[f"efficientat/{n}"])
            for n in SIGNALS]

        cfg = compose_config(["model=ast", "+model.kwargs.hf_config={hidden_size:16,num_hidden_layers:1,"
                              "num_attention_heads:1,intermediate_size:16}"])
        fbank, ast = build_features(cfg.features), create_model(cfg.model, 2, "none", 128).backbone
        rows["AST, features.kind=fbank + adapter"] = [
            agreement(ast.prepare(fbank(s16[n]))[0, : ref[f"ast/{n}"].shape[1]].T, ref[f"ast/{n}"]) for n in SIGNALS]
    width = max(map(len, rows))
    print(f"{'front end':<{width}}  " + "  ".join(f"{n:>18}" for n in SIGNALS))
    for name, cells in rows.items():
        print(f"{name:<{width}}  " + "  ".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
