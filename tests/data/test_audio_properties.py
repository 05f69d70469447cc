"""Generated audio files against the decoders: a clip, or one line naming the file.

Hypothesis writes files of every kind a user (or an attacker) can hand the
loader: random bytes, valid files truncated at random offsets, valid files in
several formats and subtypes (1-4 channels, 1 Hz..192 kHz, 0 samples to
hours, NaN/inf/huge samples in float files), and files whose header claims
hours of audio. Every public decoder in ``esc_sweep.data.audio`` must then
either return a finite mono float32 result of the expected length at the
target rate, or raise a one-line ``DataError`` naming the file; never another
exception, never a hang (each example runs under a time limit).

The outcome counts (loaded / refused by reason, per decoder) are printed at
the end of the module's run.
"""

from __future__ import annotations

import io
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from esc_sweep.data import audio
from esc_sweep.errors import DataError
from tests.data.support import Tally, reason_of, time_limit

SR = 16000  # target rate
CLIP = 8000  # decode(): 0.5 s clips
WINDOW, HOP = 4000, 2500  # iter_windows(): overlapping windows
LIMIT_S = 30.0  # max_seconds for probe() and iter_windows()
PER_EXAMPLE_S = 20

# (extension, soundfile format, subtype)
FORMATS = [
    ("wav", "WAV", "PCM_16"),
    ("wav", "WAV", "PCM_U8"),
    ("wav", "WAV", "PCM_24"),
    ("wav", "WAV", "FLOAT"),
    ("flac", "FLAC", "PCM_16"),
    ("flac", "FLAC", "PCM_S8"),
    ("aiff", "AIFF", "PCM_16"),
]
if "VORBIS" in sf.available_subtypes("OGG"):
    FORMATS.append(("ogg", "OGG", "VORBIS"))
FLOAT_SUBTYPES = {"FLOAT"}

COMMON_RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000, 192000]
rates = st.one_of(st.sampled_from(COMMON_RATES), st.integers(1, 192_000), st.integers(1, 40))

TALLY = Tally("generated audio files")


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    TALLY.report(request.config)


@dataclass
class Case:
    """One generated input; ``note`` says how it was made (shown for a failing example)."""

    kind: str
    ext: str
    data: bytes
    note: str

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        return f"Case({self.kind}, .{self.ext}, {len(self.data)} bytes, {self.note})"


# --------------------------------------------------------------------------
# Strategies


@st.composite
def signals(draw, subtype: str) -> np.ndarray:
    """float32 ``[frames, channels]``: silence, noise or a tone, with NaN/inf/huge values in float files."""
    channels = draw(st.integers(1, 4))
    frames = draw(st.one_of(st.integers(0, 8), st.integers(0, 40_000), st.just(100_000)))
    shape_kind = draw(st.sampled_from(["silence", "noise", "tone"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if shape_kind == "silence":
        x = np.zeros((frames, channels), np.float32)
    elif shape_kind == "noise":
        x = rng.uniform(-1, 1, (frames, channels)).astype(np.float32)
    else:
        t = np.arange(frames, dtype=np.float64)[:, None]
        x = (0.5 * np.sin(2 * np.pi * rng.uniform(0.001, 0.45) * t)).repeat(channels, 1).astype(np.float32)
    if subtype in FLOAT_SUBTYPES and frames and draw(st.booleans()):
        special = draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e20]))
        where = draw(st.lists(st.integers(0, frames * channels - 1), min_size=1, max_size=5))
        x.reshape(-1)[where] = special
    return x


