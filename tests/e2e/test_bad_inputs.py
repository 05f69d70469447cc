"""The bad-input corpus: every input a user can get wrong, through the real CLI.

Each case builds a small ESC-50-layout root (2 classes x 5 folds of 0.25 s
tones), breaks one thing, runs ``python -m esc_sweep`` in a fresh folder and
checks what the user sees: exit status 2, one message naming the file or key
at fault, and no traceback. The opposite corpus (rates, channels, bit depths,
containers that must load) runs one CLI cross-validation over a root whose ten
clips are all encoded differently.

docs/reliability.md lists every case with the message it prints; keep the two
in step.
"""

from __future__ import annotations

import csv
import ctypes
import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import run_cli

SR = 16000
CLIP_SECONDS = 0.25
CLASSES = ((0, "dog"), (1, "rooster"))
HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]

# Small and quick: 1 epoch of a 4-channel CNN on 16-band spectrograms.
TINY = [
    "tracking.enabled=false",
    "trainer.progress=false",
    f"dataset.clip_seconds={CLIP_SECONDS}",
    "dataset.download=false",
    "features.n_fft=256",
    "features.n_mels=16",
    "augmentation=none",
    "model.width=4",
    "trainer.epochs=1",
    "trainer.batch_size=4",
]


# --------------------------------------------------------------------------
# A small ESC-50 root


def tone(freq: float, sr: int = SR, seconds: float = CLIP_SECONDS) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def stem_of(fold: int, target: int) -> str:
    # ESC-50 naming: {fold}-{source recording}-{take}-{target}
    return f"{fold}-{100 + 10 * fold + target}-A-{target}"


def write_csv(root: Path, rows: list[list], header: list[str] = HEADER) -> None:
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def read_rows(root: Path) -> list[list[str]]:
    with open(root / "meta" / "esc50.csv", newline="") as fh:
        return list(csv.reader(fh))[1:]


def make_root(root: Path) -> Path:
    """meta/esc50.csv + audio/: 2 classes x 5 folds, one 16-bit 16 kHz wav each."""
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rows = []
    for fold in range(1, 6):
        for target, name in CLASSES:
            stem = stem_of(fold, target)
            sf.write(root / "audio" / f"{stem}.wav", tone(440 * (target + 1)), SR, subtype="PCM_16")
            rows.append([f"{stem}.wav", fold, target, name, "True", stem.split("-")[1], "A"])
    write_csv(root, rows)
    return root


def clip(root: Path, fold: int = 3, target: int = 1) -> Path:
    return root / "audio" / f"{stem_of(fold, target)}.wav"


