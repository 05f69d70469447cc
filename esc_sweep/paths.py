"""Where esc_sweep keeps things: every default location, in one module.

- configs: ``esc_sweep/conf`` (package data; an installed copy composes from any folder)
- run outputs: ``outputs/runs/<date>/<time>_<model>/`` (Hydra's ``hydra.run.dir`` in conf/config.yaml)
- fold checkpoints (resume): ``outputs/checkpoints/<config key>/`` or ``trainer.checkpoint_dir``
- MLflow: ``mlruns/mlflow.db`` + ``mlruns/artifacts/`` unless ``tracking.uri`` / ``$MLFLOW_TRACKING_URI``
- Optuna studies: ``outputs/optuna/<study>.db`` unless ``hydra.sweeper.storage``
- decoded waveforms: ``dataset.cache_dir``, else ``$ESC_SWEEP_CACHE``, else ``~/.cache/esc_sweep/waveforms``
- computed features (CPU runs): ``<waveform cache>/features``
- downloaded datasets: ``dataset.download_dir``, else ``~/.cache/esc_sweep/datasets``
- downloaded pretrained weights (``model.weights=<URL>``): ``$ESC_SWEEP_WEIGHTS``, else ``~/.cache/esc_sweep/weights``

Relative locations are taken from the folder the user ran the command in
(Hydra may change into its output folder). Imports nothing heavy.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Optional

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "conf"
DEFAULT_WAVEFORM_CACHE = "~/.cache/esc_sweep/waveforms"
DEFAULT_DOWNLOAD_DIR = "~/.cache/esc_sweep/datasets"
DEFAULT_WEIGHTS_DIR = "~/.cache/esc_sweep/weights"


def expand(path: str | Path) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def original_cwd() -> Path:
    """The directory the user ran the command in (Hydra may change into its output dir)."""
    from hydra.core.hydra_config import HydraConfig  # deferred: hydra (~0.6 s) — paths is imported by every CLI path

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def outputs_dir() -> Path:
    return original_cwd() / "outputs"


def checkpoint_dir(cfg: Any) -> Path:
    """Where finished folds are kept for resume: ``trainer.checkpoint_dir`` or outputs/checkpoints."""
    if cfg.trainer.checkpoint_dir:
        return expand(cfg.trainer.checkpoint_dir)
    return outputs_dir() / "checkpoints"


def mlruns_dir() -> Path:
    """The default MLflow store's folder (``mlflow.db`` and ``artifacts/``)."""
    return original_cwd() / "mlruns"


def optuna_storage_url(cwd: str | Path, study_name: str) -> str:
    """sqlite:///<cwd>/outputs/optuna/<study_name>.db (folder created)."""
    folder = Path(cwd) / "outputs" / "optuna"
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)
    return f"sqlite:///{folder / safe}.db"


def waveform_cache_dir(cache_dir: Optional[str] = None) -> Path:
    """``cache_dir`` if set, else ``$ESC_SWEEP_CACHE``, else ``~/.cache/esc_sweep/waveforms``."""
    return expand(cache_dir or os.environ.get("ESC_SWEEP_CACHE") or DEFAULT_WAVEFORM_CACHE)


def feature_cache_dir(cache_dir: Optional[str] = None) -> Path:
    return waveform_cache_dir(cache_dir) / "features"


def download_dir(configured: Optional[str] = None) -> Path:
    return expand(configured or DEFAULT_DOWNLOAD_DIR)


def weights_cache_dir() -> Path:
    """Downloaded pretrained weights: ``$ESC_SWEEP_WEIGHTS``, else ``~/.cache/esc_sweep/weights``."""
    return expand(os.environ.get("ESC_SWEEP_WEIGHTS") or DEFAULT_WEIGHTS_DIR)


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``.

    ``path`` is never half-written (a kill or a full disk leaves the old file or none);
    on any failure (an OSError, text that cannot be encoded) the temporary file is removed
    and the error is raised for the caller to word.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def printable_path(path: str | os.PathLike) -> str:
    """``path`` as valid text: bytes that are not UTF-8 (a file name from another system) become ``\\xNN``.

    Linux hands such names to Python as lone surrogates, which no UTF-8 output (a terminal,
    a CSV or JSON file) can hold; the escaped form is what ``ls -b`` shows.
    """
    return printable_text(os.fspath(path))


def printable_text(text: str) -> str:
    """``text`` (e.g. an error naming such a file) with its undecodable bytes escaped as ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def special_kind(path: str | os.PathLike) -> Optional[str]:
    """'a FIFO / named pipe', 'a device', ... when ``path`` exists but is neither a regular file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else file_kind(mode)


def file_kind(mode: int) -> str:
    """What a non-regular file is, for a message: 'a FIFO / named pipe', 'a device', ..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO / named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a plain file"
