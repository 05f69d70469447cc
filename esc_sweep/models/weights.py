"""``model.weights``: find pretrained weights, fetch them once, and load them into a backbone.

What a user may name:

- a local file (``.pth``/``.pt``/``.ckpt`` or ``.safetensors``) or folder (Hugging Face
  ``save_pretrained`` output): used as is, offline;
- an ``http(s)://`` URL: downloaded once into the weights cache (``paths.weights_cache_dir``)
  with the dataset downloader's resumable, atomic mechanism (``esc_sweep.data.download``):
  bytes go to ``<file>.part``, a rerun resumes with an HTTP Range request, and the file
  appears under its final name only when complete (and verified, with ``model.weights_sha256``);
- a named checkpoint, e.g. ``panns:cnn14`` or ``efficientat:mn10_as`` (each family's ``PretrainedCfg.checkpoints``,
  ``esc_sweep.models.registry.named_checkpoints``);
- ``hf-hub:<repo id>/<file>``: one file of a Hugging Face hub repository (its own cache);
- for ``model.name=hf`` only, a hub id such as ``MIT/ast-finetuned-audioset-10-10-0.4593``
  (``esc_sweep.models.hf``).

The original checkpoints name their tensors differently from esc_sweep (a
waveform front end and an AudioSet head are inside them): each family's
``convert_state_dict`` maps them, and ``load_pretrained`` copies the result into
a backbone, refusing (one line) weights of another architecture. A family's builder
calls ``load_model_weights``, which does all three steps for ``model.weights``.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from torch import nn

from esc_sweep.data.download import download_file, file_sha256, normalize_sha256
from esc_sweep.errors import ConfigError, DownloadError, damaged_file_reason
from esc_sweep.models.registry import named_checkpoints
from esc_sweep.paths import expand, weights_cache_dir

log = logging.getLogger("esc_sweep")

OFFLINE_HINT = "no internet here? download it on a connected machine and set model.weights=<local file>"


def resolve_weights(source: str, sha256: Optional[str] = None, progress: bool = True) -> Path:
    """The local file or folder ``model.weights=source`` names, downloading it first when needed."""
    text = str(source).strip()
    sha256 = normalize_sha256(sha256, "model.weights_sha256")
    url = named_checkpoints().get(text.lower())
    if url is None and re.match(r"^https?://", text):
        url = text
    if url is not None:
        return _download(url, sha256, progress)
    if text.startswith("hf-hub:"):
        return _hf_hub_file(text[len("hf-hub:"):], sha256)
    path = expand(text)
    if path.is_file():
        if sha256 is not None and file_sha256(path) != sha256:
            # The user's own file: refuse it, never delete it.
            raise ConfigError(f"model.weights={text}: its sha256 is {file_sha256(path)}, model.weights_sha256 "
                              f"expects {sha256}: wrong or damaged file")
        return path
    if path.is_dir():
        if sha256 is not None:
            raise ConfigError("model.weights_sha256 pins a single file; model.weights names a folder")
        return path
    prefix = text.split(":", 1)[0] + ":" if ":" in text else None
    known = named_checkpoints()
    names = [n for n in known if prefix and n.startswith(prefix)] or sorted(known)
    raise ConfigError(f"model.weights={text!r}: no such file or folder, and not a URL or a named checkpoint "
                      f"({', '.join(names)})")


def cache_path(url: str) -> Path:
    """Where the download of ``url`` lands: the weights cache, keyed by the URL (``<file>.part`` while partial)."""
    name = Path(unquote(urlparse(url).path)).name or "weights.pth"
    key = hashlib.sha256(url.encode()).hexdigest()[:10]
    return weights_cache_dir() / f"{key}-{re.sub(r'[^A-Za-z0-9_.=-]', '_', name)}"


def _download(url: str, sha256: Optional[str], progress: bool) -> Path:
    dest = cache_path(url)
    name = dest.name.split("-", 1)[1]
    try:
        return download_file(url, dest, sha256=sha256, progress=progress, description=f"Downloading {name}",
                             hint=OFFLINE_HINT, checksum_key="model.weights_sha256")
    except DownloadError as err:
        raise DownloadError(f"model.weights: {err}") from None


def _hf_hub_file(spec: str, sha256: Optional[str]) -> Path:
    repo, _, filename = spec.rpartition("/")
    if "/" not in repo or not filename:
        raise ConfigError(f"model.weights=hf-hub:{spec}: expected hf-hub:<owner>/<repo>/<file>")
    from huggingface_hub import hf_hub_download  # deferred: optional extra [pretrained]; only this source needs it

    try:
        path = Path(hf_hub_download(repo_id=repo, filename=filename))
    except Exception as err:  # offline, unknown repo, missing file: all one line for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DownloadError(f"model.weights=hf-hub:{spec}: cannot fetch it ({first}); {OFFLINE_HINT}") from None
    if sha256 is not None and file_sha256(path) != sha256:
        raise ConfigError(f"model.weights=hf-hub:{spec}: sha256 differs from model.weights_sha256 ({sha256})")
    return path


def _numpy_globals() -> list:
    """What a checkpoint may pickle besides tensors: numpy arrays, scalars and dtypes, nothing callable.

    PANNs' training script saves its sampler's state (numpy index arrays, a RandomState tuple)
    next to ``"model"``; ``torch.load(weights_only=True)`` refuses those unless their types are
    allowed. Arrays are rebuilt from raw bytes by ``_reconstruct``; no other code runs. Files
    written under numpy 1 name ``numpy.core.multiarray``, under numpy 2 ``numpy._core.multiarray``.
    ``bytes``: pickle protocol 2 writes an empty array's data as ``bytes()``.
    """
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"]  # bool, ints, floats, complex
    return [np.ndarray, np.dtype, *dtypes, core._reconstruct, core.scalar, bytes,
            (core._reconstruct, "numpy.core.multiarray._reconstruct"), (core.scalar, "numpy.core.multiarray.scalar"),
            (core._reconstruct, "numpy._core.multiarray._reconstruct"), (core.scalar, "numpy._core.multiarray.scalar")]


def _load_torch_file(path: Path):
    """``torch.load`` that never runs code from the file: tensors, containers and numpy data only."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Another object type inside (argparse.Namespace, a whole pickled model, ...): name it, never unpickle it.
        try:
            allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in _numpy_globals()}
            foreign = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
        except Exception:  # noqa: BLE001 - not a torch file at all: read_checkpoint says so
            foreign = []
        if not foreign:
            raise
        raise ConfigError(f"model.weights={path}: not a plain checkpoint, it pickles {', '.join(foreign[:3])}, "
                          f"which esc_sweep does not unpickle (that could run code); on a machine where you "
                          f"trust the file, save its state dict alone: "
                          f"torch.save(torch.load(f, weights_only=False)['model'], 'weights.pth')"
                          ) from None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint file, unwrapped from ``{"model": ...}`` / ``{"state_dict": ...}``.

    Only the tensors are kept; whatever else the authors saved beside them (an iteration count,
    PANNs' numpy sampler state, an optimizer) is read as plain data and dropped.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # deferred: optional extra [pretrained]; most are torch files

            state = load_file(str(path))
        else:
            state = _load_torch_file(path)
    except ConfigError:
        raise
    except Exception as err:  # a damaged or foreign file: name it in one line
        if Path(path).resolve().is_relative_to(weights_cache_dir().resolve()):
            raise ConfigError(f"model.weights: the cached download {path} is damaged ({damaged_file_reason(err)}): "
                              f"delete it and run again to download it afresh") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.weights={path}: not a readable checkpoint ({first[:200]})") from None
    for wrapper in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        found = (f"a dict of {', '.join(sorted(map(str, state))[:4])}" if isinstance(state, dict)
                 else type(state).__name__)
        raise ConfigError(f"model.weights={path}: holds no state dict of tensors (found {found})")
    # Checkpoints saved from DataParallel prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_model_weights(backbone: nn.Module, cfg, convert: Callable[[dict], dict]) -> nn.Module:
    """``backbone`` with ``model.weights`` loaded (a file, URL or named checkpoint) through ``convert``; as is without."""
    if cfg.weights:
        path = resolve_weights(cfg.weights, cfg.weights_sha256)
        load_pretrained(backbone, read_checkpoint(path), convert, source=str(cfg.weights))
    return backbone


def load_pretrained(
    backbone: nn.Module, state: dict[str, torch.Tensor], convert: Callable[[dict], dict], source: str,
) -> None:
    """Copy converted weights into ``backbone``, all but its classifier head (which stays fresh).

    Refuses, naming the first keys, weights with missing, extra or differently shaped tensors:
    they belong to another architecture or width, and loading them partly would train garbage.
    """
    state = convert(state)
    head = {f"{name}." for name, module in backbone.named_modules() if module is _classifier(backbone)}
    target = backbone.state_dict()
    body = {k for k in target if not any(k.startswith(h) for h in head)}
    family = getattr(backbone, "family", type(backbone).__name__)
    missing = sorted(k for k in body if k not in state and not k.endswith("num_batches_tracked"))
    extra = sorted(k for k in state if k not in target)
    shapes = sorted(k for k in body & state.keys() if state[k].shape != target[k].shape)
    if not body & state.keys():  # no name in common: another family altogether, not another width
        raise ConfigError(f"model.weights={source}: not a {family} checkpoint: none of its {len(state)} tensors "
                          f"has a name this model uses (it has {', '.join(sorted(state)[:2]) or 'none'}; "
                          f"{family} has {', '.join(sorted(body)[:2])})")
    if missing or extra or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} differ in shape ({k}: {tuple(state[k].shape)} vs {tuple(target[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected ({', '.join(extra[:3])})")
        raise ConfigError(f"model.weights={source}: does not fit this model, {family} ({'; '.join(parts)}); "
                          f"check model.name and model.width against the checkpoint")
    for key in body & state.keys():
        target[key] = state[key].to(target[key].dtype)
    backbone.load_state_dict(target)
    log.info("model.weights: loaded %d tensors of %s from %s; the classifier head (%s) starts fresh",
             len(body & state.keys()), family, source, ", ".join(sorted(h.rstrip(".") for h in head)) or "none")


def _classifier(backbone: nn.Module) -> Optional[nn.Module]:
    return backbone.get_classifier() if hasattr(backbone, "get_classifier") else None
