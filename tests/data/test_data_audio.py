"""Decoding single files: formats, bit depths, rates, channels, broken files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from esc_sweep.data import audio
from esc_sweep.errors import DataError

TARGET_SR = 16000


def tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: torch.Tensor, sr: int) -> float:
    spec = torch.fft.rfft(wave.double()).abs()
    return float(spec.argmax()) * sr / wave.shape[-1]


def rms(x) -> float:
    x = torch.as_tensor(x, dtype=torch.float64)
    return float(x.pow(2).mean().sqrt())


@pytest.mark.parametrize(
    "ext, subtype",
    [
        ("wav", "PCM_U8"),  # 8-bit WAV is unsigned
        ("wav", "PCM_16"),
        ("wav", "PCM_24"),
        ("wav", "PCM_32"),
        ("wav", "FLOAT"),
        ("wav", "DOUBLE"),
        ("flac", "PCM_S8"),
        ("flac", "PCM_16"),
        ("flac", "PCM_24"),
        ("ogg", "VORBIS"),
        ("aiff", "PCM_16"),
    ],
)
def test_formats_and_bit_depths_decode_to_the_same_tone(tmp_path, ext, subtype):
    path = tmp_path / f"tone_{subtype}.{ext}"
    sf.write(path, tone(440, TARGET_SR, 1.0), TARGET_SR, subtype=subtype)
    wave = audio.decode(path, TARGET_SR, TARGET_SR)
    assert wave.dtype == torch.float32 and wave.shape == (TARGET_SR,)
    assert peak_hz(wave, TARGET_SR) == pytest.approx(440, abs=1.5)
    # Full-scale mapping is right for every bit depth: amplitude 0.5 -> RMS 0.354.
    assert rms(wave) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    if subtype in ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE") and ext != "ogg":
        ref = torch.from_numpy(tone(440, TARGET_SR, 1.0))
        assert torch.allclose(wave, ref, atol=1e-4)


@pytest.mark.parametrize("rate", [44100, 22050, 8000, 48000])
def test_any_input_rate_is_resampled_to_target_length_and_keeps_its_pitch(tmp_path, rate):
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, tone(440, rate, 2.0), rate, subtype="PCM_16")
    wave = audio.decode(path, TARGET_SR, 2 * TARGET_SR)
    assert wave.shape == (2 * TARGET_SR,)
    assert peak_hz(wave, TARGET_SR) == pytest.approx(440, abs=1.0)
    # Energy is preserved (apart from the filter's edge effects).
    assert rms(wave[1000:-1000]) == pytest.approx(0.5 / np.sqrt(2), rel=0.03)


def test_resampling_to_a_lower_rate_and_other_targets(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, tone(440, 44100, 1.0), 44100, subtype="PCM_16")
    for target in (8000, 22050, 32000):
        wave = audio.decode(path, target, target)
        assert wave.shape == (target,)
        assert peak_hz(wave, target) == pytest.approx(440, abs=1.5)


def test_downsampling_removes_content_above_the_new_nyquist(tmp_path):
    path = tmp_path / "high.wav"
    sf.write(path, tone(6000, 44100, 1.0), 44100, subtype="FLOAT")
    wave = audio.decode(path, 8000, 8000)  # Nyquist 4 kHz: a 6 kHz tone must not alias to 2 kHz
    assert rms(wave) < 0.01


def test_stereo_is_averaged_to_mono(tmp_path):
    left = tone(440, TARGET_SR, 1.0, amp=0.8)
    right = np.zeros_like(left)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), TARGET_SR, subtype="FLOAT")
    wave = audio.decode(path, TARGET_SR, TARGET_SR)
    assert wave.shape == (TARGET_SR,)
    assert torch.allclose(wave, torch.from_numpy(left) / 2, atol=1e-6)

    # Anti-phase channels cancel out.
    path2 = tmp_path / "antiphase.flac"
    sf.write(path2, np.stack([left, -left], axis=1), 44100)
    assert rms(audio.decode(path2, TARGET_SR, TARGET_SR)) < 1e-3


def test_short_clips_are_zero_padded_and_long_ones_trimmed(tmp_path):
    short = tmp_path / "short.wav"
    sf.write(short, tone(440, TARGET_SR, 0.25), TARGET_SR, subtype="FLOAT")
    wave = audio.decode(short, TARGET_SR, TARGET_SR)
    assert wave.shape == (TARGET_SR,)
    assert torch.allclose(wave[:4000], torch.from_numpy(tone(440, TARGET_SR, 0.25)))
    assert torch.count_nonzero(wave[4000:]) == 0

    long = tmp_path / "long.wav"
    data = tone(440, TARGET_SR, 3.0) * np.linspace(0, 1, 3 * TARGET_SR, dtype=np.float32)
    sf.write(long, data, TARGET_SR, subtype="FLOAT")
    wave = audio.decode(long, TARGET_SR, TARGET_SR)
    assert wave.shape == (TARGET_SR,)
    assert torch.equal(wave, torch.from_numpy(data[:TARGET_SR]))  # keeps the start


def test_all_zero_audio_is_allowed(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(8000, dtype=np.float32), 8000)
    wave = audio.decode(path, TARGET_SR, TARGET_SR)
    assert wave.shape == (TARGET_SR,) and torch.count_nonzero(wave) == 0


def test_empty_file_raises_data_error_naming_it(tmp_path):
    path = tmp_path / "empty_clip.wav"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty_clip\.wav.*empty \(0 bytes\)"):
        audio.decode(path, TARGET_SR, TARGET_SR)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_truncated_file_raises_data_error_naming_it(tmp_path, ext):
    good = tmp_path / f"good.{ext}"
    sf.write(good, tone(440, TARGET_SR, 1.0), TARGET_SR)
    data = good.read_bytes()
    bad = tmp_path / f"cut_clip.{ext}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        audio.decode(bad, TARGET_SR, TARGET_SR)
    msg = str(info.value)
    assert f"cut_clip.{ext}" in msg and "\n" not in msg
    if ext == "wav":
        assert "truncated" in msg


def test_text_file_named_wav_raises_data_error_naming_it(tmp_path):
    path = tmp_path / "not_audio.wav"
    path.write_text("this is a text file, not a recording\n" * 10)
    with pytest.raises(DataError, match=r"cannot decode audio file .*not_audio\.wav"):
        audio.decode(path, TARGET_SR, TARGET_SR)


def test_header_only_wav_has_no_samples(tmp_path):
    path = tmp_path / "header_only.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), TARGET_SR)
    with pytest.raises(DataError, match=r"header_only\.wav contains no audio samples"):
        audio.decode(path, TARGET_SR, TARGET_SR)


def test_nan_samples_are_rejected(tmp_path):
    data = tone(440, TARGET_SR, 0.5)
    data[100] = np.nan
    path = tmp_path / "nan_clip.wav"
    sf.write(path, data, TARGET_SR, subtype="FLOAT")
    with pytest.raises(DataError, match=r"nan_clip\.wav contains NaN"):
        audio.decode(path, TARGET_SR, TARGET_SR)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match=r"ghost\.wav"):
        audio.decode(tmp_path / "ghost.wav", TARGET_SR, TARGET_SR)


def test_audio_extension_filter():
    assert audio.is_audio_file("a/b/clip.WAV")
    assert audio.is_audio_file("clip.flac") and audio.is_audio_file("clip.ogg")
    assert not audio.is_audio_file("notes.txt")
    assert not audio.is_audio_file(".hidden.wav")
    assert audio.num_samples_for(5.0, 16000) == 80000
    assert audio.num_samples_for(1.0, 22050) == 22050
