"""User-facing errors.

Anything the user can fix (a path, a config value, a bad file) raises an
``EscSweepError``. The command line prints its message on one line, without a
traceback, and exits with status 2. Everything else is a bug and keeps its
traceback.
"""


class EscSweepError(Exception):
    """An error caused by user input; its message says what to fix."""


class ConfigError(EscSweepError):
    """A configuration value is invalid. The message names the key."""


class DataError(EscSweepError):
    """The dataset, a metadata file or an audio file cannot be used."""


class DownloadError(DataError):
    """Downloading, verifying or extracting an archive failed."""


class TrainingError(EscSweepError):
    """Training cannot go on (non-finite loss, out of memory)."""


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite."""


class OutOfMemoryError(TrainingError):
    """The accelerator ran out of memory."""


class TrackingError(EscSweepError):
    """The MLflow store cannot be used (wrong URI, server down, deleted experiment)."""


class BundleError(EscSweepError):
    """A model bundle cannot be found, downloaded or used."""


def damaged_file_reason(error: BaseException) -> str:
    """Why a saved file (torch or JSON) did not load, in a few words, for a message that calls it damaged.

    torch answers a truncated or overwritten file with advice about ``weights_only`` and
    trusting the source: true for a foreign pickle, misleading for a damaged save of ours.
    """
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if "weights_only" in text or "Weights only load failed" in text:
        return "not a complete torch file"
    if "central directory" in text or "PytorchStreamReader" in text or isinstance(error, EOFError):
        return "truncated or not a torch file"
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__
