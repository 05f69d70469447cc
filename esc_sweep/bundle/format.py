"""The bundle format: a trained model on disk, usable without the training code's config.

``trainer.final_fit=true`` retrains on every fold after the cross-validation
and the app writes a bundle folder:

    bundle/
      model.pt      state_dict of the Classifier (standardisation buffers included)
      bundle.json   format version, class names, the resolved config (model,
                    features and dataset sections are what loading needs), the
                    CV metrics summary and how the final fit went
      metrics.json  the full cross-validation result (per fold, confusion, histories)

to the run's output folder and, when MLflow tracking is on, as the artifact
folder ``bundle/`` of the run. With ``trainer.save_fold_ensemble=true`` (the
default) the fold models of the cross-validation are saved beside it, no extra
training, as a fold ensemble whose predictions average theirs:

    bundle_ensemble/
      members/fold<k>.pt   state_dict of the model trained without fold k
      bundle.json          as above (format version 2), plus "members": one record
                           per model: {"fold", "weights", "trained_on_folds"}
      metrics.json         the cross-validation result

A bundle without "members" is a single model (version 1, as before), so every
bundle written earlier still loads. This module writes and reads those files and
finds a bundle from what a user names (a folder or an MLflow run id);
``esc_sweep.bundle.predictor`` turns one into a model ready to predict.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from esc_sweep.errors import BundleError, damaged_file_reason
from esc_sweep.models import front_end_record, portable_model_config
from esc_sweep.paths import special_kind, write_text_atomically

log = logging.getLogger("esc_sweep")

BUNDLE_FORMAT = "esc_sweep-bundle"
BUNDLE_VERSION = 1  # a single model (model.pt)
ENSEMBLE_VERSION = 2  # a fold ensemble ("members" in bundle.json): older esc_sweep refuses it, asking for an upgrade
READABLE_VERSION = ENSEMBLE_VERSION  # the newest this code reads
BUNDLE_DIR = "bundle"  # folder name on disk and artifact path in MLflow
ENSEMBLE_DIR = "bundle_ensemble"  # the fold ensemble, beside the final-fit bundle
WEIGHTS_FILE = "model.pt"
MEMBERS_DIR = "members"  # a fold ensemble's weights: members/fold<k>.pt
META_FILE = "bundle.json"
METRICS_FILE = "metrics.json"

# MLflow run ids are uuid4 hex strings; "runs:/<id>[/...]" URIs are accepted too.
# "runs:/<id>/bundle_ensemble" names the run's fold ensemble instead of its bundle.
_RUN_ID = re.compile(r"^(?:runs:/)?([0-9a-f]{32})(?:/(.*))?$")


def save_bundle(
    directory: Path,
    model: nn.Module,
    cfg: DictConfig,
    class_names: Sequence[str],
    cv: Any = None,
    training: Optional[dict[str, Any]] = None,
    run_id: Optional[str] = None,
) -> Path:
    """Write weights, config, class names and metrics to ``directory``.

    ``run_id`` (the MLflow run the bundle belongs to) is recorded for provenance.
    """
    directory = Path(directory)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    meta = bundle_meta(state, cfg, class_names, cv, training, run_id)
    with _saving(directory):
        directory.mkdir(parents=True, exist_ok=True)
        _save_atomically(state, directory / WEIGHTS_FILE)
        if cv is not None:
            write_text_atomically(directory / METRICS_FILE, json.dumps(_json_safe(cv.to_dict()), indent=2))
        write_text_atomically(directory / META_FILE, json.dumps(_json_safe(meta), indent=2))  # last: marks it complete
    return directory


@contextlib.contextmanager
def _saving(directory: Path) -> Iterator[None]:
    """A failed write while saving a bundle (full disk, read-only folder) is one line naming the folder."""
    try:
        yield
    except OSError as err:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = "the disk is full" if full else (err.strerror or str(err))
        raise BundleError(f"cannot save the bundle in {directory}: {reason}; free space or fix its permissions, then "
                          f"run the same command again (the finished folds are not trained again)") from None


def bundle_meta(
    state: dict[str, torch.Tensor],
    cfg: DictConfig,
    class_names: Sequence[str],
    cv: Any = None,
    training: Optional[dict[str, Any]] = None,
    run_id: Optional[str] = None,
) -> dict[str, Any]:
    """The contents of ``bundle.json`` for a model with weights ``state`` (one model of an ensemble)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    # A bundle must not start a download when it is loaded somewhere else.
    config["model"]["pretrained"] = False
    # Pretrained weights (model.weights) are inside model.pt now: record their source and front end only.
    front_end = front_end_record(config)
    config["model"] = portable_model_config(config["model"])
    return {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "class_names": list(class_names),
        "num_bins": int(state["standardize.mean"].shape[2]),
        "config": config,
        "cv": cv.summary() if cv is not None else {},
        "per_class_accuracy": cv.per_class_accuracy() if cv is not None else {},
        "training": training or {},
        "mlflow_run_id": run_id,
        "front_end": front_end,
    }


