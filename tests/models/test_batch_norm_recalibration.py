"""Evaluation uses batch-norm statistics of the weights as they are, not a stale running average.

Issue 27: 5 classes, 2 epochs (6 steps) gave every clip one class (20 %) although the training
loss fell: the running statistics were still half their starting values. ``Classifier`` now
recomputes them from its last training batches when it goes to evaluation.
"""

from __future__ import annotations

import torch

from esc_sweep.config import ModelConfig
from esc_sweep.models import RECALIBRATION_BATCHES, create_model


def _model():
    torch.manual_seed(0)
    return create_model(ModelConfig(name="baseline_cnn", width=8, dropout=0.3), 5, "instance", 32)


def _batches(count: int):
    generator = torch.Generator().manual_seed(1)
    # Decibel-like inputs far from mean 0 / variance 1, as real spectrograms are.
    return [torch.randn(8, 1, 32, 40, generator=generator) * 20 - 30 for _ in range(count)]


def test_eval_statistics_are_the_average_of_the_last_training_batches():
    model, batches = _model(), _batches(3)
    model.train()
    for batch in batches:
        model(batch)  # a training forward pass (gradients on), as the trainer's step
    conv, norm = model.backbone.features[0][0], model.backbone.features[0][1]
    with torch.no_grad():
        last = [conv(model.standardize(b)) for b in batches[-RECALIBRATION_BATCHES:]]
        expected_mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in last]).mean(0)
        expected_var = torch.stack([a.var(dim=(0, 2, 3)) for a in last]).mean(0)
    model.eval()
    assert torch.allclose(norm.running_mean, expected_mean, atol=1e-4)
    assert torch.allclose(norm.running_var, expected_var, rtol=1e-3)
    assert norm.momentum == 0.1  # the trainer's setting is back
    # Evaluating again (another split) changes nothing: the batches were used once.
    before = norm.running_mean.clone()
    model.train(False)
    assert torch.equal(norm.running_mean, before)


def test_after_a_few_steps_eval_predictions_follow_the_trained_model():
    """Without recalibration the running statistics are mostly their start values and eval collapses."""
    model, batches = _model(), _batches(2)
    model.train()
    for batch in batches:
        model(batch)
    stale = _model()
    stale.load_state_dict(model.state_dict())  # the running averages after two steps, no recalibration
    stale.eval()
    model.eval()
    with torch.no_grad():
        recalibrated = model(batches[-1]).argmax(1)
        collapsed = stale(batches[-1]).argmax(1)
    assert len(set(collapsed.tolist())) == 1  # one class for every clip: the symptom
    assert len(set(recalibrated.tolist())) > 1


def test_recalibration_leaves_the_random_stream_and_frozen_backbones_alone():
    model, batches = _model(), _batches(2)
    model.train()
    for batch in batches:
        model(batch)
    state = torch.random.get_rng_state()
    model.eval()  # runs the backbone (dropout included) on the cached batches
    assert torch.equal(torch.random.get_rng_state(), state)

    frozen = _model()
    frozen.freeze_backbone(True)
    frozen.train()
    norm = frozen.backbone.features[0][1]
    start = norm.running_mean.clone()
    for batch in batches:
        frozen(batch)
    frozen.eval()
    assert torch.equal(norm.running_mean, start)  # a linear probe keeps the loaded statistics
    with torch.no_grad():
        model.train()
        model(batches[0])  # no gradients: an evaluation-like pass, not a training step
    assert model._recent_inputs == []


def test_predictions_still_do_not_depend_on_the_recording_level():
    """A gain is a constant in decibels: per-clip normalisation removes it, recalibration or not."""
    model, batches = _model(), _batches(2)
    model.train()
    for batch in batches:
        model(batch)
    model.eval()
    with torch.no_grad():
        clip = batches[0]
        for gain_db in (-20.0, 10.0):
            assert torch.allclose(model(clip + gain_db).softmax(1), model(clip).softmax(1), atol=1e-5)
