"""A dry run proves a config before any data is touched.

It builds the features, augmentation, model, optimizer and scheduler for the
configured input and pushes one dummy batch (two silent clips of
``dataset.clip_seconds``) forward and backward on the target device, then
evaluates one full-length clip. Any failure becomes one ``ConfigError`` line
that names the keys involved, instead of a traceback after minutes of data
loading (or a 31 GB allocation). It costs well under a second for the
models esc_sweep ships.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from omegaconf import DictConfig

from esc_sweep.errors import ConfigError, EscSweepError
from esc_sweep.features.augment import Augment
from esc_sweep.features.frontends import augment_domain, frames_per_second as steps_per_second
from esc_sweep.features.transforms import build_features
from esc_sweep.models import checkpoint_front_end_mismatches, count_parameters, create_model
from esc_sweep.runtime import pick_device
from esc_sweep.training.amp import autocast
from esc_sweep.training.loop import make_trainee, train_step

T = TypeVar("T")
# A spectrogram bigger than this per clip is a config mistake, not a recipe (float32: 256 MiB).
MAX_FEATURE_VALUES = 64 * 2**20
# LEAF filters every sample of a clip with each filter before pooling: n_mels x samples complex values
# per clip, 8 clips a pass (esc_sweep.features.leaf.CLIPS_PER_PASS). 2**25 per clip is ~2 GiB a pass.
MAX_LEAF_VALUES = 2**25
# A clip (or training crop) longer than this is not a sound event: 2**24 samples is 17 min at 16 kHz,
# 6 min at 44.1 kHz. Longer ones would allocate gigabytes before any other check could refuse them.
MAX_CLIP_SAMPLES = 2**24


@dataclass
class DryRun:
    device: torch.device
    num_classes: int
    clip_samples: int
    feature_shape: tuple[int, ...]  # [1, bins, frames] of a full clip
    train_shape: tuple[int, ...]  # after augmentation (crop)
    num_parameters: int


def _first_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(err).__name__}: {text}".rstrip(": ")


def _attempt(keys: str, what: str, action: Callable[[], T]) -> T:
    """Run ``action``; turn any failure into one ConfigError line naming ``keys``."""
    try:
        return action()
    except EscSweepError:
        raise
    except Exception as err:  # any library error here means this combination of values cannot work
        raise ConfigError(f"{keys}: {what} ({_first_line(err)})") from None


def expected_num_classes(cfg: DictConfig) -> int:
    """How many classes the data will have, as far as the config says (for the head's size)."""
    ds = cfg.dataset
    if ds.classes is not None:
        return len(ds.classes)
    if ds.kind == "synthetic":
        return int(ds.num_classes)
    if ds.kind == "esc50":
        return 5 if ds.label == "category" else (10 if ds.esc10 else 50)
    return 2  # a folder dataset: unknown until listed; the head size does not change what can fail


def check_device(name: str) -> torch.device:
    device = pick_device(name)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"trainer.device={name!r}, but this machine has no MPS device; use auto or cpu")
    return device


