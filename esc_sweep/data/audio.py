"""Decode audio files into mono float32 waveforms, with bounded time and memory.

Reading goes through ``soundfile`` (libsndfile): WAV/FLAC/OGG/AIFF/... in any
bit depth, integer or float, any sample rate. Multi-channel audio is averaged
to mono and resampled with torchaudio's sinc resampler.

Public entry points (all raise :class:`~esc_sweep.errors.DataError`, one line
naming the file, for anything wrong with a file: not a regular file, empty,
truncated, not audio, NaN samples, too long):

* :func:`probe` reads the header only (``soundfile.info``): rate, frames,
  channels, duration. Cheap whatever the length; ``max_seconds`` refuses
  long files before any decoding.
* :func:`decode` returns a fixed-length clip (padded or trimmed at the end).
  It reads only the frames the clip needs, so a long file costs no more
  than a short one.
* :func:`iter_windows` yields fixed-length windows of a whole recording,
  decoding it block by block: memory stays bounded for hours of audio.
* :func:`read_audio` returns the whole file as ``[frames, channels]``; it
  refuses files over ``DEFAULT_MAX_SECONDS`` unless told otherwise.

Only regular files are opened (a FIFO named like a clip would block forever),
see :mod:`esc_sweep.data.files`.
"""

from __future__ import annotations

import functools
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Optional, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as AT

from esc_sweep.data.files import open_regular
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

# Whole-file reads (read_audio) refuse longer files: an hour of 44.1 kHz
# stereo is 1.3 GB as float32. Longer recordings go through iter_windows.
DEFAULT_MAX_SECONDS = 600.0

