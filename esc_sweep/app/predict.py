"""``esc-sweep predict <bundle or MLflow run id> <files or folders...>``: tag new audio.

Each file is decoded (any format soundfile reads, any sample rate, any number
of channels), mixed to mono and resampled to the bundle's rate; longer
recordings are cut into clip-length windows whose probabilities are averaged
(see ``Bundle.predict``). ``--tta N`` classifies N evenly spaced crops of each
window and averages them (default: the bundle's ``trainer.tta_crops``); a fold
ensemble bundle (``bundle_ensemble/``) averages its fold models. The top-k
labels per file are printed as a table, or
written as JSON or CSV. A file that cannot be read is reported and skipped; the
others are still predicted (exit 2 at the end). ``--output`` is written
atomically, only as a new file or over an earlier predict output, never inside
a bundle, run, checkpoint or MLflow folder (``esc_sweep.outputs``); CSV to the
terminal streams row by row. File names that are not valid UTF-8 are predicted
and shown with their stray bytes as ``\\xNN``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from esc_sweep.data.audio import (
    AUDIO_EXTENSIONS,
    DEFAULT_MAX_SECONDS,
    is_audio_file,
    iter_windows,
    num_windows,
    probe,
    read_audio,
    resample,
    to_mono,
)
from esc_sweep.errors import EscSweepError
from esc_sweep.outputs import WRITTEN_BY, WRITTEN_BY_KEY, check_output_file
from esc_sweep.paths import file_kind, printable_path, printable_text, write_text_atomically

FORMATS = ("table", "json", "csv")
# Windowed decoding keeps memory bounded; the limit bounds time (an hour takes about a minute on 2 cores).
PREDICT_MAX_SECONDS = 4 * 3600.0


def decode_recording(path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
    """The whole file as a float32 mono waveform at ``sample_rate`` (nothing trimmed or padded)."""
    data, rate = read_audio(path)
    mono = torch.from_numpy(np.ascontiguousarray(to_mono(data), dtype=np.float32))
    return resample(mono, rate, sample_rate).contiguous()


def collect_files(inputs: Iterable[str]) -> list[Path]:
    """Audio files named directly or found (recursively) in the named folders, in order."""
    files: list[Path] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and is_audio_file(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                exts = ", ".join(sorted(AUDIO_EXTENSIONS)[:6])
                raise EscSweepError(f"folder {path} holds no audio files (looked for {exts}, ... recursively)")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif os.path.lexists(path):
            raise EscSweepError(f"{printable_text(text)} is {_kind_of(path)}, not an audio file or a folder")
        else:
            raise EscSweepError(f"no such file or folder: {printable_text(text)}")
    return list(dict.fromkeys(files))  # a file named twice is predicted once


def _kind_of(path: Path) -> str:
    try:
        return file_kind(os.stat(path).st_mode)
    except OSError:
        return "a broken link"


def predict_one(bundle: Any, path: Path, top_k: int, max_seconds: Optional[float] = DEFAULT_MAX_SECONDS
                ) -> dict[str, Any]:
    """The record of one file: duration, number of windows, top-k labels with probabilities.

    The header is checked first (a regular file, a known duration within ``max_seconds``), then
    the file is decoded window by window: memory stays bounded for recordings of any length.
    """
    info = probe(path, max_seconds=max_seconds)
    total = None if info.frames is None else int(round(info.frames * bundle.sample_rate / info.sample_rate))
    windows = iter_windows(path, bundle.sample_rate, bundle.clip_samples, max_seconds=max_seconds)
    probabilities = bundle.predict_windows(windows, total_samples=total)
    top = bundle.top_k(probabilities, top_k)
    seconds = info.seconds if info.seconds is not None else 0.0
    return {
        "file": printable_path(path),
        "seconds": round(seconds, 3),
        "windows": max(1, num_windows(total, bundle.clip_samples)) if total else 1,
        "label": top[0][0],
        "probability": top[0][1],
        "top": [{"label": label, "probability": p} for label, p in top],
    }


def predict_files(bundle: Any, files: list[Path], top_k: int, on_record=None,
                  max_seconds: Optional[float] = PREDICT_MAX_SECONDS) -> list[dict[str, Any]]:
    """One record per file, in order; a file that cannot be read gets ``{"file", "error"}`` and the rest go on.

    ``on_record`` sees each record as soon as it exists (streamed output).
    """
    # deferred: rich progress bars (~0.2 s), only when predicting (serve imports this module for collect_files)
    from esc_sweep.console import console
    from rich.progress import Progress  # deferred: as above

    records = []
    with Progress(console=console, transient=True, disable=len(files) < 5) as progress:
        task = progress.add_task("predicting", total=len(files))
        for path in files:
            try:
                record = predict_one(bundle, path, top_k, max_seconds)
            except EscSweepError as err:  # one unreadable file does not cost the others their predictions
                record = {"file": printable_path(path), "error": printable_text(str(err))}
                console.print(f"[yellow]skipped[/] {record['file']}: {record['error']}", markup=False,
                              highlight=False)
            records.append(record)
            if on_record is not None:
                on_record(record)
            progress.advance(task)
    return records


# --------------------------------------------------------------------------
# Output


def render_json(bundle: Any, records: list[dict[str, Any]]) -> str:
    document = {
        # First: how a later predict recognises this file as its own output (esc_sweep.outputs).
        WRITTEN_BY_KEY: WRITTEN_BY,
        "bundle": printable_text(bundle.source),
        "model": bundle.describe(),
        "class_names": bundle.class_names,
        "models": bundle.num_members,
        "tta_crops": bundle.tta_crops,
        "predictions": records,
    }
    return json.dumps(document, indent=2) + "\n"


def render_csv(records: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "rank", "label", "probability"])
    for record in records:
        write_csv_rows(writer, record)
    return out.getvalue()


def write_csv_rows(writer, record: dict[str, Any]) -> None:
    if "error" in record:
        writer.writerow([record["file"], "", "error", record["error"]])
        return
    for rank, item in enumerate(record["top"], start=1):
        writer.writerow([record["file"], rank, item["label"], f"{item['probability']:.6f}"])


def render_table(bundle: Any, records: list[dict[str, Any]]):
    from rich.table import Table  # deferred: rich (~0.2 s), only for the table format

    table = Table(title=f"Predictions ({bundle.describe()})")
    table.add_column("file", overflow="fold")
    table.add_column("seconds", justify="right")
    table.add_column("label", style="bold")
    table.add_column("prob.", justify="right")
    table.add_column("next most likely")
    for record in records:
        if "error" in record:
            table.add_row(_short_path(record["file"]), "-", "[red]unreadable[/]", "-", record["error"])
            continue
        others = " · ".join(f"{item['label']} {100 * item['probability']:.1f}%" for item in record["top"][1:])
        table.add_row(
            _short_path(record["file"]), f"{record['seconds']:.1f}", record["label"], f"{100 * record['probability']:.1f}%", others
        )
    return table


def _short_path(path: str) -> str:
    """``path`` relative to the working directory when inside it: tables stay narrow."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def atomic_write_text(path: Path, text: str) -> None:
    try:
        write_text_atomically(path, text)
    except OSError as err:
        raise EscSweepError(f"cannot write --output {path}: {err.strerror or err}") from None


