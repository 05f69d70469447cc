"""Knowledge distillation (``trainer.distill``): a student trained on a teacher's probabilities plus the labels.

    loss = alpha * KL(teacher_T || student_T) * T^2 + (1 - alpha) * CE(labels)

where ``_T`` is a softmax at temperature ``T`` (Hinton et al. 2015; ``T^2`` keeps the soft term's
gradients on the scale of the hard one's as ``T`` changes). The teacher is a bundle folder or a fold
ensemble (``<run>/bundle_ensemble``, written with ``trainer.keep_fold_models=true``). A pretrained
model (``model.weights``) teaches the same way: fine-tuned fold by fold in a cross-validation that keeps
its fold models, then given as that run's fold ensemble; the checkpoint itself is refused in one line
(``pretrained_refusal``).

No leaks. In cross-validation fold k is scored on clips the student never trained on, so its
teacher must not have trained on them either: fold k gets the ensemble member whose held-out fold
is k (``members[].fold`` and ``trained_on_folds`` in its bundle.json). A teacher that saw fold k
(a final-fit bundle saw every fold) is refused in one line naming the fold, before any data is read.
The final fit (fold 0, no held-out clips) averages every member's probabilities.

Computed once. The teacher is run once per member over every clip of the data set, un-augmented and
whole (its evaluation mode, no test-time crops), and its logits are kept on disk beside the cached
spectrograms, keyed by the teacher's weights, the data fingerprint and the teacher's front end, and
in memory on the training device; the training loop never runs the teacher. Augmentation then acts
on the student's input only: mixup mixes the teacher's probabilities with the same weights as the
labels (they travel as extra columns of the batch targets through ``Augment``); gain, masks, crops and
band limits leave them as they are, the teacher's view of the whole clean clip. That is the cheap
choice (no teacher forward pass per batch) and the usual one for offline distillation; a teacher
that followed every augmented batch would cost a teacher forward pass per step.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from esc_sweep.config import FeaturesConfig, ModelConfig
from esc_sweep.data import ClipSet, load_clipset
from esc_sweep.data.download import file_sha256
from esc_sweep.errors import ConfigError
from esc_sweep.features.transforms import build_features, compute_features
from esc_sweep.models import create_model
from esc_sweep.paths import expand, original_cwd, waveform_cache_dir
from esc_sweep.training.loop import soft_cross_entropy

log = logging.getLogger(__name__)

KEY = "trainer.distill.teacher"
# The dataset keys that decide which clips exist and which fold each is in: a teacher trained with
# other values has other folds, and its "held-out fold k" is not this run's.
_DATA_KEYS = ("kind", "name", "classes", "num_folds", "label", "num_classes", "clips_per_class", "seed")


@dataclass
class Member:
    """One model of the teacher: its weights file and the folds it was trained on."""

    weights: Path
    fold: int | None  # the fold it held out (None: a single model trained on every fold)
    trained_on: list[int]


@dataclass
class Teacher:
    """A teacher bundle, read and checked (nothing computed yet)."""

    directory: Path
    meta: dict[str, Any]
    members: list[Member]

    @property
    def kind(self) -> str:
        return "fold_ensemble" if self.members[0].fold is not None else "bundle"

    def members_for(self, fold: int) -> list[Member]:
        """The models that may teach fold ``fold``: the one that held it out (all of them for the final fit, 0)."""
        if fold == 0:
            return self.members
        chosen = [m for m in self.members if m.fold == fold]
        if not chosen or fold in chosen[0].trained_on:
            seen = [m for m in self.members if fold in m.trained_on]
            why = (f"its model was trained on fold {fold}" if self.kind == "bundle" and seen else
                   f"no model of it held out fold {fold} (its members held out folds "
                   f"{', '.join(str(m.fold) for m in self.members)})")
            raise ConfigError(f"{KEY}={self.directory}: fold {fold}: {why}, so it has seen the clips fold {fold} "
                              f"is scored on; use the fold ensemble (bundle_ensemble/) of a cross-validation over "
                              f"the same folds (trainer.keep_fold_models=true)")
        return chosen


def read_teacher(cfg: DictConfig) -> Teacher | None:
    """The configured teacher, checked against the run's data settings and folds; None without one.

    Reads bundle.json only, so a wrong teacher is refused before any data is read or model built.
    """
    source = OmegaConf.select(cfg, KEY)
    if not source:
        return None
    directory = expand(str(source))
    if not directory.is_absolute():
        directory = original_cwd() / directory
    if directory.is_file() or (":" in str(source) and not directory.exists()):
        raise ConfigError(pretrained_refusal(str(source)))
    if (directory / "bundle_ensemble" / "bundle.json").is_file() and not (directory / "bundle.json").is_file():
        directory = directory / "bundle_ensemble"  # a run's output folder: its fold ensemble
    meta_file = directory / "bundle.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        config = meta["config"]
        num_folds = int(config["dataset"]["num_folds"])
        records = meta.get("members") or [{"fold": None, "weights": "model.pt",
                                           "trained_on_folds": list(range(1, num_folds + 1))}]
        members = [Member(directory / str(r["weights"]), None if r["fold"] is None else int(r["fold"]),
                          [int(f) for f in r["trained_on_folds"]]) for r in records]
    except FileNotFoundError:
        raise ConfigError(f"{KEY}={source}: no bundle.json in {directory}; give a bundle folder (<run>/bundle) "
                          f"or a fold ensemble (<run>/bundle_ensemble, trainer.keep_fold_models=true)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{KEY}={source}: {meta_file} is not a readable bundle.json ({err!r})") from None
    missing = [str(m.weights) for m in members if not m.weights.is_file()]
    if missing:
        raise ConfigError(f"{KEY}={source}: weights file {missing[0]} is missing")
    teacher = Teacher(directory, meta, members)
    _check_same_data(teacher, cfg, str(source))
    for fold in cfg.trainer.folds:
        teacher.members_for(int(fold))
    return teacher


def pretrained_refusal(source: str) -> str:
    """The one line for a pretrained checkpoint (a file, or a name such as ``panns:cnn14``) given as teacher.

    Such a model cannot teach as it is: its head has the pretraining classes (AudioSet's 527), not
    this run's; and the same model fine-tuned on all of this data set has seen every fold, so in
    cross-validation it would leak fold k's clips into fold k's student. The leak-free route is the
    one every other teacher takes: fine-tune it fold by fold through the same cross-validation
    (``model.weights=<it> trainer.keep_fold_models=true``) and teach from that run's fold ensemble,
    whose member k never saw fold k.
    """
    return (f"{KEY}={source}: a pretrained checkpoint is not a teacher: its head has its pretraining classes, "
            f"and fine-tuned on every fold it would leak the clips each fold is scored on; fine-tune it fold by "
            f"fold first (model.weights={source} trainer.keep_fold_models=true) and give that run's "
            f"bundle_ensemble folder")


def _check_same_data(teacher: Teacher, cfg: DictConfig, source: str) -> None:
    theirs = teacher.meta["config"].get("dataset") or {}
    ours = OmegaConf.to_container(cfg.dataset, resolve=True)
    for key in _DATA_KEYS:
        if key in ours and theirs.get(key) != ours[key]:
            raise ConfigError(f"{KEY}={source}: the teacher was trained with dataset.{key}={theirs.get(key)!r}, "
                              f"this run has dataset.{key}={ours[key]!r}: its folds and classes are not this run's")


def check_classes(teacher: Teacher, clips: ClipSet) -> None:
    names = list(teacher.meta.get("class_names") or [])
    if names != list(clips.class_names):
        raise ConfigError(f"{KEY}={teacher.directory}: the teacher's classes ({len(names)}: {', '.join(names[:3])}, "
                          f"...) are not this run's ({clips.num_classes}: {', '.join(clips.class_names[:3])}, ...) "
                          f"in the same order")


def _section(schema: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in fields(schema)}
    return OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in values.items() if k in known})


# Teacher logits already computed in this process, on their device: {(cache key, device): [N, C]}.
_IN_MEMORY: dict[tuple[str, str], torch.Tensor] = {}


def teacher_logits(teacher: Teacher, member: Member, cfg: DictConfig, clips: ClipSet,
                   device: torch.device) -> torch.Tensor:
    """The member's logits [N, C] for every clip of ``clips`` (row order), on ``device``: computed once.

    Looked up in memory, then on disk (``<feature cache>/teacher/<key>.pt``, key: the member's
    weights, the data fingerprint, the teacher's front end), else computed and saved there.
    """
    config = teacher.meta["config"]
    features_cfg = _section(FeaturesConfig, config["features"])
    front_end = OmegaConf.to_container(features_cfg, resolve=True)
    for key in ("precompute", "cache"):  # how, not what, is computed
        front_end.pop(key, None)
    blob = json.dumps({"weights": file_sha256(member.weights), "data": clips.fingerprint,
                       "clip_samples": int(clips.waveforms.shape[1]), "features": front_end}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:20]
    if (key, str(device)) in _IN_MEMORY:
        return _IN_MEMORY[(key, str(device))]
    path = waveform_cache_dir(cfg.dataset.cache_dir) / "teacher" / f"{key}.pt"
    logits = None
    if path.is_file():
        try:
            logits = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged cache file only costs the recomputation
            log.warning("teacher outputs in %s are unreadable (%s); computing them again", path, err)
    if not isinstance(logits, torch.Tensor) or logits.shape[0] != len(clips):
        logits = compute_teacher_logits(teacher, member, features_cfg, clips, device)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(logits, tmp)
        tmp.replace(path)
        log.info("teacher %s: logits of %d clips computed and cached in %s", member.weights, len(clips), path)
    else:
        log.info("teacher %s: logits of %d clips read from %s", member.weights, len(clips), path)
    logits = logits.to(device)
    _IN_MEMORY[(key, str(device))] = logits
    return logits


@torch.inference_mode()
def compute_teacher_logits(teacher: Teacher, member: Member, features_cfg: Any, clips: ClipSet,
                           device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """One pass of the member over every clip: its own front end on the clean, whole clip, eval mode."""
    config = teacher.meta["config"]
    model_cfg = _section(ModelConfig, config["model"])
    model_cfg.pretrained, model_cfg.weights = False, None
    # Building a model draws random initial weights: keep the student's random streams untouched.
    with torch.random.fork_rng(devices=[]):
        model = create_model(model_cfg, len(teacher.meta["class_names"]), features_cfg.normalize,
                             int(teacher.meta["num_bins"]), features_cfg.kind, features_cfg)
    model.load_state_dict(torch.load(member.weights, map_location="cpu", weights_only=True))
    model = model.to(device).eval()
    extractor = build_features(features_cfg).to(device).eval()
    spectrograms = compute_features(extractor, clips.waveforms, device, batch_size)
    return torch.cat([model(chunk).float() for chunk in spectrograms.split(batch_size)]).cpu()


@dataclass
class TeacherTargets:
    """A fold's teacher probabilities at temperature T for every clip (rows as ``data.targets``), and the loss.

    The training loop appends ``probabilities[batch]`` to the one-hot labels (``extend``), so mixup
    mixes both with the same weights, and ``loss`` splits them again.
    """

    probabilities: torch.Tensor  # [N, C] on the training device
    alpha: float
    temperature: float
    description: dict[str, Any]

    def extend(self, targets: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        return torch.cat([targets, self.probabilities[batch_index]], dim=1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        num_classes = self.probabilities.shape[1]
        labels, teacher = targets[:, :num_classes], targets[:, num_classes:]
        loss = (1 - self.alpha) * soft_cross_entropy(logits, labels, label_smoothing)
        if self.alpha > 0:
            log_student = torch.log_softmax(logits.float() / self.temperature, dim=1)
            kl = (torch.xlogy(teacher, teacher) - teacher * log_student).sum(1).mean()
            loss = loss + self.alpha * self.temperature**2 * kl
        return loss


def fold_targets(teacher: Teacher | None, cfg: DictConfig, clips: ClipSet, fold: int,
                 device: torch.device) -> TeacherTargets | None:
    """What fold ``fold`` distils from (None without a teacher). Fold 0 is the final fit."""
    if teacher is None:
        return None
    check_classes(teacher, clips)
    members = teacher.members_for(fold)
    rate = int(teacher.meta["config"]["features"]["sample_rate"])
    teacher_clips = clips if rate == clips.sample_rate else load_clipset(cfg.dataset, rate, progress=False)
    if teacher_clips.clip_ids != clips.clip_ids:
        raise ConfigError(f"{KEY}={teacher.directory}: the clips at the teacher's {rate} Hz are not this run's")
    temperature = float(cfg.trainer.distill.temperature)
    probabilities = torch.stack([torch.softmax(teacher_logits(teacher, m, cfg, teacher_clips, device) / temperature,
                                               dim=1) for m in members]).mean(0)
    labels = clips.targets.to(device)
    held_out = clips.folds.to(device) == fold
    description = {
        "teacher": str(teacher.directory),
        "kind": teacher.kind,
        "members": [str(m.weights.relative_to(teacher.directory)) for m in members],
        "alpha": float(cfg.trainer.distill.alpha),
        "temperature": temperature,
        # How good the teacher is where it may be scored: its own held-out fold (not for the final fit).
        "teacher_val_acc": (float((probabilities[held_out].argmax(1) == labels[held_out]).float().mean())
                            if fold and bool(held_out.any()) else None),
    }
    return TeacherTargets(probabilities, float(cfg.trainer.distill.alpha), temperature, description)


def describe(teacher: Teacher | None, cfg: DictConfig) -> dict[str, Any] | None:
    """For results.json: which teacher taught which fold, with what weights."""
    if teacher is None:
        return None
    return {
        "teacher": str(teacher.directory),
        "kind": teacher.kind,
        "alpha": float(cfg.trainer.distill.alpha),
        "temperature": float(cfg.trainer.distill.temperature),
        "members_by_fold": {int(f): [str(m.weights.relative_to(teacher.directory)) for m in teacher.members_for(int(f))]
                            for f in cfg.trainer.folds},
        "teacher_mlflow_run_id": teacher.meta.get("mlflow_run_id"),
        "teacher_model": (teacher.meta["config"].get("model") or {}).get("name"),
        # Where the teacher's fine-tuning started (a pretrained checkpoint, model.weights), None: from scratch.
        "teacher_pretrained_from": (teacher.meta.get("front_end") or {}).get("weights"),
    }