_BLOCK_FRAMES = 1 << 18
# Bytes per read call: soundfile allocates frames x channels floats up front,
# and a header may claim up to 1024 channels.
_BLOCK_BYTES = 8 << 20
# Frame counts at or above this are libsndfile's "unknown length" marker or a
# corrupt header, never a real length.
_UNKNOWN_FRAMES = 1 << 40
# Largest resampling kernel (elements) built for one rate pair; see _ratio.
_MAX_KERNEL = 1 << 22
# Relative error allowed when a rate ratio has to be approximated (pitch
# shift under 0.2 cents).
_MAX_RATIO_ERROR = 1e-4
# "data : 32000 (should be 15978)" in libsndfile's log: the header promises
# more audio than the file holds.
_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_SF_ERRORS = (sf.SoundFileError, RuntimeError, ValueError, TypeError, EOFError, OverflowError)


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says; ``frames`` is None when the length is unknown."""

    path: str
    sample_rate: int
    channels: int
    frames: Optional[int]
    format: str
    subtype: str

    @property
    def seconds(self) -> Optional[float]:
        return None if self.frames is None else self.frames / self.sample_rate


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


def num_windows(num_samples: int, window_samples: int, hop_samples: Optional[int] = None) -> int:
    """How many windows :func:`iter_windows` yields for ``num_samples`` samples (at the target rate).

    Windows start at 0, hop, 2 hop, ... inside the signal; the last one is the
    first that reaches the end (zero-padded past it). ``hop == window`` gives
    ``ceil(num_samples / window)``.
    """
    window, hop = _check_window(window_samples, hop_samples)
    if num_samples <= 0:
        return 0
    if num_samples <= window:
        return 1
    reach_end = -(-(num_samples - window) // hop)  # windows after the first until one reaches the end
    start_inside = -(-num_samples // hop) - 1  # windows after the first that start inside the signal
    return 1 + min(reach_end, start_inside)


# --------------------------------------------------------------------------
# Header


def probe(path: PathLike, *, max_seconds: Optional[float] = None) -> AudioInfo:
    """The header of ``path`` (via ``soundfile.info``), without decoding any audio.

    DataError when the file is not a readable regular file, not audio, has no
    samples or an invalid rate, or lasts longer than ``max_seconds``.
    """
    path = _readable(path)
    try:
        raw = sf.info(_native_name(path))
    except _SF_ERRORS as exc:
        raise _undecodable(path, exc) from None
    info = AudioInfo(path, int(raw.samplerate), int(raw.channels), _known(raw.frames), str(raw.format), str(raw.subtype))
    _check_info(info, max_seconds)
    return info


def _readable(path: PathLike) -> str:
    """``path`` as str, after checking it is a non-empty regular file we may read."""
    path = os.fspath(path)
    fh, st = open_regular(path)  # libsndfile reports an unreadable file only as "System error"
    fh.close()
    if st.st_size == 0:
        raise DataError(f"audio file {path} is empty (0 bytes): replace it with a valid recording or remove it")
    return path


def _native_name(path: str) -> Union[str, bytes]:
    """The name to hand libsndfile: the bytes on disk on POSIX.

    soundfile encodes a str name as strict UTF-8, which fails for a name that is not
    valid UTF-8 (Python holds its stray bytes as surrogates); the bytes always open.
    """
    return path if os.name == "nt" else os.fsencode(path)


def _known(frames: int) -> Optional[int]:
    frames = int(frames)
    return frames if 0 <= frames < _UNKNOWN_FRAMES else None


def _check_info(info: AudioInfo, max_seconds: Optional[float]) -> None:
    if info.sample_rate <= 0:
        raise DataError(f"audio file {info.path} has an invalid sample rate ({info.sample_rate} Hz)")
    if info.channels <= 0:
        raise DataError(f"audio file {info.path} has an invalid channel count ({info.channels})")
    if info.frames == 0:
        raise DataError(f"audio file {info.path} contains no audio samples: replace or remove it")
    if max_seconds is not None and info.frames is not None and info.frames > _max_frames(info, max_seconds):
        raise _too_long(info.path, info.seconds, max_seconds)


def _max_frames(info: AudioInfo, max_seconds: float) -> int:
    return int(math.floor(float(max_seconds) * info.sample_rate))


def _too_long(path: str, seconds: Optional[float], max_seconds: float) -> DataError:
    length = f"lasts {seconds:.1f} s, over" if seconds is not None else "lasts over"
    return DataError(f"audio file {path} {length} the {float(max_seconds):g} s limit for one recording: trim or split it")


def _undecodable(path: str, exc: BaseException) -> DataError:
    return DataError(
        f"cannot decode audio file {path}: {_short_reason(exc)} (is it a valid, complete audio file? "
        f"re-export or remove it)"
    )


def _truncated(path: str) -> DataError:
    return DataError(
        f"audio file {path} is truncated (its header promises more audio than the file holds): "
        f"re-download or re-export it"
    )


# --------------------------------------------------------------------------
# Reading


@contextmanager
def _open(path: PathLike, max_seconds: Optional[float]) -> Iterator[tuple[sf.SoundFile, AudioInfo]]:
    """An open SoundFile whose header passed the checks of :func:`probe`."""
    path = _readable(path)
    try:
        f = sf.SoundFile(_native_name(path))
    except _SF_ERRORS as exc:
        raise _undecodable(path, exc) from None
    except MemoryError:
        raise DataError(f"cannot decode audio file {path}: its header claims an absurd size (corrupt file?)") from None
    with f:
        info = AudioInfo(path, int(f.samplerate), int(f.channels), _known(f.frames), str(f.format), str(f.subtype))
        _check_info(info, max_seconds)
        match = _SHORT_DATA.search(f.extra_info or "")
        # A few bytes short can be a missing pad byte; more means lost audio.
        if match and int(match.group(1)) - int(match.group(2)) > 8:
            raise _truncated(path)
        yield f, info


def _read_blocks(
    f: sf.SoundFile, info: AudioInfo, want: Optional[int], max_seconds: Optional[float]
) -> Iterator[np.ndarray]:
    """float32 ``[frames, channels]`` blocks of at most ``want`` frames in all (None: to the end).

    Raises DataError for NaN/inf samples, a file shorter than its header says,
    no samples at all, or more than ``max_seconds`` of audio (checked while
    reading too, since a header may not know or may lie about the length).
    """
    block = max(1, min(_BLOCK_FRAMES, _BLOCK_BYTES // (4 * info.channels)))
    limit = want if want is not None else info.frames
    max_frames = _max_frames(info, max_seconds) if max_seconds is not None else None
    got = 0
    while limit is None or got < limit:
        n = block if limit is None else min(block, limit - got)
        try:
            data = f.read(n, dtype="float32", always_2d=True)
        except _SF_ERRORS as exc:
            raise _undecodable(info.path, exc) from None
        except MemoryError:
            raise DataError(f"cannot decode audio file {info.path}: out of memory (corrupt header?)") from None
        if data.shape[0] == 0:
            break
        got += data.shape[0]
        if max_frames is not None and got > max_frames:
            raise _too_long(info.path, info.seconds, max_seconds)  # type: ignore[arg-type]
        if not np.isfinite(data).all():
            raise DataError(f"audio file {info.path} contains NaN or infinite samples: re-export it")
        yield data
    if got == 0:
        raise DataError(f"audio file {info.path} contains no audio samples: replace or remove it")
    expected = info.frames if want is None or info.frames is None else min(want, info.frames)
    if expected is not None and got < expected:
        raise _truncated(info.path)


def read_audio(path: PathLike, *, max_seconds: Optional[float] = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray, int]:
    """Read a whole file as float32 ``[frames, channels]`` plus its sample rate.

    Files longer than ``max_seconds`` are refused from their header (None: no
    limit); for long recordings use :func:`iter_windows`.
    """
    with _open(path, max_seconds) as (f, info):
        blocks = list(_read_blocks(f, info, None, max_seconds))
    data = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)
    return data, info.sample_rate


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of ``[frames, channels]`` into ``[frames]``."""
    if data.ndim == 1:
        return data
    if data.shape[1] == 1:
        return data[:, 0]
    # float64 sum: float32 would overflow to inf for loud float files.
    return data.mean(axis=1, dtype=np.float64).astype(np.float32)


