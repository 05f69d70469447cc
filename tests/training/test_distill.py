"""Knowledge distillation (trainer.distill): fold-matched teachers, no leaks, outputs computed once, the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from esc_sweep.bundle.ensemble import FoldModels
from esc_sweep.bundle.format import save_bundle, save_ensemble_bundle
from esc_sweep.config import validate
from esc_sweep.errors import ConfigError
from esc_sweep.training import distill
from esc_sweep.training.cv import cross_validate
from esc_sweep.training.final_fit import final_fit
from tests.conftest import FAST_SYNTHETIC, compose_config, run_cli

# The student: few epochs at a low learning rate, so it is far from converged and a teacher shows.
STUDENT = ["trainer.epochs=3", "optimizer.lr=0.003", "model.width=4"]


def _cfg(tmp_path, *extra):
    return compose_config(FAST_SYNTHETIC + ["tracking.enabled=false", f"trainer.checkpoint_dir={tmp_path}/ck",
                                            f"dataset.cache_dir={tmp_path}/cache", *extra])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A well-trained fold ensemble of folds 1-3 (members/fold<k>.pt held out fold k), and a final-fit bundle."""
    tmp_path = tmp_path_factory.mktemp("teacher")
    cfg = _cfg(tmp_path, "trainer.folds=[1,2,3]", "trainer.epochs=10")
    kept = FoldModels()
    cv = cross_validate(cfg, [kept])
    assert cv.mean_val_acc >= 0.9
    ensemble = save_ensemble_bundle(tmp_path / "bundle_ensemble", kept.states, cfg, cv.class_names, cv)
    fitted = final_fit(cfg, cv)
    single = save_bundle(tmp_path / "bundle", fitted.model, cfg, cv.class_names, cv)
    return {"ensemble": ensemble, "single": single, "cv": cv}


def test_distillation_config_is_checked_naming_the_key(tmp_path, teacher):
    for override, key in (("trainer.distill.alpha=1.5", "trainer.distill.alpha"),
                          ("trainer.distill.temperature=0", "trainer.distill.temperature")):
        with pytest.raises(ConfigError, match=key):
            validate(_cfg(tmp_path, f"trainer.distill.teacher={teacher['ensemble']}", override))
    with pytest.raises(ConfigError, match="trainer.distill.teacher=.*no bundle.json"):
        distill.read_teacher(_cfg(tmp_path, f"trainer.distill.teacher={tmp_path}/nowhere"))
    with pytest.raises(ConfigError, match="dataset.num_classes"):  # another data set: other folds and classes
        distill.read_teacher(_cfg(tmp_path, f"trainer.distill.teacher={teacher['ensemble']}", "trainer.folds=[1]",
                                  "dataset.num_classes=4"))


