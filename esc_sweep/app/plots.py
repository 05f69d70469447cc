"""``esc-sweep plots <bundle or results dir> --out DIR``: pictures of a dataset and a model.

Writes PNG files:

* ``waveforms.png`` and ``spectrograms.png``: a grid with a few clips of a few
  classes (rows: classes), so one sees what the model sees;
* ``sample_predictions.png`` (with a bundle): clips with their top-5 predicted
  labels, the true class highlighted;
* ``per_class_accuracy.png``, ``confusion_matrix.png`` and
  ``learning_curves.png``: the cross-validation results (pooled over folds).

The source is a bundle (folder or MLflow run id) or a run's output folder
(``results.json`` and ``.hydra/config.yaml``, plus ``bundle/`` after a final
fit). The clips come from the dataset the run trained on; ``--data-root``
points at it when it lives elsewhere on this machine. The PNG files are logged
to MLflow (artifact folder ``plots/``) when an MLflow run is active or
``--run-id`` names one.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from esc_sweep.data import load_clipset
from esc_sweep.errors import DataError, EscSweepError
from esc_sweep.outputs import check_output_folder
from esc_sweep.figures import results as figures
from esc_sweep.figures.audio import (
    pick_examples,
    sample_predictions_figure,
    spectrogram_grid_figure,
    waveform_grid_figure,
)
from esc_sweep.tracking.artifacts import log_files

log = logging.getLogger("esc_sweep")

PLOTS_ARTIFACT_DIR = "plots"
# A final-fit bundle has trained on every clip of its dataset.
TRAINING_CLIPS_NOTE = "clips of the bundle's training data: not a held-out estimate"


def make_plots(
    out_dir: Path,
    *,
    class_names: Sequence[str],
    cv: Optional[dict[str, Any]] = None,
    clips: Any = None,
    bundle: Any = None,
    features_cfg: Any = None,
    max_classes: int = 6,
    clips_per_class: int = 3,
    predictions_note: str = "",
) -> list[Path]:
    """Write every plot the inputs allow into ``out_dir``; returns the PNG paths.

    ``cv`` is a CVResult as a dict (results.json / metrics.json), ``clips`` a
    ClipSet, ``bundle`` a Bundle (for sample predictions), ``features_cfg``
    the features section (used when there is no bundle). ``predictions_note``
    is printed under the sample predictions' title (e.g. that the clips are
    training data).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        path = out_dir / name
        fig.savefig(path)
        written.append(path)

    if clips is not None and len(clips):
        written += _data_plots(out_dir, clips, bundle, features_cfg, max_classes, clips_per_class, predictions_note)
    if cv:
        if cv.get("per_class_accuracy"):
            save(figures.per_class_accuracy_figure(cv["per_class_accuracy"], "Per-class accuracy (pooled CV folds)"),
                 "per_class_accuracy.png")
        if cv.get("pooled_confusion"):
            save(figures.confusion_matrix_figure(cv["pooled_confusion"], list(cv.get("class_names") or class_names),
                                                 "Pooled CV confusion"), "confusion_matrix.png")
        histories = {f["fold"]: f["history"] for f in cv.get("folds", []) if f.get("history")}
        if histories:
            save(figures.learning_curve_figure(histories), "learning_curves.png")
    return written


@torch.inference_mode()
def _data_plots(out_dir: Path, clips: Any, bundle: Any, features_cfg: Any, max_classes: int,
                clips_per_class: int, predictions_note: str) -> list[Path]:
    from esc_sweep.features.transforms import build_features  # deferred: torchaudio (~0.6 s), only without a bundle

    if bundle is not None:
        extractor, kind = bundle.features, bundle.config["features"]["kind"]
        hop = int(bundle.config["features"]["hop_length"])
    else:
        extractor, kind, hop = build_features(features_cfg), features_cfg.kind, int(features_cfg.hop_length)
    device = next(iter(extractor.buffers()), torch.zeros(())).device
    picks = pick_examples(clips.targets, clips.class_names, max_classes, clips_per_class)
    rows = [row for _, chosen in picks for row in chosen]
    row_of = {row: i for i, row in enumerate(rows)}
    if clips.ragged is not None:  # variable-length clips: the shown clips' first windows (what predict sees first)
        clips = clips.subset(torch.tensor(rows, dtype=torch.long)).with_first_windows()
        picks = [(key, [row_of[r] for r in chosen]) for key, chosen in picks]
        rows = list(range(len(rows)))
        row_of = {row: row for row in rows}
    waveforms = clips.waveforms[rows].float()
    spectrograms = extractor(waveforms.to(device)).float().cpu()
    paths = []

    path = out_dir / "waveforms.png"
    waveform_grid_figure(clips.waveforms.float(), clips.sample_rate, picks, clips.class_names,
                         clips.clip_ids).savefig(path)
    paths.append(path)
    path = out_dir / "spectrograms.png"
    spectrogram_grid_figure(spectrograms, clips.sample_rate, hop, kind, picks, clips.class_names, clips.clip_ids,
                            row_of).savefig(path)
    paths.append(path)

    if bundle is not None:
        # One clip per shown class; class names map through the bundle's own list.
        first = [chosen[0] for _, chosen in picks if chosen]
        known = [r for r in first if clips.class_names[int(clips.targets[r])] in bundle.class_names]
        if known:
            probabilities = bundle.predict(clips.waveforms[known].float())
            true = [bundle.class_names.index(clips.class_names[int(clips.targets[r])]) for r in known]
            titles = [clips.clip_ids[r] for r in known]
            fig = sample_predictions_figure(spectrograms[[row_of[r] for r in known]], probabilities, true,
                                            bundle.class_names, titles, clips.sample_rate, hop, kind,
                                            note=predictions_note)
            path = out_dir / "sample_predictions.png"
            fig.savefig(path)
            paths.append(path)
    return paths


