"""Decode one audio file into a fixed-length mono waveform.

Reading goes through ``soundfile`` (libsndfile): WAV/FLAC/OGG/AIFF/... in any
bit depth, integer or float, any sample rate. Multi-channel audio is averaged
to mono, resampled with ``torchaudio.functional.resample`` and then padded with
zeros or trimmed (from the end) to the requested number of samples.

Anything wrong with a file (empty, truncated, not audio, NaN samples) raises a
:class:`~esc_sweep.errors.DataError` whose message names the file.
"""

from __future__ import annotations

import math
import os
import re
from typing import Union

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from esc_sweep.errors import DataError

PathLike = Union[str, os.PathLike]

# Extensions that libsndfile decodes (lower case, with the dot). Files with
# other extensions are ignored when a dataset folder is scanned.
_FORMAT_EXTENSIONS = {
    "wav": (".wav", ".wave"),
    "flac": (".flac",),
    "ogg": (".ogg", ".oga", ".opus"),
    "aiff": (".aif", ".aiff", ".aifc"),
    "mp3": (".mp3",),
    "w64": (".w64",),
    "rf64": (".rf64",),
    "caf": (".caf",),
    "au": (".au", ".snd"),
}
_AVAILABLE = {name.lower() for name in sf.available_formats()}
AUDIO_EXTENSIONS = frozenset(
    ext for fmt, exts in _FORMAT_EXTENSIONS.items() if fmt in _AVAILABLE for ext in exts
)

_BLOCK_FRAMES = 1 << 18
# "data : 32000 (should be 15978)" in libsndfile's log: the header promises
# more audio than the file holds.
_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def is_audio_file(path: PathLike) -> bool:
    """True when the file name has an extension soundfile can decode."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def num_samples_for(clip_seconds: float, sample_rate: int) -> int:
    """Length in samples of a clip of ``clip_seconds`` at ``sample_rate``."""
    n = int(round(float(clip_seconds) * int(sample_rate)))
    if n <= 0:
        raise DataError(f"clip length {clip_seconds} s at {sample_rate} Hz is empty: set dataset.clip_seconds > 0")
    return n


def read_audio(path: PathLike) -> tuple[np.ndarray, int]:
    """Read a whole file as float32 ``[frames, channels]`` plus its sample rate."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb"):
            pass  # libsndfile reports an unreadable file only as "System error"
    except OSError as exc:
        raise DataError(f"cannot read audio file {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise DataError(f"audio file {path} is empty (0 bytes): replace it with a valid recording or remove it")
    try:
        with sf.SoundFile(path) as f:
            sample_rate = int(f.samplerate)
            declared = int(f.frames)
            blocks = list(f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True))
            log = f.extra_info or ""
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, EOFError) as exc:
        reason = _short_reason(exc)
        raise DataError(
            f"cannot decode audio file {path}: {reason} (is it a valid, complete audio file? "
            f"re-export or remove it)"
        ) from None
    except MemoryError:
        raise DataError(f"cannot decode audio file {path}: its header claims an absurd length (corrupt file?)") from None

    data = np.concatenate(blocks, axis=0) if blocks else np.zeros((0, 1), dtype=np.float32)
    truncated = 0 < declared < (1 << 40) and data.shape[0] < declared
    match = _SHORT_DATA.search(log)
    if match:
        promised, present = int(match.group(1)), int(match.group(2))
        # A few bytes short can be a missing pad byte; more means lost audio.
        truncated = truncated or promised - present > 8
    if truncated:
        raise DataError(
            f"audio file {path} is truncated (its header promises more audio than the file holds): "
            f"re-download or re-export it"
        )
    if sample_rate <= 0:
        raise DataError(f"audio file {path} has an invalid sample rate ({sample_rate} Hz)")
    if data.shape[0] == 0:
        raise DataError(f"audio file {path} contains no audio samples: replace or remove it")
    if not np.isfinite(data).all():
        raise DataError(f"audio file {path} contains NaN or infinite samples: re-export it")
    return data, sample_rate


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of ``[frames, channels]`` into ``[frames]``."""
    if data.ndim == 1:
        return data
    if data.shape[1] == 1:
        return data[:, 0]
    return data.mean(axis=1, dtype=np.float32)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample along the last dimension (no-op when the rates match)."""
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate == new_rate:
        return waveform
    g = math.gcd(orig_rate, new_rate)
    return AF.resample(waveform, orig_rate // g, new_rate // g)


def fit_length(waveform: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Trim the end or pad zeros at the end so that the last dim is ``num_samples``."""
    n = waveform.shape[-1]
    if n == num_samples:
        return waveform
    if n > num_samples:
        return waveform[..., :num_samples]
    return torch.nn.functional.pad(waveform, (0, num_samples - n))


def decode(path: PathLike, sample_rate: int, num_samples: int) -> torch.Tensor:
    """Decode ``path`` to a float32 mono tensor ``[num_samples]`` at ``sample_rate``."""
    data, rate = read_audio(path)
    mono = torch.from_numpy(np.ascontiguousarray(to_mono(data), dtype=np.float32))
    if rate != sample_rate:
        # Resample only what is needed (plus a margin for the filter) to save time.
        keep = int(math.ceil(num_samples * rate / sample_rate)) + 64
        mono = resample(mono[:keep], rate, sample_rate)
    out = fit_length(mono, num_samples)
    return out.contiguous()


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = re.sub(r"^Error opening '.*?':\s*", "", text)
    text = re.sub(r"^Error\s*:\s*", "", text)
    return " ".join(text.split()).rstrip(".")


__all__ = [
    "AUDIO_EXTENSIONS",
    "decode",
    "fit_length",
    "is_audio_file",
    "num_samples_for",
    "read_audio",
    "resample",
    "to_mono",
]

