"""Generated audio files through ``esc-sweep predict``'s per-file path: each one either gets a prediction
(probabilities summing to 1, a duration from its header) or one user error line; never another exception,
never a hang. Uses a small randomly initialised bundle written to disk and loaded back, as predict does."""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from esc_sweep.app.predict import predict_one
from esc_sweep.bundle import load_bundle, save_bundle
from esc_sweep.errors import EscSweepError
from esc_sweep.models import create_model
from tests.conftest import FAST_SYNTHETIC, compose_config
from tests.data.support import time_limit
from tests.data.test_audio_properties import (
    claims_hours,
    examples,
    make_special,
    random_bytes,
    special_files,
    truncated_files,
    valid_files,
)

OUTCOMES: Counter = Counter()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    cfg = compose_config(FAST_SYNTHETIC)
    model = create_model(cfg.model, 5, cfg.features.normalize, cfg.features.n_mels)
    folder = save_bundle(tmp_path_factory.mktemp("bundle") / "bundle", model, cfg, [f"c{i}" for i in range(5)])
    yield load_bundle(folder)
    if OUTCOMES:
        print("\npredict generated cases:", dict(OUTCOMES), "total", sum(OUTCOMES.values()))


@examples(80)
@given(case=st.one_of(valid_files(), truncated_files(), random_bytes(), claims_hours(), special_files()))
def test_predict_one_gives_a_prediction_or_one_user_error(bundle, case):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clip.{case.ext}"
        if case.note == "made by make_special":
            make_special(case.kind, path)
        else:
            path.write_bytes(case.data)
        with time_limit(20, f"predicting {case!r}"):
            try:
                record = predict_one(bundle, path, top_k=3, max_seconds=120)
            except EscSweepError as err:
                OUTCOMES[f"{case.kind}: refused"] += 1
                assert str(err).strip() and "\n" not in str(err).strip()
                return
    OUTCOMES[f"{case.kind}: predicted"] += 1
    probabilities = [item["probability"] for item in record["top"]]
    assert len(probabilities) == 3 and all(0 <= p <= 1 for p in probabilities)
    assert all(math.isfinite(p) for p in probabilities) and probabilities == sorted(probabilities, reverse=True)
    assert record["seconds"] <= 120 and record["windows"] >= 1
