"""Generated folder trees against the folder-dataset walk.

Hypothesis builds class folders with nested folders, audio files, symbolic
links to folders (including ancestors and the root: loops) and to files,
hard links, FIFOs, broken links and self-referencing links. The walk must
end (time limit), never count one file twice, and either list every real
audio file exactly once under its own class or refuse with a one-line
DataError for a reason the tree really has.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esc_sweep.data import audio
from esc_sweep.data.files import walk_audio_files
from esc_sweep.data.folder import scan_subfolders
from esc_sweep.errors import DataError
from tests.data.support import Tally, reason_of, time_limit

NAMES = ["a", "b", "c", "again", "up", "x"]
# Weighted by repetition: mostly folders, files and links (loops, duplicates),
# sometimes a hazard (FIFO, broken link, link to itself).
OPS = ["dir"] * 3 + ["file"] * 4 + ["dirlink"] * 3 + ["filelink"] * 2 + ["hardlink", "fifo", "broken", "selfloop"]
HAZARDS = ("fifo", "broken", "selfloop")

TALLY = Tally("generated folder trees")


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    TALLY.report(request.config)


@dataclass
class Tree:
    ops: list = field(default_factory=list)  # (op, parent dir index, name, target index, absolute?, audio?)
    classes: int = 2

    def __repr__(self) -> str:
        return f"Tree(classes={self.classes}, ops={self.ops})"


@st.composite
def trees(draw) -> Tree:
    tree = Tree(classes=draw(st.integers(1, 3)))
    # Half the trees have hazards with audio names (which must be refused);
    # in the others, FIFOs and broken links have other names and must be ignored.
    audio_hazards = draw(st.booleans())
    n_dirs, n_files = tree.classes, 0
    for _ in range(draw(st.integers(0, 25))):
        op = draw(st.sampled_from(OPS))
        parent = draw(st.integers(0, n_dirs - 1))
        name = draw(st.sampled_from(NAMES))
        if op in HAZARDS:
            audio_name = audio_hazards and draw(st.sampled_from([True, False, False]))
        else:
            audio_name = op != "file" or draw(st.sampled_from([True, True, False]))
        absolute = draw(st.booleans())
        target = None
        if op == "dirlink":
            target = draw(st.integers(-1, n_dirs - 1))  # -1: the dataset root
        elif op in ("filelink", "hardlink"):
            if n_files == 0:
                continue
            target = draw(st.integers(0, n_files - 1))
        tree.ops.append((op, parent, name, target, absolute, audio_name))
        n_dirs += op == "dir"
        n_files += op == "file" and audio_name
    return tree


@dataclass
class Built:
    root: Path
    real: dict  # inode key -> class name, for every real audio file
    reasons: set  # refusals the tree can justify


def build(tree: Tree, root: Path) -> Built:
    dirs = [root / f"class{c}" for c in range(tree.classes)]
    for d in dirs:
        d.mkdir(parents=True)
    files: list[Path] = []
    real: dict = {}
    reasons: set = set()
    for op, parent, name, target, absolute, audio_name in tree.ops:
        # Indices are taken modulo what exists: an op skipped on a name clash
        # leaves fewer folders/files than the strategy counted.
        base = dirs[parent % len(dirs)]
        path = base / (f"{name}.wav" if audio_name and op != "dir" and op != "dirlink" else name)
        if os.path.lexists(path):
            continue
        if op == "dir":
            path.mkdir()
            dirs.append(path)
        elif op == "file":
            path.write_bytes(b"RIFF fake audio: the walk never opens it")
            if audio_name:
                files.append(path)
                st_ = os.stat(path)
                real[(st_.st_dev, st_.st_ino)] = path.relative_to(root).parts[0]
        elif op == "dirlink":
            dest = root if target == -1 else dirs[target % len(dirs)]
            path.symlink_to(dest if absolute else os.path.relpath(dest, base), target_is_directory=True)
            reasons.add("same-file-two-classes")
        elif op in ("filelink", "hardlink") and not files:
            continue
        elif op == "filelink":
            dest = files[target % len(files)]
            path.symlink_to(dest if absolute else os.path.relpath(dest, base))
            reasons.add("same-file-two-classes")
        elif op == "hardlink":
            os.link(files[target % len(files)], path)
            reasons.add("same-file-two-classes")
        elif op == "fifo":
            os.mkfifo(path)
            if audio_name:
                reasons.add("not-regular")
        elif op == "broken":
            path.symlink_to(f"missing-{name}")
            if audio_name:
                reasons.add("unreadable")
        elif op == "selfloop":
            path.symlink_to(path.name)
            if audio_name:
                reasons.add("unreadable")
    if not real:
        reasons.add("no-audio")
    return Built(root, real, reasons)


def key_of(path: Path) -> tuple:
    st_ = os.stat(path)
    return (st_.st_dev, st_.st_ino)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees())
def test_folder_walk_ends_counts_each_file_once_or_refuses_clearly(tree: Tree):
    TALLY.case()
    with tempfile.TemporaryDirectory() as folder:
        built = build(tree, Path(folder) / "root")
        try:
            with time_limit(10, f"scanning {tree!r}"):
                items = scan_subfolders(built.root)
        except DataError as exc:
            message = str(exc)
            assert "\n" not in message
            reason = reason_of(message)
            assert reason in built.reasons, f"refused for {reason!r} ({message}), but the tree only justifies {built.reasons}"
            TALLY.add(f"scan_subfolders: refused/{reason}")
        else:
            keys = [key_of(built.root / rel) for rel, _ in items]
            assert len(set(keys)) == len(keys), "a file was counted twice"
            # Every real audio file exactly once, under the class it physically lives in.
            assert {key: label for key, (_, label) in zip(keys, items)} == built.real
            TALLY.add("scan_subfolders: listed")
            ops = {op for op, *_ in tree.ops}
            TALLY.add(f"scan_subfolders: listed, tree had folder links: {'dirlink' in ops}")
            TALLY.add(f"scan_subfolders: listed, tree had file/hard links: {bool(ops & {'filelink', 'hardlink'})}")
            TALLY.add(f"scan_subfolders: listed, tree had non-audio FIFOs/broken links: {bool(ops & set(HAZARDS))}")

        # The plain walk (what predict can use for a folder of recordings).
        try:
            with time_limit(10, f"walking {tree!r}"):
                walked = [key for _, key in walk_audio_files(built.root, audio.is_audio_file)]
        except DataError as exc:
            assert "\n" not in str(exc)
            reason = reason_of(str(exc))
            assert reason in {"not-regular", "unreadable"} & built.reasons
            TALLY.add(f"walk_audio_files: refused/{reason}")
        else:
            assert len(set(walked)) == len(walked) and set(walked) == set(built.real)
            TALLY.add("walk_audio_files: walked")