def decode(path: PathLike, sample_rate: int, num_samples: int, *, max_seconds: Optional[float] = None) -> torch.Tensor:
    """Decode ``path`` to a float32 mono tensor ``[num_samples]`` at ``sample_rate``.

    Only the start of the file that the clip needs is read and resampled (plus
    the resampler's context), so the cost does not grow with the file's
    length; ``max_seconds`` additionally refuses files longer than that.
    """
    sample_rate = int(sample_rate)
    with _open(path, max_seconds) as (f, info):
        rate = info.sample_rate
        _check_ratio(info, sample_rate)
        want = num_samples
        if rate != sample_rate:
            want = int(math.ceil(num_samples * rate / sample_rate)) + _context(rate, sample_rate)
        parts = [to_mono(b) for b in _read_blocks(f, info, want, max_seconds)]
    mono = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts), dtype=np.float32))
    out = fit_length(resample(mono, rate, sample_rate), num_samples).contiguous()
    _require_finite(out, info.path)
    return out


def iter_windows(
    path: PathLike,
    sample_rate: int,
    window_samples: int,
    hop_samples: Optional[int] = None,
    *,
    max_seconds: Optional[float] = None,
) -> Iterator[torch.Tensor]:
    """Float32 mono windows ``[window_samples]`` of the whole recording at ``sample_rate``.

    Windows start every ``hop_samples`` (default: ``window_samples``, no
    overlap); the last is zero-padded, and :func:`num_windows` gives their
    count. The file is decoded, mixed and resampled block by block, so memory
    stays bounded (a few MB plus the windows the caller keeps) however long
    the file is. The first window equals ``decode(path, sample_rate,
    window_samples)``.

    The header is checked (:func:`probe`) when this is called; errors found
    while reading (NaN samples, truncation) are raised when reached, after
    the windows before them were yielded.
    """
    window, hop = _check_window(window_samples, hop_samples)
    _check_ratio(probe(path, max_seconds=max_seconds), int(sample_rate))
    return _windows(path, int(sample_rate), window, hop, max_seconds)


def _windows(path: PathLike, sample_rate: int, window: int, hop: int, max_seconds: Optional[float]) -> Iterator[torch.Tensor]:
    with _open(path, max_seconds) as (f, info):
        _check_ratio(info, sample_rate)
        stream = _StreamResampler(info.sample_rate, sample_rate)
        windows = _Windower(window, hop)
        for block in _read_blocks(f, info, None, max_seconds):
            for w in windows.push(stream.push(torch.from_numpy(to_mono(block).copy()))):
                _require_finite(w, info.path)
                yield w
        for w in windows.finish(stream.flush()):
            _require_finite(w, info.path)
            yield w