def test_a_teacher_that_saw_the_held_out_fold_is_refused(tmp_path, teacher):
    # The ensemble has no member that held out fold 4; the final-fit bundle saw every fold.
    with pytest.raises(ConfigError, match="fold 4: no model of it held out fold 4") as err:
        distill.read_teacher(_cfg(tmp_path, f"trainer.distill.teacher={teacher['ensemble']}", "trainer.folds=[1,4]"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="fold 1: its model was trained on fold 1"):
        cross_validate(_cfg(tmp_path, f"trainer.distill.teacher={teacher['single']}", "trainer.folds=[1]"))
    # The same bundle may teach a final fit (no held-out fold there).
    assert distill.read_teacher(_cfg(tmp_path, f"trainer.distill.teacher={teacher['ensemble']}",
                                     "trainer.folds=[1,2,3]")).kind == "fold_ensemble"


def test_the_cli_refuses_a_leaking_teacher_in_one_line_before_reading_data(tmp_path, teacher):
    out = run_cli([*FAST_SYNTHETIC, "tracking.enabled=false", "trainer.folds=[5]",
                   f"trainer.distill.teacher={teacher['ensemble']}"], cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "fold 5" in errors[0] and "trainer.distill.teacher" in errors[0], out.stdout


def test_fold_k_is_taught_by_the_member_that_held_out_fold_k(tmp_path, teacher):
    cfg = _cfg(tmp_path, f"trainer.distill.teacher={teacher['ensemble']}", "trainer.folds=[1,2,3]", *STUDENT)
    cv = cross_validate(cfg)
    record = cv.to_dict()["distill"]
    assert record["members_by_fold"] == {1: ["members/fold1.pt"], 2: ["members/fold2.pt"], 3: ["members/fold3.pt"]}
    assert record["teacher"] == str(teacher["ensemble"]) and record["kind"] == "fold_ensemble"
    # The member's accuracy on its own held-out fold is the teacher's CV accuracy on that fold.
    teacher_acc = {f.fold: f.val_acc for f in teacher["cv"].folds}
    assert record["teacher_val_acc_by_fold"] == pytest.approx(teacher_acc)


def test_teacher_outputs_are_computed_once_and_cached(tmp_path, teacher, monkeypatch):
    calls = []
    compute = distill.compute_teacher_logits
    monkeypatch.setattr(distill, "compute_teacher_logits", lambda *a, **k: calls.append(a[1].fold) or compute(*a, **k))
    cfg = _cfg(tmp_path, f"trainer.distill.teacher={teacher['ensemble']}", "trainer.folds=[1,2]", "trainer.epochs=1")
    monkeypatch.setattr(distill, "_IN_MEMORY", {})
    first = cross_validate(cfg)
    assert calls == [1, 2]  # one pass per member over the clips, none per batch or per epoch
    assert len(list((tmp_path / "cache" / "teacher").glob("*.pt"))) == 2
    monkeypatch.setattr(distill, "_IN_MEMORY", {})  # as a new process: only the disk cache is left
    again = cross_validate(_cfg(tmp_path / "again", f"trainer.distill.teacher={teacher['ensemble']}",
                                "trainer.folds=[1,2]", "trainer.epochs=1", f"dataset.cache_dir={tmp_path}/cache"))
    assert calls == [1, 2]  # read back, not recomputed
    assert [f.val_loss for f in again.folds] == [f.val_loss for f in first.folds]


def test_alpha_zero_is_plain_training_bit_for_bit(tmp_path, teacher):
    # mixup on: the teacher's columns travel through it beside the labels and must not change a draw.
    common = ["trainer.folds=[1,2]", "augmentation=mixup", *STUDENT]
    plain = cross_validate(_cfg(tmp_path / "plain", *common))
    zero = cross_validate(_cfg(tmp_path / "zero", *common, f"trainer.distill.teacher={teacher['ensemble']}",
                               "trainer.distill.alpha=0"))
    for a, b in zip(plain.folds, zero.folds):
        assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
        assert (a.val_acc, a.val_loss, a.train_acc, a.confusion) == (b.val_acc, b.val_loss, b.train_acc, b.confusion)


def test_a_good_teacher_changes_the_student(tmp_path, teacher):
    common = ["trainer.folds=[1,2,3]", *STUDENT]
    plain = cross_validate(_cfg(tmp_path / "plain", *common))
    taught = cross_validate(_cfg(tmp_path / "taught", *common, f"trainer.distill.teacher={teacher['ensemble']}",
                                 "trainer.distill.alpha=0.9", "trainer.distill.temperature=2"))
    assert [h["train_loss"] for h in taught.folds[0].history] != [h["train_loss"] for h in plain.folds[0].history]
    assert [f.val_loss for f in taught.folds] != [f.val_loss for f in plain.folds]


def test_the_teachers_probabilities_alone_teach_row_by_row(tmp_path, teacher, monkeypatch):
    """alpha=1: no label is used, the student learns from the teacher alone, and learns what it says.

    The fold ensemble teaches it as well as the labels do; the same teacher with its classes rotated
    (class c's probability reported as class c+1's) teaches it the rotation: the teacher's rows and
    columns reach the loss as they should.
    """
    common = ["trainer.folds=[1,2,3]", "trainer.distill.alpha=1", "trainer.distill.temperature=1",
              f"trainer.distill.teacher={teacher['ensemble']}"]
    taught = cross_validate(_cfg(tmp_path / "taught", *common))
    assert taught.mean_val_acc >= 0.8
    compute = distill.compute_teacher_logits
    monkeypatch.setattr(distill, "compute_teacher_logits", lambda *a, **k: compute(*a, **k).roll(1, dims=1))
    monkeypatch.setattr(distill, "_IN_MEMORY", {})
    rotated = cross_validate(_cfg(tmp_path / "rotated", *common, f"dataset.cache_dir={tmp_path}/other_cache"))
    assert rotated.mean_val_acc <= 0.2
    confusion = torch.tensor(rotated.pooled_confusion)
    assert int(confusion.roll(-1, dims=1).diagonal().sum()) >= 0.8 * int(confusion.sum())  # true c -> c + 1


def test_the_loss_is_the_documented_mixture():
    g = torch.Generator().manual_seed(0)
    logits, teacher_logits = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.eye(4)[torch.tensor([0, 1, 2, 3, 0, 1])]
    alpha, t = 0.7, 3.0
    targets = distill.TeacherTargets(torch.softmax(teacher_logits / t, 1), alpha, t, {})
    batch = targets.extend(labels, torch.arange(6))
    expected = (alpha * F.kl_div(F.log_softmax(logits / t, 1), torch.softmax(teacher_logits / t, 1),
                                 reduction="batchmean") * t * t
                + (1 - alpha) * F.cross_entropy(logits, labels.argmax(1)))
    assert math.isclose(float(targets.loss(logits, batch, 0.0)), float(expected), rel_tol=1e-5)


def test_the_final_fit_is_taught_by_every_member(tmp_path, teacher, monkeypatch):
    """Nothing is held out in the final fit: all members teach, their probabilities averaged."""
    seen = []
    targets = distill.fold_targets
    monkeypatch.setattr("esc_sweep.training.final_fit.fold_targets",
                        lambda *a, **k: seen.append(targets(*a, **k)) or seen[-1])
    cfg = _cfg(tmp_path, f"trainer.distill.teacher={teacher['ensemble']}", "trainer.folds=[1,2,3]", "trainer.epochs=1")
    final_fit(cfg, None)
    assert seen[0].description["members"] == ["members/fold1.pt", "members/fold2.pt", "members/fold3.pt"]
    rows = seen[0].probabilities
    assert torch.allclose(rows.sum(1), torch.ones(len(rows)))


def test_parallel_folds_distil_as_sequential_ones_do(tmp_path, teacher):
    """Fold workers read the teacher themselves (from the cache): the same numbers as one after another."""
    common = ["trainer.folds=[1,2]", "trainer.num_threads=1", "trainer.epochs=2",
              f"trainer.distill.teacher={teacher['ensemble']}"]
    sequential = cross_validate(_cfg(tmp_path / "seq", *common))
    parallel = cross_validate(_cfg(tmp_path / "par", *common, "trainer.parallel_folds=2"))
    assert [f.val_loss for f in parallel.folds] == [f.val_loss for f in sequential.folds]
    assert [f.history[0]["train_loss"] for f in parallel.folds] == [f.history[0]["train_loss"]
                                                                    for f in sequential.folds]
    assert parallel.distill["members_by_fold"] == {1: ["members/fold1.pt"], 2: ["members/fold2.pt"]}


def test_a_pretrained_checkpoint_is_refused_as_teacher_in_one_line(tmp_path):
    """A checkpoint file or a named release has pretraining classes and, fine-tuned on every fold, would leak."""
    path = tmp_path / "mn01_as_mAP_298.pt"
    torch.save({"w": torch.ones(1)}, path)
    for source in (str(path), "efficientat:mn01_as"):
        with pytest.raises(ConfigError, match="pretrained checkpoint is not a teacher") as err:
            distill.read_teacher(_cfg(tmp_path, f"trainer.distill.teacher={source}", "trainer.folds=[1]"))
        message = str(err.value)
        assert "\n" not in message and f"model.weights={source} trainer.keep_fold_models=true" in message
    out = run_cli([*FAST_SYNTHETIC, "tracking.enabled=false", "trainer.folds=[1]",
                   f"trainer.distill.teacher={path}"], cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "pretrained checkpoint is not a teacher" in errors[0], out.stdout + out.stderr


def test_a_pretrained_model_teaches_through_its_fold_by_fold_fine_tuning(tmp_path):
    """The leak-free route for a pretrained teacher: an authors'-layout checkpoint (EfficientAT's release
    layout, random weights, 527 classes; nothing downloaded) fine-tuned fold by fold with model.weights,
    its fold ensemble then teaching a baseline_cnn at another front end and sample rate."""
    # deferred: only this test needs the EfficientAT module
    from esc_sweep.models import mobilenet

    checkpoint = tmp_path / "mn01_as_mAP_298.pt"
    torch.save(mobilenet.MobileNetAudio(527, width_mult=0.1).state_dict(), checkpoint)
    teacher_cfg = _cfg(tmp_path / "t", "model=efficientat_mn01", f"model.weights={checkpoint}",
                       "features.n_fft=1024", "features.n_mels=128",  # the front end its weights expect
                       "trainer.folds=[1,2]", "trainer.epochs=1", "trainer.channels_last=false")
    validate(teacher_cfg)
    kept = FoldModels()
    cv = cross_validate(teacher_cfg, [kept])
    ensemble = save_ensemble_bundle(tmp_path / "bundle_ensemble", kept.states, teacher_cfg, cv.class_names, cv)
    student = _cfg(tmp_path / "s", f"trainer.distill.teacher={ensemble}", "trainer.folds=[1,2]", "trainer.epochs=1")
    record = cross_validate(student).to_dict()["distill"]
    assert record["teacher_model"] == "efficientat_mn01" and record["teacher_pretrained_from"] == str(checkpoint)
    assert record["members_by_fold"] == {1: ["members/fold1.pt"], 2: ["members/fold2.pt"]}
    # Each fold was taught by the member that held it out: its accuracy there is the teacher run's own.
    assert record["teacher_val_acc_by_fold"] == pytest.approx({f.fold: f.val_acc for f in cv.folds})