def _check_checkpoint_front_end(cfg: DictConfig, model: torch.nn.Module) -> None:
    """A checkpoint that names its own front end (an HF feature extractor) must agree with features.*."""
    if not cfg.model.weights:
        return
    mismatches = checkpoint_front_end_mismatches(model, cfg.features)
    if not mismatches:
        return
    line = (", ".join(f"features.{k}={have!r}" for k, (have, _) in mismatches.items())
            + f": the feature extractor of model.weights={cfg.model.weights} expects "
            + ", ".join(f"{k}={want!r}" for k, (_, want) in mismatches.items()))
    if cfg.model.front_end_check == "warn":
        logging.getLogger("esc_sweep").warning("front end mismatch: %s", line)
        return
    raise ConfigError(line + " (set model.front_end_check=warn to go on anyway)")


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of the training device: the GPU's, else the machine's RAM (None when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None


def estimated_step_bytes(cfg: DictConfig, num_classes: int, input_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(bytes, parameters) one training step needs, estimated on PyTorch's "meta" device (shapes, no memory).

    Weights, their gradients and two optimizer moments (4 x float32 per parameter; one more copy with
    trainer.ema_decay), plus every layer's output for a batch of trainer.batch_size, kept for the
    backward pass and matched by its gradient (2 x). An upper estimate for the models esc_sweep ships
    (in-place layers count twice). None when the model cannot be built without its weights file or on meta.
    """
    mc, fc = cfg.model, cfg.features
    if mc.weights or mc.init_from or mc.pretrained:
        return None  # a fixed, published size; building it would read the weights
    outputs = [0]

    def count(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            outputs[0] += output.numel() * output.element_size()

    try:
        with torch.device("meta"):
            model = create_model(mc, num_classes, fc.normalize, input_shape[1], fc.kind, fc)
            hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
            model.train()
            model(torch.empty((1, *input_shape), device="meta"))
        for hook in hooks:
            hook.remove()
    except Exception as err:  # an op without a meta kernel: no estimate, the real dry run still checks
        logging.getLogger("esc_sweep").debug("no memory estimate on the meta device: %s", _first_line(err))
        return None
    parameters = count_parameters(model)
    copies = 4 + (1 if cfg.trainer.ema_decay > 0 else 0)
    return copies * 4 * parameters + 2 * int(cfg.trainer.batch_size) * outputs[0], parameters


def _check_memory(cfg: DictConfig, device: torch.device, num_classes: int, input_shape: tuple[int, ...]) -> None:
    limit_gb = cfg.trainer.max_memory_gb
    limit = int(limit_gb * 1e9) if limit_gb is not None else device_memory_bytes(device)
    estimate = estimated_step_bytes(cfg, num_classes, input_shape)
    if limit is None or estimate is None or estimate[0] <= limit:
        return
    need, parameters = estimate
    where = (f"trainer.max_memory_gb={limit_gb:g}" if limit_gb is not None
             else f"the {limit / 1e9:.0f} GB of {device.type} memory here (trainer.max_memory_gb)")
    raise ConfigError(
        f"model.name={cfg.model.name}/model.width/trainer.batch_size: one training step needs about "
        f"{need / 1e9:.1f} GB ({parameters / 1e6:.0f} M parameters, batch {cfg.trainer.batch_size} of "
        f"{tuple(input_shape)}), over {where}; lower model.width or trainer.batch_size"
    )


def dry_run(cfg: DictConfig, num_classes: int | None = None) -> DryRun:
    """Build everything a fold builds and train one step on dummy data; raise ConfigError when anything fails."""
    fc, tc = cfg.features, cfg.trainer
    device = check_device(str(tc.device))
    num_classes = num_classes or expected_num_classes(cfg)
    if cfg.dataset.classes is not None and len(cfg.dataset.classes) == 0:
        raise ConfigError("dataset.classes=[] selects no class; set dataset.classes=null for all classes")
    if num_classes < 2:
        raise ConfigError(f"dataset.classes={list(cfg.dataset.classes or [])}: a classifier needs at least 2 classes")

    clip_samples = int(round(cfg.dataset.clip_seconds * fc.sample_rate))
    if clip_samples > MAX_CLIP_SAMPLES:
        raise ConfigError(
            f"dataset.clip_seconds={cfg.dataset.clip_seconds} at features.sample_rate={fc.sample_rate} is "
            f"{clip_samples} samples a clip, over {MAX_CLIP_SAMPLES} ({MAX_CLIP_SAMPLES / 16000 / 60:.0f} min at "
            f"16 kHz); lower one of them"
        )
    if fc.n_fft > clip_samples:
        raise ConfigError(
            f"features.n_fft={fc.n_fft} is longer than a clip: dataset.clip_seconds={cfg.dataset.clip_seconds} "
            f"at features.sample_rate={fc.sample_rate} is {clip_samples} samples"
        )
    frames = 1 + clip_samples // fc.hop_length
    bins = fc.n_fft // 2 + 1 if fc.kind == "stft" else (fc.n_mfcc if fc.kind == "mfcc" else fc.n_mels)
    if bins * frames > MAX_FEATURE_VALUES:
        raise ConfigError(
            f"features.n_fft/hop_length/n_mels: one clip's spectrogram would have {bins} x {frames} values "
            f"({4 * bins * frames / 2**30:.1f} GiB per clip); raise features.hop_length or lower the resolution"
        )

    if fc.kind == "leaf" and fc.n_mels * clip_samples > MAX_LEAF_VALUES:
        raise ConfigError(
            f"features.n_mels/sample_rate, dataset.clip_seconds: LEAF filters each of a clip's {clip_samples} "
            f"samples with each of its {fc.n_mels} filters ({8 * fc.n_mels * clip_samples / 2**30:.1f} GiB per "
            f"clip); lower features.n_mels, features.sample_rate or dataset.clip_seconds"
        )

    features_keys = "features.kind/sample_rate/n_fft/hop_length/n_mels/f_min/f_max"
    extractor = _attempt(features_keys, "cannot build the feature extractor", lambda: build_features(fc).to(device))
    waveforms = torch.zeros(2, clip_samples, device=device)
    waveforms[:, ::7] = 0.1  # not all zeros: a silent input hides NaNs from log/normalisation
    spectrogram = _attempt(features_keys, "cannot compute a spectrogram of a clip",
                           lambda: extractor(waveforms).float())
    if spectrogram.ndim != 4 or 0 in spectrogram.shape:
        raise ConfigError(f"{features_keys}: the spectrogram of a clip is empty {tuple(spectrogram.shape)}")
    if not torch.isfinite(spectrogram).all():
        raise ConfigError(f"{features_keys}: the spectrogram of a clip has NaN or infinite values")

    frames_per_second = steps_per_second(fc)  # frames, or samples for waveform kinds
    if cfg.augmentation.crop_seconds > 0 and cfg.augmentation.crop_seconds * frames_per_second < 1:
        raise ConfigError(
            f"augmentation.crop_seconds={cfg.augmentation.crop_seconds} is shorter than one spectrogram frame "
            f"({1 / frames_per_second:.4f} s at features.hop_length={fc.hop_length})"
        )
    augment = _attempt("augmentation.*", "cannot build the augmentation", lambda: Augment(cfg.augmentation,
                                                                                              frames_per_second,
                                                                                              augment_domain(fc),
                                                                                              fc.sample_rate))
    eye = torch.eye(num_classes, device=device)
    soft = eye[torch.tensor([0, 1], device=device) % num_classes]
    x, soft = _attempt("augmentation.*", "cannot augment a batch", lambda: augment(spectrogram, soft))

    _check_memory(cfg, device, num_classes, tuple(x.shape[1:]))
    model_keys = f"model.name={cfg.model.name} (model.kwargs, features.n_mels, augmentation.crop_seconds)"
    model = _attempt("model.name/model.kwargs", f"cannot build {cfg.model.name!r}",
                     lambda: create_model(cfg.model, num_classes, fc.normalize, spectrogram.shape[2], fc.kind, fc))
    _check_checkpoint_front_end(cfg, model)
    with torch.no_grad():
        model.standardize.fit(model.front_end(spectrogram.cpu()))
    model = model.to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainee = _attempt("optimizer.*/scheduler.*", f"cannot build optimizer {cfg.optimizer.name!r}",
                       lambda: make_trainee(cfg, model, device, steps_per_epoch=1))
    trainee.forward = model  # compiling would cost the dry run minutes; the eager model shows the same errors
    model.train()
    try:
        loss = train_step(trainee, x, soft)
    except EscSweepError:
        raise
    except Exception as err:  # a model that cannot take this input, an optimizer that cannot step
        text = _first_line(err)
        if "closure" in text or "step()" in text or "optimizer" in text.lower():
            raise ConfigError(f"optimizer.name={cfg.optimizer.name}: cannot take a training step ({text})") from None
        raise ConfigError(
            f"{model_keys}: cannot train on a {tuple(x.shape[1:])} input ({text})"
        ) from None
    if not math.isfinite(float(loss)):
        raise ConfigError(f"optimizer.*/model.*: the first training step on dummy data gave a loss of {float(loss)}")
    model.eval()

    def full_clip():
        with torch.no_grad(), autocast(cfg, device):
            inputs = spectrogram[:1]
            if tc.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            return model(inputs)

    logits = _attempt(model_keys, f"cannot evaluate a full clip {tuple(spectrogram.shape[1:])}", full_clip)
    if tuple(logits.shape) != (1, num_classes):
        raise ConfigError(f"{model_keys}: gives logits shaped {tuple(logits.shape)}, expected (1, {num_classes})")
    return DryRun(device, num_classes, clip_samples, tuple(spectrogram.shape[1:]), tuple(x.shape[1:]),
                  count_parameters(model))