def _check_window(window_samples: int, hop_samples: Optional[int]) -> tuple[int, int]:
    window = int(window_samples)
    hop = window if hop_samples is None else int(hop_samples)
    if window <= 0 or hop <= 0:
        raise ValueError(f"window ({window}) and hop ({hop}) must be positive numbers of samples")
    return window, hop


def _require_finite(wave: torch.Tensor, path: str) -> None:
    # Finite input can still overflow when mixed or filtered (float files with
    # samples near 3e38); never hand infinities to the model.
    if not bool(torch.isfinite(wave).all()):
        raise DataError(f"audio file {path} has samples too large to process (overflow): re-export it normalised")


# --------------------------------------------------------------------------
# Resampling


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample along the last dimension (no-op when the rates match).

    Output length is ``ceil(len * new / orig)`` for the (possibly
    approximated, see :func:`_ratio`) rate ratio.
    """
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate == new_rate:
        return waveform
    o, n = _ratio(orig_rate, new_rate)
    if o == n:
        return waveform
    return _resampler(o, n)(waveform)


@functools.lru_cache(maxsize=32)
def _ratio(orig_rate: int, new_rate: int) -> tuple[int, int]:
    """``orig_rate / new_rate`` as a ratio of small integers that torchaudio can use.

    torchaudio's kernel has about ``new * (orig + 2 * width)`` entries for the
    reduced ratio, so coprime rates (a 7919 Hz file to 16 kHz) take seconds
    and gigabytes, and 191999 Hz to 16 kHz exhausts memory. Such ratios are
    replaced by their closest fraction with a kernel under ``_MAX_KERNEL``;
    the time scale changes by under ``_MAX_RATIO_ERROR`` (inaudible).
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise DataError(f"cannot resample from {orig_rate} Hz to {new_rate} Hz: sample rates must be > 0")
    exact = Fraction(orig_rate, new_rate)
    o, n = exact.numerator, exact.denominator
    if _kernel_size(o, n) <= _MAX_KERNEL:
        return o, n
    bound = n
    while bound > 1:
        bound //= 2
        approx = exact.limit_denominator(bound)
        o, n = approx.numerator, approx.denominator
        if o >= 1 and abs(approx / exact - 1) <= _MAX_RATIO_ERROR and _kernel_size(o, n) <= _MAX_KERNEL:
            return o, n
    raise DataError(f"cannot resample from {orig_rate} Hz to {new_rate} Hz: the ratio of the rates is too extreme")


def _check_ratio(info: AudioInfo, sample_rate: int) -> None:
    """:func:`_ratio` for this file, its errors naming the file."""
    try:
        _ratio(info.sample_rate, sample_rate)
    except DataError as exc:
        raise DataError(f"audio file {info.path}: {exc}") from None


def _kernel_width(o: int, n: int) -> int:
    """torchaudio's filter half-width in input samples (lowpass_filter_width=6, rolloff=0.99)."""
    return math.ceil(6 * o / (min(o, n) * 0.99))


def _kernel_size(o: int, n: int) -> int:
    return n * (2 * _kernel_width(o, n) + o)


@functools.lru_cache(maxsize=16)
def _resampler(o: int, n: int) -> AT.Resample:
    """A resampler with its kernel built once (the functional API rebuilds it every call)."""
    return AT.Resample(o, n, dtype=torch.float32)