def encode(x: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    try:
        sf.write(buf, x, rate, format=fmt, subtype=subtype)
    except (sf.SoundFileError, RuntimeError, ValueError):
        assume(False)  # a combination the encoder itself cannot write (not the loader's business)
    return buf.getvalue()


@st.composite
def valid_files(draw) -> Case:
    ext, fmt, subtype = draw(st.sampled_from(FORMATS))
    rate = draw(rates)
    x = draw(signals(subtype))
    return Case("valid", ext, encode(x, rate, fmt, subtype), f"{fmt}/{subtype} {rate} Hz {x.shape[1]} ch {x.shape[0]} frames")


@st.composite
def truncated_files(draw) -> Case:
    case = draw(valid_files())
    cut = draw(st.integers(0, max(0, len(case.data) - 1)))
    return Case("truncated", case.ext, case.data[:cut], f"{case.note}, cut at byte {cut} of {len(case.data)}")


@st.composite
def random_bytes(draw) -> Case:
    ext = draw(st.sampled_from(sorted({e for e, _, _ in FORMATS} | {"mp3", "au"})))
    prefix = draw(st.sampled_from([b"", b"RIFF", b"RIFF\xff\xff\xff\x7fWAVEfmt ", b"fLaC", b"OggS", b"FORM"]))
    return Case("random-bytes", ext, prefix + draw(st.binary(max_size=4096)), f"prefix {prefix!r}")


@st.composite
def claims_hours(draw) -> Case:
    """A short valid WAV or FLAC whose header promises hours: must be refused or cheap, never slow."""
    ext, fmt = draw(st.sampled_from([("flac", "FLAC"), ("wav", "WAV")]))
    rate = draw(st.sampled_from([8000, 44100, 48000]))
    channels = draw(st.integers(1, 2))
    frames = draw(st.integers(1, 20_000))
    data = bytearray(encode(np.zeros((frames, channels), np.float32), rate, fmt, "PCM_16"))
    hours = draw(st.integers(1, 24))
    claimed = hours * 3600 * rate
    if fmt == "FLAC":
        # STREAMINFO starts at byte 8; its total-samples field is the low 36 bits of bytes 18..25.
        word = int.from_bytes(data[18:26], "big")
        word = (word & ~((1 << 36) - 1)) | (claimed & ((1 << 36) - 1))
        data[18:26] = word.to_bytes(8, "big")
    else:
        at = data.find(b"data")
        assume(at >= 0)
        data[at + 4 : at + 8] = struct.pack("<I", min(claimed * 2 * channels, 0xFFFFFFFF))
    return Case("claims-hours", ext, bytes(data), f"{fmt} {rate} Hz {frames} real frames claiming {hours} h")


@st.composite
def special_files(draw) -> Case:
    """Not a regular file at all: opening must be refused at once, never block."""
    what = draw(st.sampled_from(["fifo", "folder", "link-to-fifo", "broken-link"]))
    return Case(what, draw(st.sampled_from(["wav", "flac"])), b"", "made by make_special")


def make_special(kind: str, path: Path) -> None:
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link-to-fifo":
        os.mkfifo(path.with_suffix(".pipe"))
        path.symlink_to(path.with_suffix(".pipe").name)
    else:
        path.symlink_to("nowhere.wav")




# --------------------------------------------------------------------------
# The property


_current_kind = ["?"]


def refused(api: str, path: Path, exc: DataError) -> None:
    message = str(exc)
    assert "\n" not in message, f"{api}: multi-line error {message!r}"
    assert path.name in message, f"{api}: error does not name the file: {message!r}"
    _count(api, f"refused/{reason_of(message)}")


def loaded(api: str) -> None:
    _count(api, "loaded")


def _count(api: str, outcome: str) -> None:
    TALLY.add(f"{api}: {outcome}")
    if api == "decode":
        TALLY.add(f"decode by kind: {_current_kind[0]}: {outcome}")


def expected_length(frames: int, rate: int) -> int:
    o, n = audio._ratio(rate, SR)
    return -(-frames * n // o)


def run_case(case: Case) -> None:
    TALLY.case()
    TALLY.add(f"kind: {case.kind}")
    _current_kind[0] = case.kind
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clip.{case.ext}"
        if case.note == "made by make_special":
            make_special(case.kind, path)
        else:
            path.write_bytes(case.data)
        with time_limit(PER_EXAMPLE_S, f"decoding {case!r}"):
            check_all(path)


def examples(n: int):
    return settings(
        max_examples=n,
        deadline=None,  # hangs are caught by time_limit; slow CI machines must not flake
        database=None,  # no .hypothesis/ folder in the repository
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@examples(150)
@given(case=valid_files())
def test_valid_files_of_any_format_rate_channels_and_length(case: Case):
    run_case(case)


@examples(60)
@given(case=truncated_files())
def test_files_truncated_at_any_byte(case: Case):
    run_case(case)


@examples(60)
@given(case=random_bytes())
def test_random_bytes_named_like_audio(case: Case):
    run_case(case)


@examples(30)
@given(case=claims_hours())
def test_headers_claiming_hours(case: Case):
    run_case(case)


@examples(12)
@given(case=special_files())
def test_fifos_folders_and_links_named_like_audio(case: Case):
    run_case(case)


def check_all(path: Path) -> None:
    info = None
    try:
        info = audio.probe(path, max_seconds=LIMIT_S)
        assert info.sample_rate > 0 and info.channels >= 1
        assert info.frames is None or 0 < info.frames <= LIMIT_S * info.sample_rate
        loaded("probe")
    except DataError as exc:
        refused("probe", path, exc)

    clip = None
    try:
        clip = audio.decode(path, SR, CLIP)
        assert clip.dtype == torch.float32 and clip.shape == (CLIP,)
        assert torch.isfinite(clip).all()
        loaded("decode")
    except DataError as exc:
        refused("decode", path, exc)

    try:
        windows = list(audio.iter_windows(path, SR, WINDOW, HOP, max_seconds=LIMIT_S))
        assert windows, "no window for a file that loaded"
        for w in windows:
            assert w.dtype == torch.float32 and w.shape == (WINDOW,) and torch.isfinite(w).all()
        assert info is not None, "iter_windows read a file that probe refused"
        if info.frames is not None:
            assert len(windows) == audio.num_windows(expected_length(info.frames, info.sample_rate), WINDOW, HOP)
        if clip is not None:
            # Streaming resampling gives what decoding the start gives.
            first = audio.decode(path, SR, WINDOW)
            assert torch.allclose(windows[0], first, atol=1e-5)
        loaded("iter_windows")
    except DataError as exc:
        refused("iter_windows", path, exc)

    try:
        data, rate = audio.read_audio(path)
        assert data.dtype == np.float32 and data.ndim == 2 and data.shape[0] >= 1
        assert np.isfinite(data).all() and rate > 0
        assert data.shape[0] <= audio.DEFAULT_MAX_SECONDS * rate
        if info is not None and info.frames is not None:
            assert data.shape == (info.frames, info.channels)
        loaded("read_audio")
    except DataError as exc:
        refused("read_audio", path, exc)


# --------------------------------------------------------------------------
# Fixed examples of each kind, so the classes of input above never go untested


def _write(tmp_path: Path, name: str, x: np.ndarray, rate: int, **kw) -> Path:
    path = tmp_path / name
    sf.write(path, x, rate, **kw)
    return path


def test_an_hour_of_flac_silence_is_refused_from_its_header_and_decoded_cheaply(tmp_path):
    # Real hours at 8 Hz: a tiny file, yet 3600 s of audio.
    path = _write(tmp_path, "hour.flac", np.zeros((8 * 3600, 2), np.float32), 8, subtype="PCM_16")
    info = audio.probe(path)
    assert info.seconds == pytest.approx(3600.0) and info.channels == 2
    with pytest.raises(DataError, match=r"hour\.flac lasts 3600\.0 s, over the 600 s limit"):
        audio.read_audio(path)
    with pytest.raises(DataError, match=r"over the 60 s limit"):
        audio.iter_windows(path, SR, WINDOW, max_seconds=60)
    with time_limit(10, "decoding the start of an hour"):
        clip = audio.decode(path, SR, CLIP)
    assert clip.shape == (CLIP,) and torch.count_nonzero(clip) == 0


def test_coprime_and_extreme_rates_resample_quickly(tmp_path):
    for rate in (7919, 191999, 1, 3, 96001):
        x = np.random.default_rng(rate).uniform(-0.5, 0.5, (int(rate * 0.3) + 3, 1)).astype(np.float32)
        path = _write(tmp_path, f"r{rate}.wav", x, rate, subtype="FLOAT")
        with time_limit(10, f"resampling {rate} Hz"):
            clip = audio.decode(path, SR, CLIP)
            windows = list(audio.iter_windows(path, SR, WINDOW))
        assert clip.shape == (CLIP,) and torch.isfinite(clip).all()
        assert len(windows) == audio.num_windows(expected_length(x.shape[0], rate), WINDOW)
        o, n = audio._ratio(rate, SR)
        assert abs((o / n) / (rate / SR) - 1) <= 1e-4  # approximated ratios keep the pitch


def test_loud_float_samples_never_come_back_infinite(tmp_path):
    x = np.full((SR, 2), 3e38, np.float32)
    path = _write(tmp_path, "loud.wav", x, SR, subtype="FLOAT")
    try:
        clip = audio.decode(path, SR, CLIP)
    except DataError as exc:
        assert "loud.wav" in str(exc)
    else:
        assert torch.isfinite(clip).all()
    x = np.full((SR, 2), 3e38, np.float32)
    path = _write(tmp_path, "loud44.wav", x, 44100, subtype="FLOAT")
    with pytest.raises(DataError, match=r"loud44\.wav has samples too large to process"):
        audio.decode(path, SR, CLIP)  # the resampler's filter overshoots past float32


def test_num_windows_matches_the_windows_yielded(tmp_path):
    for frames, hop in ((1, 4000), (4000, 4000), (4001, 4000), (12000, 1000), (12000, 6000), (9000, 3999)):
        x = np.linspace(-0.5, 0.5, frames, dtype=np.float32)
        path = _write(tmp_path, f"w{frames}_{hop}.wav", x, SR, subtype="FLOAT")
        windows = list(audio.iter_windows(path, SR, 4000, hop))
        assert len(windows) == audio.num_windows(frames, 4000, hop)
        # Window k holds samples k*hop ..., zero-padded at the end.
        for k, w in enumerate(windows):
            part = torch.from_numpy(x[k * hop : k * hop + 4000])
            assert torch.equal(w[: part.shape[0]], part) and torch.count_nonzero(w[part.shape[0] :]) == 0
    assert audio.num_windows(10, 3, 5) == 2  # hop > window: windows start inside the signal only
    assert math.ceil(80001 / 80000) == audio.num_windows(80001, 80000)