def check_output(output: Optional[str], files: list[Path]) -> None:
    """Refuse an --output over anything but an earlier predict output, or inside esc_sweep's folders."""
    if output is not None:
        check_output_file(output, files, is_audio=is_audio_file)


def write_output(bundle: Any, records: list[dict[str, Any]], fmt: str, output: Optional[str]) -> None:
    from rich.console import Console  # deferred: rich (~0.2 s), only for the table format

    if fmt == "json":
        text = render_json(bundle, records)
    elif fmt == "csv":
        text = render_csv(records)
    else:
        if output is None:
            Console().print(render_table(bundle, records))
            return
        buffer = io.StringIO()
        Console(file=buffer, width=160, no_color=True).print(render_table(bundle, records))
        text = buffer.getvalue()
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write_text(Path(output).expanduser(), text)
    from esc_sweep.console import console  # deferred: rich (~0.2 s), only after writing --output

    console.print(f"wrote predictions for {len(records)} file(s) to {output}")


# --------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="esc-sweep predict",
        description="Top-k labels for audio files with a trained model bundle.",
    )
    parser.add_argument("bundle", help="bundle folder (<run output dir>/bundle) or MLflow run id")
    parser.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively)")
    parser.add_argument("--top-k", type=int, default=5, help="labels per file (default 5)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument("--output", "-o", help="write to this file instead of the terminal")
    parser.add_argument("--max-seconds", type=float, default=PREDICT_MAX_SECONDS,
                        help=f"refuse recordings longer than this (default {PREDICT_MAX_SECONDS:g} s; "
                             "read from the header, before decoding)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--tta", type=int, default=None, metavar="N",
                        help="test-time crops per window, probabilities averaged (0 or 1: off; "
                             "default: the bundle's trainer.tta_crops)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for run ids (default: as training)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.top_k < 1:
        raise EscSweepError(f"--top-k {args.top_k}: must be at least 1")
    if args.tta is not None and args.tta < 0:
        raise EscSweepError(f"--tta {args.tta}: must be 0 (off) or a number of crops")
    from esc_sweep.bundle import load_bundle  # deferred: the bundle loader and models (~0.75 s): bad args fail first

    files = collect_files(args.inputs)  # before loading the model: bad paths fail fast
    check_output(args.output, files)
    bundle = load_bundle(args.bundle, device=args.device, tracking_uri=args.tracking_uri, tta_crops=args.tta)
    stream = None
    if args.format == "csv" and args.output is None:  # CSV to the terminal streams: each row as its file is done
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["file", "rank", "label", "probability"])

        def stream_row(record):
            write_csv_rows(writer, record)
            sys.stdout.flush()

        stream = stream_row

    records = predict_files(bundle, files, args.top_k, on_record=stream, max_seconds=args.max_seconds)
    if stream is None:
        write_output(bundle, records, args.format, args.output)
    failed = [r for r in records if "error" in r]
    if failed:
        raise EscSweepError(f"{len(failed)} of {len(records)} file(s) could not be read (first: "
                            f"{failed[0]['error']}); the predictions of the others were written")


if __name__ == "__main__":
    main(sys.argv[1:])