def save_ensemble_bundle(
    directory: Path,
    members: Mapping[int, dict[str, torch.Tensor]],
    cfg: DictConfig,
    class_names: Sequence[str],
    cv: Any = None,
    run_id: Optional[str] = None,
) -> Path:
    """Write the fold models of a cross-validation (``{fold: state_dict}``) as one bundle.

    ``bundle.json`` lists them under ``members``: the weights file of each and the folds it
    was trained on (every fold but its own), so whoever scores the ensemble can tell which
    clips none of its members has seen. Each file is written whole or not at all.
    """
    if len(members) < 1:
        raise BundleError("a fold ensemble needs at least one fold model")
    directory = Path(directory)
    all_folds = list(range(1, int(cfg.dataset.num_folds) + 1))
    records = []
    with _saving(directory):
        (directory / MEMBERS_DIR).mkdir(parents=True, exist_ok=True)
        for fold, state in sorted(members.items()):
            name = f"{MEMBERS_DIR}/fold{fold}.pt"
            _save_atomically({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, directory / name)
            records.append({"fold": int(fold), "weights": name,
                            "trained_on_folds": [f for f in all_folds if f != fold]})
        first = next(iter(members.values()))
        meta = bundle_meta(first, cfg, class_names, cv, {"kind": "fold_ensemble", "members": len(records)}, run_id)
        meta.update(version=ENSEMBLE_VERSION, members=records)
        if cv is not None:
            write_text_atomically(directory / METRICS_FILE, json.dumps(_json_safe(cv.to_dict()), indent=2))
        write_text_atomically(directory / META_FILE, json.dumps(_json_safe(meta), indent=2))  # last: marks it complete
    return directory


def _save_atomically(state: dict[str, torch.Tensor], path: Path) -> None:
    # Serialised in memory, then written plainly: torch reports a failed file write as a
    # RuntimeError without the reason; a plain write raises the OSError (a full disk).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_safe(value: Any) -> Any:
    """NaN/inf become null so the JSON is valid for any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------
# Finding a bundle


@contextlib.contextmanager
def bundle_directory(source: Union[str, Path], tracking_uri: Optional[str] = None) -> Iterator[Path]:
    """A local folder holding the bundle ``source`` names, for the ``with`` block.

    ``source`` is a bundle folder, a folder holding ``bundle/`` (a run's
    output folder), a ``bundle.json`` file, an MLflow run id or ``runs:/<id>``.
    Bundles of MLflow runs are downloaded into a temporary folder.
    """
    text = str(source).strip()
    path = Path(text).expanduser()
    kind = special_kind(path)
    if kind is not None:
        raise BundleError(f"model bundle {text} is {kind}: give a bundle folder or an MLflow run id")
    if path.exists():
        yield _local_bundle_dir(path)
        return
    match = _RUN_ID.match(text)
    if match is None:
        raise BundleError(
            f"model bundle {text!r} not found: give a bundle folder (<run output dir>/{BUNDLE_DIR}, "
            f"written by trainer.final_fit=true) or an MLflow run id"
        )
    from esc_sweep.tracking.artifacts import download_run_folder  # deferred: MLflow (~8 s), only for run ids

    folder = ENSEMBLE_DIR if (match.group(2) or "").strip("/") == ENSEMBLE_DIR else BUNDLE_DIR
    with tempfile.TemporaryDirectory(prefix="esc_sweep-bundle-") as tmp:
        local = download_run_folder(
            match.group(1), folder, Path(tmp), tracking_uri,
            missing=f"MLflow run {match.group(1)} has no '{folder}/' artifact: bundles are logged by runs "
                    f"trained with trainer.final_fit=true (the cross-validation run, not a fold's run)",
            error=BundleError,
        )
        yield _local_bundle_dir(local)


def _local_bundle_dir(path: Path) -> Path:
    if path.is_file() and path.name == META_FILE:
        path = path.parent
    for candidate in (path, path / BUNDLE_DIR):
        if (candidate / META_FILE).is_file():
            if not (candidate / WEIGHTS_FILE).is_file() and not (candidate / MEMBERS_DIR).is_dir():
                raise BundleError(f"bundle {candidate} has no {WEIGHTS_FILE}: it is incomplete, train it again")
            return candidate
    raise BundleError(
        f"{path} is not a model bundle: expected {META_FILE} and {WEIGHTS_FILE} in it "
        f"(bundles are written to <run output dir>/{BUNDLE_DIR} by trainer.final_fit=true)"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def read_meta(directory: Path) -> dict[str, Any]:
    """``bundle.json``, checked field by field (``check_meta``): BundleError naming the first bad field."""
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise BundleError(f"cannot read {path}: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{path} is damaged (not complete JSON: {_first_line(err)}): restore it from the run's "
                          f"MLflow artifacts or train the bundle again") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not an esc_sweep bundle description (field 'format' is not "
                          f"{BUNDLE_FORMAT!r})")
    version = meta.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > READABLE_VERSION:
        raise BundleError(
            f"bundle {directory} has format version {meta['version']}; this esc_sweep reads up to "
            f"{READABLE_VERSION}: upgrade esc_sweep"
        )
    check_meta(meta, path)
    return meta


# --------------------------------------------------------------------------
# What bundle.json must hold: (dotted field, required, check, what it must be)


MAX_SAMPLE_RATE = 384_000
MAX_CLIP_SECONDS = 3600
MAX_TTA_CROPS = 256


def _is_int(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any, low: float = 0.0, strict: bool = True) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > low if strict else value >= low


def _is_names(value: Any) -> bool:
    return (isinstance(value, list) and len(value) >= 2 and all(isinstance(v, str) and v for v in value)
            and len(set(value)) == len(value))


_FIELDS = (
    ("version", True, lambda v: _is_int(v) and v <= READABLE_VERSION, f"an integer 1..{READABLE_VERSION}"),
    ("class_names", True, _is_names, "a list of at least 2 distinct, non-empty class names"),
    ("num_bins", True, _is_int, "a positive integer (frequency bins of the model's input)"),
    ("config", True, lambda v: isinstance(v, dict), "an object (the training config)"),
    ("config.model", True, lambda v: isinstance(v, dict), "an object"),
    ("config.model.name", True, lambda v: isinstance(v, str) and bool(v), "a model name"),
    ("config.features", True, lambda v: isinstance(v, dict), "an object"),
    # Upper bounds keep a hand-edited value from asking for gigabytes before anything else fails.
    ("config.features.sample_rate", True, lambda v: _is_int(v) and v <= MAX_SAMPLE_RATE,
     f"a positive integer up to {MAX_SAMPLE_RATE} (Hz)"),
    ("config.features.hop_length", True, _is_int, "a positive integer (samples)"),
    ("config.dataset", True, lambda v: isinstance(v, dict), "an object"),
    ("config.dataset.clip_seconds", True, lambda v: _is_number(v) and v <= MAX_CLIP_SECONDS,
     f"a positive number of seconds up to {MAX_CLIP_SECONDS}"),
    ("config.trainer", False, lambda v: isinstance(v, dict), "an object"),
    ("config.trainer.tta_crops", False, lambda v: v is None or (_is_int(v, 0) and v <= MAX_TTA_CROPS),
     f"an integer from 0 to {MAX_TTA_CROPS}"),
    ("config.augmentation", False, lambda v: v is None or isinstance(v, dict), "an object"),
    ("config.augmentation.crop_seconds", False, lambda v: v is None or _is_number(v, strict=False),
     "a number of seconds >= 0"),
    ("cv", False, lambda v: isinstance(v, dict), "an object"),
    ("front_end", False, lambda v: v is None or isinstance(v, dict), "an object"),
    ("front_end.features", False, lambda v: v is None or isinstance(v, dict), "an object"),
    ("members", False, lambda v: v is None or isinstance(v, list), "a list of fold models"),
)

_MISSING = object()


def _lookup(meta: dict[str, Any], dotted: str) -> Any:
    node: Any = meta
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def check_meta(meta: dict[str, Any], path: Path) -> None:
    """BundleError naming the first field of ``bundle.json`` that is missing, mistyped or inconsistent.

    Loading trusts these fields to build the model and its front end; a hand-edited or
    damaged file must fail here, in one line, not deep inside torch.
    """
    fix = "restore the file from the run's MLflow artifacts or train the bundle again"
    for field, required, ok, expected in _FIELDS:
        value = _lookup(meta, field)
        if value is _MISSING:
            if required:
                raise BundleError(f"{path}: field '{field}' is missing: {fix}")
            continue
        if not ok(value):
            raise BundleError(f"{path}: field '{field}' is {_shown(value)}, expected {expected}: {fix}")
    _check_members(meta.get("members"), path, fix)
    _check_front_end(meta, path, fix)


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_members(members: Any, path: Path, fix: str) -> None:
    for index, member in enumerate(members or []):
        field = f"members[{index}]"
        if not isinstance(member, dict):
            raise BundleError(f"{path}: field '{field}' is {_shown(member)}, expected an object: {fix}")
        if not _is_int(member.get("fold")):
            raise BundleError(f"{path}: field '{field}.fold' is {_shown(member.get('fold'))}, expected a fold "
                              f"number: {fix}")
        weights = member.get("weights")
        if not isinstance(weights, str) or not weights:
            raise BundleError(f"{path}: field '{field}.weights' is {_shown(weights)}, expected the weights "
                              f"file's name: {fix}")


def _check_front_end(meta: dict[str, Any], path: Path, fix: str) -> None:
    """The features the model was trained with (``front_end.features``) must be those the config builds."""
    recorded = _lookup(meta, "front_end.features")
    features = meta["config"]["features"]
    for key, value in (recorded if isinstance(recorded, dict) else {}).items():
        if key in features and features[key] != value:
            raise BundleError(
                f"{path}: field 'config.features.{key}' is {_shown(features[key])} but the model was trained "
                f"with {_shown(value)} (field 'front_end.features.{key}'): {fix}"
            )


def read_weights(directory: Path, name: str = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
    """The state dict in file ``name`` of the bundle (``model.pt``, or a member's ``members/fold<k>.pt``)."""
    path = Path(directory) / name
    if not path.is_file():
        raise BundleError(f"bundle {directory} has no {name}: it is incomplete, save it again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise BundleError(f"cannot read weights {path}: {err.strerror or err}") from None
    except Exception as err:  # pickle/zip errors of a damaged file
        raise BundleError(f"weights file {path} is damaged ({damaged_file_reason(err)}): restore it from the "
                          f"run's MLflow artifacts or train the bundle again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(f"weights file {path} is damaged (it holds no state dict of tensors): restore it from "
                          f"the run's MLflow artifacts or train the bundle again")
    return state


def read_member_weights(directory: Path, meta: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """The state dicts a bundle holds: one for a single model, one per fold model of an ensemble."""
    members = meta.get("members")
    if not members:
        return [read_weights(directory)]
    root = Path(directory).resolve()
    for member in members:
        if not (root / member["weights"]).resolve().is_relative_to(root):
            raise BundleError(f"bundle {directory}: member weights {member['weights']!r} lie outside the bundle")
    return [read_weights(directory, member["weights"]) for member in members]


def read_init_weights(source: Union[str, Path]):
    """``model.init_from``: the weights of the bundle ``source`` names, for ``models.init_from``."""
    from esc_sweep.training.loop import InitWeights  # deferred: the trainer, which loading a bundle never needs

    with bundle_directory(source) as directory:
        meta = read_meta(directory)
        if meta.get("members"):
            raise BundleError(f"model.init_from={source}: a fold ensemble has {len(meta['members'])} models; "
                              f"start from a single-model bundle (the run's {BUNDLE_DIR}/ folder)")
        state = read_weights(directory)
    model = meta["config"]["model"]
    return InitWeights(state=state, source=str(source), model_name=model["name"], width=model.get("width"))