def log_plots(paths: Sequence[Path], run_id: Optional[str] = None, tracking_uri: Optional[str] = None) -> Optional[str]:
    """Log PNG files to ``plots/`` of ``run_id``, else of the active MLflow run; returns the run id used."""
    return log_files(paths, PLOTS_ARTIFACT_DIR, run_id, tracking_uri)


# --------------------------------------------------------------------------
# Sources: a bundle or a results folder


def _load_source(source: str, tracking_uri: Optional[str], device: str):
    """(bundle or None, resolved config dict, CV result dict or None)."""
    from esc_sweep.bundle import BundleError, load_bundle  # deferred: the bundle loader and models (~0.75 s)

    path = Path(source).expanduser()
    if (path / "results.json").is_file():
        try:
            cv = json.loads((path / "results.json").read_text())
        except json.JSONDecodeError as err:
            raise EscSweepError(f"{path / 'results.json'} is not valid JSON ({err})") from None
        bundle = load_bundle(path, device=device) if (path / "bundle" / "bundle.json").is_file() else None
        config_file = path / ".hydra" / "config.yaml"
        if bundle is not None:
            config = bundle.config
        elif config_file.is_file():
            config = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)
        else:
            config = None
        return bundle, config, cv
    try:
        bundle = load_bundle(source, device=device, tracking_uri=tracking_uri)
    except BundleError as err:
        raise EscSweepError(
            f"{source}: neither a run output folder (with results.json) nor a model bundle ({err})"
        ) from None
    return bundle, bundle.config, bundle.metrics


def _load_clips(config: dict[str, Any], data_root: Optional[str]) -> Any:
    dataset = OmegaConf.create(config["dataset"])
    # Pictures are no reason to download a dataset.
    dataset.download = False
    if data_root:
        dataset.root = data_root
    try:
        return load_clipset(dataset, int(config["features"]["sample_rate"]), progress=False)
    except DataError as err:
        if data_root:
            raise
        log.warning("no waveform or spectrogram plots: the training data cannot be loaded (%s); "
                    "pass --data-root", err)
        return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="esc-sweep plots", description="PNG pictures of a dataset and a model.")
    parser.add_argument("source", help="model bundle (folder or MLflow run id) or a run output folder")
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument("--data-root", help="dataset root on this machine (default: as trained)")
    parser.add_argument("--classes", type=int, default=6, help="classes shown in the grids (default 6)")
    parser.add_argument("--clips-per-class", type=int, default=3, help="clips per class in the grids (default 3)")
    parser.add_argument("--run-id", help="also log the PNG files to this MLflow run (folder plots/)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: as training)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    from esc_sweep.console import console  # deferred: rich progress bars (~0.2 s) — importing this module stays lighter

    args = parse_args(argv)
    if args.classes < 1 or args.clips_per_class < 1:
        raise EscSweepError("--classes and --clips-per-class must be at least 1")
    check_output_folder(args.out)  # never into a bundle, run, checkpoint or MLflow folder
    bundle, config, cv = _load_source(args.source, args.tracking_uri, args.device)
    if config is None:
        raise EscSweepError(f"{args.source}: no .hydra/config.yaml or bundle: cannot tell which data it used")
    clips = _load_clips(config, args.data_root)
    features_cfg = OmegaConf.create(config["features"])
    class_names = bundle.class_names if bundle is not None else (cv or {}).get("class_names", [])
    written = make_plots(
        Path(args.out), class_names=class_names, cv=cv, clips=clips, bundle=bundle, features_cfg=features_cfg,
        max_classes=args.classes, clips_per_class=args.clips_per_class,
        predictions_note="" if args.data_root else TRAINING_CLIPS_NOTE,
    )
    if not written:
        raise EscSweepError(f"{args.source}: nothing to plot (no data and no CV results)")
    for path in written:
        console.print(f"wrote {path}")
    run_id = log_plots(written, args.run_id, args.tracking_uri)
    if run_id:
        console.print(f"logged {len(written)} plot(s) to MLflow run {run_id} (artifact '{PLOTS_ARTIFACT_DIR}/')")