def zip_of(root: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """The root as a zip wrapped in ESC-50-master/, like the upstream archive."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"ESC-50-master/{path.relative_to(root).as_posix()}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


# --------------------------------------------------------------------------
# A local HTTP server for the download cases


@pytest.fixture(scope="module")
def http_dir(tmp_path_factory):
    """(folder, base URL): files put in the folder are served on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("www")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# --------------------------------------------------------------------------
# Running as root: drop the capabilities that bypass file permissions


def _drop_file_permission_override() -> None:
    """preexec_fn: remove CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH from the bounding set.

    Root keeps its uid but, after exec, loses the capabilities that let it read
    a chmod 000 folder, so permissions apply to it like to anyone else.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _can_drop_capabilities() -> bool:
    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_drop_file_permission_override)
    return probe.returncode == 0


# --------------------------------------------------------------------------
# The corpus


@dataclass
class Env:
    """What a case may change: the dataset root, the working folder, the server."""

    root: Path
    tmp: Path
    www: Path
    url: str
    # filled in by the case
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    popen: dict = field(default_factory=dict)
    restore: list[Path] = field(default_factory=list)  # chmod 000 paths to make deletable again


@dataclass
class Case:
    id: str
    setup: Callable[[Env], None]
    # Fragments the output must contain; {root} and {tmp} are filled in.
    expect: list[str]
    returncode: int = 2
    # Extra checks on the files left behind.
    after: Callable[[Env], None] | None = None
    # Output that must not appear (e.g. proof that smuggled code ran).
    forbid: list[str] = field(default_factory=list)
    # A known gap, fixed outside this file: the case is a strict xfail until then.
    xfail: str | None = None


def _truncate(e: Env) -> None:
    data = clip(e.root).read_bytes()
    clip(e.root).write_bytes(data[: len(data) // 2])


def _empty(e: Env) -> None:
    clip(e.root).write_bytes(b"")


def _text_as_wav(e: Env) -> None:
    clip(e.root).write_text("field recording notes: dog barking at 7am\n" * 20)


def _header_only(e: Env) -> None:
    sf.write(clip(e.root), np.zeros(0, dtype=np.float32), SR)


def _nan_samples(e: Env) -> None:
    data = tone(440)
    data[100] = np.nan
    sf.write(clip(e.root), data, SR, subtype="FLOAT")


def _missing_column(e: Env) -> None:
    rows = read_rows(e.root)
    keep = [i for i, h in enumerate(HEADER) if h != "src_file"]
    write_csv(e.root, [[r[i] for i in keep] for r in rows], [HEADER[i] for i in keep])


def _duplicate_row(e: Env) -> None:
    rows = read_rows(e.root)
    write_csv(e.root, rows + [rows[4]])


def _unknown_class(e: Env) -> None:
    e.args.append("dataset.classes=[dog,unicorn]")


def _two_names_for_one_target(e: Env) -> None:
    rows = read_rows(e.root)
    rows[3][3] = "puppy"  # target 1 is "rooster" everywhere else
    write_csv(e.root, rows)


def _csv_fold(*bad: str) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        rows = read_rows(e.root)
        for row, fold in zip(rows, bad):
            row[1] = fold
        write_csv(e.root, rows)

    return setup


def _csv_not_utf8(e: Env) -> None:
    (e.root / "meta" / "esc50.csv").write_bytes(bytes(range(128, 256)) * 8)


def _missing_file(e: Env) -> None:
    clip(e.root).unlink()


def _missing_root(e: Env) -> None:
    e.args.append(f"dataset.root={e.tmp}/no/such/esc50")


def _root_without_meta(e: Env) -> None:
    e.args.append(f"dataset.root={e.root / 'audio'}")


def _no_root_anywhere(e: Env) -> None:
    e.args.append("dataset.root=null")  # neither dataset.root nor ESC50_ROOT, download off


def _unreadable(which: Callable[[Env], Path]) -> Callable[[Env], None]:
    """chmod 000 a path; root runs the CLI without its permission-override capabilities."""

    def setup(e: Env) -> None:
        if os.geteuid() == 0 and not _can_drop_capabilities():
            pytest.skip("running as root without CAP_SETPCAP: chmod 000 does not stop root from reading")
        path = which(e)
        path.chmod(0)
        e.restore.append(path)
        if os.geteuid() == 0:
            e.popen["preexec_fn"] = _drop_file_permission_override

    return setup


def _root_with_brackets(e: Env) -> None:
    bracketed = e.tmp / "take [dog] 2"
    e.root.rename(bracketed)
    e.root = bracketed
    shutil.rmtree(bracketed / "meta")


def _override(*values: str) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        e.args.extend(values)

    return setup


def _download(archive: Callable[[Env], bytes] | None, sha256: Callable[[bytes], str] | None = None):
    """Serve ``archive`` (None: nothing) and point the run at it: no dataset.root, no ESC50_ROOT."""

    def setup(e: Env) -> None:
        name = f"{e.tmp.name}.zip"
        data = archive(e) if archive is not None else b""
        if archive is not None:
            (e.www / name).write_bytes(data)
        e.args.extend(["dataset.root=null", "dataset.download=true", f"dataset.download_dir={e.tmp}/downloads",
                       f"dataset.url={e.url}/{name}"])
        if sha256 is not None:
            e.args.append(f"dataset.archive_sha256={sha256(data)}")

    return setup


def _wrong_sha(data: bytes) -> str:
    return hashlib.sha256(data + b"x").hexdigest()


def _nothing_downloaded(e: Env) -> None:
    assert list((e.tmp / "downloads").iterdir()) == []


def _nothing_extracted(e: Env) -> None:
    assert not list(e.tmp.rglob("escaped.txt"))
    assert not [p for p in (e.tmp / "downloads").iterdir() if p.is_dir()]  # no extracted or staging folder


def _traversal_zip(e: Env) -> bytes:
    return zip_of(e.root, {"ESC-50-master/../../escaped.txt": b"written outside the download folder"})


CASES = [
    # audio files
    Case("truncated_wav", _truncate, ["audio file {root}/audio/3-131-A-1.wav is truncated"]),
    Case("empty_wav", _empty, ["audio file {root}/audio/3-131-A-1.wav is empty (0 bytes)"]),
    Case("text_file_named_wav", _text_as_wav, ["cannot decode audio file {root}/audio/3-131-A-1.wav"]),
    Case("wav_without_samples", _header_only, ["audio file {root}/audio/3-131-A-1.wav contains no audio samples"]),
    Case("wav_with_nan_samples", _nan_samples, ["audio file {root}/audio/3-131-A-1.wav contains NaN"]),
    Case("csv_row_without_file", _missing_file,
         ["1 of 10 clips listed in {root}/meta/esc50.csv have no audio file", "3-131-A-1"]),
    # metadata
    Case("csv_missing_column", _missing_column, ["{root}/meta/esc50.csv lacks column(s) src_file"]),
    Case("csv_duplicate_filename", _duplicate_row,
         ["{root}/meta/esc50.csv lists clip '3-130-A-0' twice (lines 6 and 12)"]),
    Case("csv_folds_0_and_6", _csv_fold("0", "6"),
         ["{root}/meta/esc50.csv: 2 clip(s) have a fold outside 1..5: 1-110-A-0 (fold 0), 1-111-A-1 (fold 6)"]),
    Case("csv_fold_not_a_number", _csv_fold("one"), ["{root}/meta/esc50.csv line 2: fold 'one' is not an integer"]),
    Case("csv_target_with_two_names", _two_names_for_one_target,
         ["{root}/meta/esc50.csv: target 1 is named both 'rooster' and 'puppy'"]),
    Case("csv_not_utf8", _csv_not_utf8, ["{root}/meta/esc50.csv is not a UTF-8 text CSV"]),
    Case("unknown_class_name", _unknown_class, ["dataset.classes names unknown class(es) unicorn"]),
    # dataset root
    Case("missing_root", _missing_root, ["ESC-50 root {tmp}/no/such/esc50 (from dataset.root) does not exist"]),
    Case("root_path_with_brackets", _root_with_brackets, ["ESC-50 root {root} (from dataset.root) has no meta/esc50.csv"]),
    Case("root_without_meta", _root_without_meta, ["ESC-50 root {root}/audio (from dataset.root) has no meta/esc50.csv"]),
    Case("no_root_and_no_download", _no_root_anywhere, ["ESC-50 not found: set dataset.root"]),
    Case("unreadable_root", _unreadable(lambda e: e.root),
         ["cannot read ESC-50 root {root} (from dataset.root): Permission denied"]),
    Case("unreadable_csv", _unreadable(lambda e: e.root / "meta" / "esc50.csv"),
         ["cannot read {root}/meta/esc50.csv: Permission denied"]),
    Case("unreadable_wav", _unreadable(lambda e: clip(e.root)),
         ["cannot read audio file {root}/audio/3-131-A-1.wav: Permission denied"]),
    # config values
    Case("trainer_folds_outside_1_5", _override("trainer.folds=[0,6]"),
         ["trainer.folds=[0, 6]: folds must be between 1 and 5"]),
    Case("negative_lr", _override("optimizer.lr=-0.001"), ["optimizer.lr=-0.001: must be > 0"]),
    Case("nan_lr", _override("optimizer.lr=nan"), ["optimizer.lr=nan: must be > 0"]),
    Case("zero_epochs", _override("trainer.epochs=0"), ["trainer.epochs=0: must be > 0"]),
    Case("zero_batch_size", _override("trainer.batch_size=0"), ["trainer.batch_size=0: must be > 0"]),
    Case("unknown_model", _override("model.name=resnet_9000"), ["model.name='resnet_9000': unknown model"]),
    Case("optimizer_outside_torch", _override("optimizer.name=subprocess.Popen"),
         ["optimizer.name='subprocess.Popen': use adamw, adam, sgd or a class from torch.optim / timm.optim"]),
    # Hydra refuses these while composing (its own message, exit status 1).
    Case("misspelt_key", _override("trainer.epoch=3"),
         ["Could not override 'trainer.epoch'", "Key 'epoch' not in 'TrainerConfig'. Did you mean: 'epochs'?"],
         returncode=1),
    Case("wrong_type", _override("trainer.epochs=ten"),
         ["trainer.epochs", "Value 'ten' of type 'str' could not be converted to Integer"], returncode=1),
    # _target_ smuggled in from the command line
    Case("target_in_model_kwargs", _override("+model.kwargs._target_=os.system"),
         ["model.kwargs._target_='os.system': refused"]),
    Case("target_in_hydra_callbacks",
         _override("+hydra.callbacks.x._target_=builtins.print", "+hydra.callbacks.x._args_=[SMUGGLED_CALL]"),
         ["hydra.callbacks", "refused"], forbid=["SMUGGLED_CALL\n"]),
    Case("target_nested_deeper", _override("+model.kwargs.act_layer._target_=builtins.eval"),
         ["model.kwargs.act_layer._target_='builtins.eval': refused"]),
    # downloads
    Case("download_wrong_checksum", _download(lambda e: zip_of(e.root), _wrong_sha),
         ["checksum mismatch for {tmp}/downloads/esc50-", "the file was deleted"], after=_nothing_downloaded),
    Case("download_bad_sha_value", _download(lambda e: zip_of(e.root), lambda d: "not-a-digest"),
         ["dataset.archive_sha256='not-a-digest' is not a sha256 hex digest"]),
    Case("download_path_traversal", _download(_traversal_zip),
         ["refusing to extract", "entry 'ESC-50-master/../../escaped.txt' would be written outside"],
         after=_nothing_extracted),
    Case("download_not_a_zip", _download(lambda e: b"<html>rate limited</html>" * 40),
         ["is corrupt or not a zip", "delete it and download again"], after=_nothing_downloaded),
    Case("download_http_404", _download(None), ["download of {url}/{tmp.name}.zip failed: HTTP 404"]),
]


def _squash(text: str) -> str:
    # Rich wraps long messages at the terminal width, so compare without whitespace.
    return re.sub(r"\s+", "", text)


def _command(case: Case, tmp: Path, www: Path, url: str) -> tuple[Env, list[str]]:
    e = Env(root=make_root(tmp / "esc50"), tmp=tmp, www=www, url=url)
    case.setup(e)
    (tmp / "work").mkdir()
    args = [*TINY, f"dataset.root='{e.root}'", f"dataset.cache_dir={tmp}/cache",
            f"trainer.checkpoint_dir={tmp}/ck", *e.args]
    return e, args


def _run(e: Env, args: list[str]) -> subprocess.CompletedProcess:
    try:
        # ESC50_ROOT="" counts as unset: only dataset.root (or a download) supplies the data.
        return run_cli(args, cwd=e.tmp / "work", env={"ESC50_ROOT": "", **e.env}, timeout=300, **e.popen)
    finally:
        for path in e.restore:
            path.chmod(0o755)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, http_dir):
    """Each selected case's CLI run, one per CPU core at a time: {case id: (Env, CompletedProcess or skip)}.

    The runs are independent processes, so running them side by side only
    saves wall time. Runs that drop capabilities in a preexec_fn go one by one
    (preexec_fn is not safe next to threads).
    """
    www, url = http_dir
    selected = {item.callspec.id for item in request.session.items
                if item.module is sys.modules[__name__] and hasattr(item, "callspec")}
    prepared, results = {}, {}
    for case in (c for c in CASES if c.id in selected):
        tmp = tmp_path_factory.mktemp(case.id)
        try:
            prepared[case.id] = _command(case, tmp, www, url)
        except pytest.skip.Exception as skip:
            results[case.id] = (None, skip)
    parallel = {cid: ea for cid, ea in prepared.items() if not ea[0].popen}
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        futures = {cid: pool.submit(_run, *ea) for cid, ea in parallel.items()}
    for cid, (e, args) in prepared.items():
        results[cid] = (e, futures[cid].result() if cid in futures else _run(e, args))
    return results


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []) for c in CASES],
)
def test_bad_input_gets_one_clear_message(case, outcomes):
    e, out = outcomes[case.id]
    if isinstance(out, pytest.skip.Exception):
        pytest.skip(str(out))
    text = out.stdout + out.stderr
    if os.environ.get("ESC_SWEEP_SHOW_MESSAGES"):  # used to write docs/reliability.md
        print(f"\n=== {case.id} (exit {out.returncode})\n{text}")
    assert out.returncode == case.returncode, text[-3000:]
    for fragment in case.expect:
        wanted = fragment.format(root=e.root, tmp=e.tmp, url=e.url)
        assert _squash(wanted) in _squash(text), f"{wanted!r} not in:\n{text[-3000:]}"
    assert "Traceback" not in text
    for fragment in case.forbid:
        assert fragment not in text, text[-3000:]
    if case.returncode == 2:
        assert text.lstrip().startswith("error:"), text[-3000:]  # one message, nothing before it
    if case.after is not None:
        case.after(e)


def test_corpus_covers_the_issue_list():
    """The issue's list of bad inputs, each present here (this test fails if one is dropped)."""
    ids = {c.id for c in CASES}
    required = {
        "truncated_wav", "empty_wav", "text_file_named_wav", "csv_missing_column", "csv_duplicate_filename",
        "unknown_class_name", "csv_folds_0_and_6", "trainer_folds_outside_1_5", "missing_root",
        "unreadable_root", "csv_row_without_file", "negative_lr", "zero_epochs", "zero_batch_size",
        "download_wrong_checksum", "download_path_traversal", "target_in_model_kwargs",
    }
    assert required <= ids and len(ids) == len(CASES) >= 15


# --------------------------------------------------------------------------
# Inputs that must load: every clip of one root encoded differently

# (extension, soundfile subtype, sample rate, channels)
ENCODINGS = [
    ("wav", "PCM_16", 44100, 1),
    ("wav", "PCM_16", 22050, 1),
    ("wav", "PCM_16", 8000, 1),
    ("wav", "PCM_16", 48000, 2),
    ("wav", "PCM_U8", 16000, 1),  # 8-bit WAV is unsigned
    ("wav", "PCM_24", 16000, 1),
    ("wav", "PCM_32", 22050, 1),
    ("wav", "FLOAT", 16000, 1),
    ("wav", "FLOAT", 44100, 2),
    ("wav", "DOUBLE", 16000, 1),
    ("flac", "PCM_16", 16000, 1),
    ("flac", "PCM_24", 44100, 2),
    ("flac", "PCM_S8", 8000, 1),
    ("ogg", "VORBIS", 16000, 1),
    ("ogg", "VORBIS", 44100, 2),
    ("wav", "PCM_16", 16000, 1),
    ("wav", "PCM_24", 48000, 2),
    ("flac", "PCM_16", 22050, 2),
    ("ogg", "VORBIS", 22050, 1),
    ("wav", "FLOAT", 8000, 1),
]


def _tone_source(target: int, fold: int, take: str):
    """A 440 Hz (dog) or 880 Hz (rooster) tone at any rate."""
    return lambda rate: tone(440 * (target + 1), rate)


def _real_source(esc50_root: Path, seconds: float):
    """Real ESC-50 recordings (float), resampled to any rate: two per (class, fold), not silent at the start."""
    from esc_sweep.data import audio
    from esc_sweep.data.esc50 import find_audio_files, read_metadata

    rows = read_metadata(esc50_root)
    picked: dict[tuple[int, int, str], torch.Tensor] = {}
    for target, name in CLASSES:
        for fold in range(1, 6):
            candidates = [r for r in rows if r.category == name and r.fold == fold]
            takes = iter("AB")
            for path in find_audio_files(esc50_root, candidates):
                data, rate = audio.read_audio(path)
                wave = torch.from_numpy(audio.to_mono(data))[: int(rate * seconds)]
                if wave.pow(2).mean().sqrt() > 1e-3:  # ESC-50 pads short recordings with silence
                    take = next(takes, None)
                    if take is None:
                        break
                    picked[target, fold, take] = audio.resample(wave, rate, 44100)

    def source(target: int, fold: int, take: str):
        wave = picked[target, fold, take]
        return lambda new_rate: audio.resample(wave, 44100, new_rate).numpy()

    return source


def _mixed_root(root: Path, source) -> tuple[Path, dict[str, torch.Tensor]]:
    """2 classes x 5 folds x 2 clips, every clip a different encoding.

    Returns the root and, per clip, what decoding it should give at 16 kHz
    (the float signal written, resampled, before quantisation or compression).
    """
    from esc_sweep.data import audio

    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rows, expected, encodings = [], {}, iter(ENCODINGS)
    for fold in range(1, 6):
        for target, name in CLASSES:
            for take in "AB":
                ext, subtype, rate, channels = next(encodings)
                stem = f"{fold}-{100 + 10 * fold + target}-{take}-{target}"
                wave = np.asarray(source(target, fold, take)(rate), dtype=np.float32)
                expected[stem] = audio.resample(torch.from_numpy(wave), rate, SR)
                if channels == 2:  # the same signal on both channels, so the mono mix keeps its level
                    wave = np.stack([wave, wave], axis=1)
                sf.write(root / "audio" / f"{stem}.{ext}", wave, rate, subtype=subtype)
                # The csv says .wav whatever the encoding, as in ESC-50 copies converted to FLAC.
                rows.append([f"{stem}.wav", fold, target, name, "True", stem.split("-")[1], take])
    write_csv(root, rows)
    return root, expected


def _load_through_cli(tmp_path: Path, root: Path, clip_seconds: float):
    """Cross-validate over ``root`` with the CLI; return what the run decoded (read back from its cache)."""
    from esc_sweep.config import DatasetConfig
    from esc_sweep.data import load_clipset
    from esc_sweep.data.cache import default_cache_dir

    cache, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    out = run_cli([*TINY, f"dataset.clip_seconds={clip_seconds}", f"dataset.root={root}", f"dataset.cache_dir={cache}",
                   f"trainer.checkpoint_dir={tmp_path}/ck"], cwd=work, env={"ESC50_ROOT": ""})
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    (results,) = work.glob("outputs/runs/*/*/results.json")
    folds = json.loads(results.read_text())["folds"]
    assert [f["fold"] for f in folds] == [1, 2, 3, 4, 5]
    assert sum(sum(map(sum, f["confusion"])) for f in folds) == len(ENCODINGS)  # every clip was evaluated
    assert len(list(default_cache_dir(str(cache)).glob("esc50-*.pt"))) == 1
    clips = load_clipset(DatasetConfig(root=str(root), cache_dir=str(cache), clip_seconds=clip_seconds),
                         SR, progress=False)
    assert clips.waveforms.shape == (len(ENCODINGS), int(SR * clip_seconds))
    return clips


def _snr_db(decoded: torch.Tensor, expected: torch.Tensor) -> float:
    n = min(decoded.shape[-1], expected.shape[-1]) - 200  # the resampler's edge at the end differs
    signal, noise = expected[:n].double(), (decoded[:n].double() - expected[:n].double())
    return float(10 * torch.log10(signal.pow(2).sum() / noise.pow(2).sum().clamp_min(1e-20)))


def _min_snr_db(subtype: str) -> float:
    # Measured: lossless 59-77 dB (the cache stores float16), 8-bit 29-46 dB, Vorbis
    # 14-38 dB; a wrong decode (bit depth, signedness, channels, rate) gives 0 dB or less.
    return {"PCM_U8": 15.0, "PCM_S8": 15.0, "VORBIS": 8.0}.get(subtype, 40.0)


def test_tones_in_every_rate_channel_count_bit_depth_and_container_load_through_the_cli(tmp_path):
    root, expected = _mixed_root(tmp_path / "mixed", _tone_source)
    clips = _load_through_cli(tmp_path, root, CLIP_SECONDS)
    encoding = dict(zip(expected, ENCODINGS))
    for i, stem in enumerate(clips.clip_ids):
        assert _snr_db(clips.waveforms[i], expected[stem]) >= _min_snr_db(encoding[stem][1]), (stem, encoding[stem])
    # And independently of the resampler: the right pitch at 16 kHz, at full level.
    spectrum = torch.fft.rfft(clips.waveforms.double()).abs()
    peak_hz = spectrum.argmax(1).double() * SR / clips.waveforms.shape[1]
    want_hz = torch.tensor([440.0 * (t + 1) for t in clips.targets.tolist()], dtype=torch.float64)
    assert torch.allclose(peak_hz, want_hz, atol=4.1), list(zip(clips.clip_ids, peak_hz.tolist()))
    rms = clips.waveforms[:, 200:-200].double().pow(2).mean(1).sqrt()  # amplitude 0.5: RMS 0.354
    assert torch.allclose(rms, torch.full_like(rms, 0.5 / np.sqrt(2)), rtol=0.05), list(zip(clips.clip_ids, rms.tolist()))


def test_real_esc50_clips_in_every_encoding_load_through_the_cli(tmp_path, esc50_root):
    seconds = 2.0
    root, expected = _mixed_root(tmp_path / "mixed", _real_source(esc50_root, seconds))
    clips = _load_through_cli(tmp_path, root, seconds)
    encoding = dict(zip(expected, ENCODINGS))
    for i, stem in enumerate(clips.clip_ids):
        snr = _snr_db(clips.waveforms[i], expected[stem])
        assert snr >= _min_snr_db(encoding[stem][1]), (stem, encoding[stem], snr)


def test_real_esc50_class_typo_is_refused_with_a_suggestion(tmp_path, esc50_root):
    out = run_cli([*TINY, f"dataset.root={esc50_root}", "dataset.classes=[dog,roster]"], cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert _squash(f"dataset.classes names unknown class(es) roster in {esc50_root}/meta/esc50.csv: "
                   "valid names include rooster,") in _squash(text), text
    assert "Traceback" not in text