def _context(orig_rate: int, new_rate: int) -> int:
    """Input samples past a cut that the filter reads: a multiple of the reduced ``orig``."""
    o, n = _ratio(orig_rate, new_rate)
    if o == n:
        return 0
    return -(-(_kernel_width(o, n) + o) // o) * o


class _StreamResampler:
    """Resample a signal pushed in pieces, giving exactly what resampling it whole gives.

    Each chunk is resampled with ``margin`` real input samples of context on
    both sides (zeros before the start, like torchaudio's own padding) and the
    outputs of the context are dropped. Chunk starts are multiples of the
    reduced input rate ``o``, so output samples line up with the whole-signal
    resampling.
    """

    def __init__(self, orig_rate: int, new_rate: int) -> None:
        self.o, self.n = _ratio(int(orig_rate), int(new_rate))
        self.same = self.o == self.n
        if self.same:
            return
        self.margin = _context(orig_rate, new_rate)
        # Bounded in both input and output samples per call (1 Hz -> 192 kHz
        # multiplies the length by 192000), and at least the margin.
        units = max(1, _BLOCK_FRAMES // max(self.o, self.n), 2 * self.margin // self.o)
        self.chunk = units * self.o
        self.buf = torch.zeros(self.margin)  # input from (next chunk start - margin)
        self.pending = 0  # input samples pushed but not yet resampled

    def push(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            return x
        self.buf = torch.cat([self.buf, x])
        self.pending += x.shape[0]
        outs = []
        while self.pending >= self.chunk + self.margin:
            segment = self.buf[: 2 * self.margin + self.chunk]
            outs.append(self._middle(resample(segment, self.o, self.n), self.chunk))
            self.buf = self.buf[self.chunk :]
            self.pending -= self.chunk
        return torch.cat(outs) if outs else x.new_zeros(0)

    def flush(self) -> torch.Tensor:
        if self.same or self.pending == 0:
            return torch.zeros(0)
        out = resample(self.buf, self.o, self.n)  # zeros after the end, as in a whole-signal resample
        return self._middle(out, self.pending)

    def _middle(self, out: torch.Tensor, inputs: int) -> torch.Tensor:
        lo = self.margin // self.o * self.n
        return out[lo : lo + -(-inputs * self.n // self.o)]


class _Windower:
    """Cut a pushed stream into windows (see :func:`num_windows` for which)."""

    def __init__(self, window: int, hop: int) -> None:
        self.window, self.hop = window, hop
        self.buf = torch.zeros(0)
        self.skip = 0  # samples still to drop before the next window (hop > window)
        self.total = 0
        self.emitted = 0

    def push(self, y: torch.Tensor) -> Iterator[torch.Tensor]:
        self.total += y.shape[0]
        if self.skip:
            dropped = min(self.skip, y.shape[0])
            y, self.skip = y[dropped:], self.skip - dropped
        self.buf = torch.cat([self.buf, y]) if self.buf.numel() else y
        while self.buf.shape[0] >= self.window:
            yield self.buf[: self.window].clone()
            self._advance()

    def finish(self, y: torch.Tensor) -> Iterator[torch.Tensor]:
        yield from self.push(y)
        while self.emitted < num_windows(self.total, self.window, self.hop):
            yield fit_length(self.buf[: self.window], self.window).clone()
            self._advance()

    def _advance(self) -> None:
        self.emitted += 1
        if self.hop <= self.buf.shape[0]:
            self.buf = self.buf[self.hop :]
        else:
            self.skip, self.buf = self.hop - self.buf.shape[0], self.buf[:0]


def fit_length(waveform: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Trim the end or pad zeros at the end so that the last dim is ``num_samples``."""
    n = waveform.shape[-1]
    if n == num_samples:
        return waveform
    if n > num_samples:
        return waveform[..., :num_samples]
    return torch.nn.functional.pad(waveform, (0, num_samples - n))


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = re.sub(r"^Error opening '.*?':\s*", "", text)
    text = re.sub(r"^Error\s*:\s*", "", text)
    # libsndfile says this for some corrupt streams; the file was checked to be
    # a regular file before libsndfile opened it, so blaming a pipe misleads.
    text = text.replace("File does not exist or is not a regular file (possibly a pipe?)", "corrupt or unrecognised audio data")
    return " ".join(text.split()).rstrip(".")


__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioInfo",
    "DEFAULT_MAX_SECONDS",
    "decode",
    "fit_length",
    "is_audio_file",
    "iter_windows",
    "num_samples_for",
    "num_windows",
    "probe",
    "read_audio",
    "resample",
    "to_mono",
]
