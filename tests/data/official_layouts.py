"""Small generated trees in exactly the official layouts of UrbanSound8K and FSDKaggle2018.

File and column names are the released ones; the audio is class-separable tones
(one frequency per class, a little noise) of the lengths the real data sets have
(UrbanSound8K: up to 4 s; FSDKaggle2018: 0.3 s and longer), so a short training
run learns them.
"""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

US8K_CLASSES = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling",
                "gun_shot", "jackhammer", "siren", "street_music"]
US8K_COLUMNS = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]


def tone(freq: float, seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(max(1, int(round(seconds * rate)))) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


def class_frequency(index: int) -> float:
    return 200.0 * (index + 1)


def make_urbansound8k(parent: Path, clips_per_class_per_fold: int = 1, rate: int = 8000,
                      classes: list[str] | None = None) -> Path:
    """``parent/UrbanSound8K`` with metadata/UrbanSound8K.csv and audio/fold1..fold10; returns that folder."""
    classes = classes or US8K_CLASSES
    root = parent / "UrbanSound8K"
    (root / "metadata").mkdir(parents=True)
    rows = []
    n = 0
    for fold in range(1, 11):
        folder = root / "audio" / f"fold{fold}"
        folder.mkdir(parents=True)
        for class_id, name in enumerate(classes):
            for k in range(clips_per_class_per_fold):
                fs_id = 1000 * fold + 10 * class_id + k  # one Freesound recording per clip
                seconds = 4.0 if (n % 3) else 0.5 + (n % 7) * 0.4  # most clips 4 s, some shorter (as released)
                slice_name = f"{fs_id}-{class_id}-0-{k}.wav"
                sf.write(folder / slice_name, tone(class_frequency(class_id), seconds, rate, n), rate)
                rows.append([slice_name, fs_id, 0.0, seconds, 1, fold, class_id, name])
                n += 1
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(US8K_COLUMNS)
        writer.writerows(rows)
    return root


def tar_gz_of(folder: Path, archive: Path) -> Path:
    """``folder`` packed as the release is: a .tar.gz whose top entry is the folder's name."""
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return archive


FSD_TRAIN_COLUMNS = ["fname", "label", "manually_verified", "freesound_id", "license"]
FSD_TEST_COLUMNS = ["fname", "label", "usage", "freesound_id", "license"]


def make_fsdkaggle2018(parent: Path, classes: list[str], train_per_class: int = 4, test_per_class: int = 2,
                       rate: int = 8000) -> Path:
    """``parent`` holding FSDKaggle2018.audio_train/, .audio_test/ and .meta/ with the two official CSVs.

    Lengths cycle through 0.3 s to 6 s (the real set: 0.3 to 30 s); every other training clip is
    ``manually_verified=0``. Returns ``parent``.
    """
    train_dir, test_dir, meta = (parent / "FSDKaggle2018.audio_train", parent / "FSDKaggle2018.audio_test",
                                 parent / "FSDKaggle2018.meta")
    for d in (train_dir, test_dir, meta):
        d.mkdir(parents=True)
    lengths = [0.3, 1.0, 2.5, 6.0, 0.7, 4.0]
    train_rows, test_rows = [], []
    n = 0
    for c, name in enumerate(classes):
        for k in range(train_per_class):
            fname = f"{n:08x}.wav"
            sf.write(train_dir / fname, tone(class_frequency(c), lengths[n % len(lengths)], rate, n), rate)
            train_rows.append([fname, name, 1 if k % 2 == 0 else 0, 10000 + n, "Attribution"])
            n += 1
        for k in range(test_per_class):
            fname = f"{n:08x}.wav"
            sf.write(test_dir / fname, tone(class_frequency(c), lengths[n % len(lengths)], rate, n), rate)
            test_rows.append([fname, name, "Private" if k % 2 else "Public", 10000 + n, "Attribution"])
            n += 1
    for path, header, rows in ((meta / "train_post_competition.csv", FSD_TRAIN_COLUMNS, train_rows),
                               (meta / "test_post_competition_scoring_clips.csv", FSD_TEST_COLUMNS, test_rows)):
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        path.write_text(buffer.getvalue())
    return parent
