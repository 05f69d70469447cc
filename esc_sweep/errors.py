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
