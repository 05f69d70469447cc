"""What the sweeper tells the user: its error type, an exception in one line, a value as Hydra override text.

No Optuna here: ``app.nested`` quotes the winner's values as the sweeper does without importing it.
"""

from __future__ import annotations

from typing import Any

from esc_sweep.errors import EscSweepError


class SweepError(EscSweepError):
    """The sweep cannot go on (too many failed trials, a bad sweeper setting)."""


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (the cause's, when Hydra wrapped it in "Error in call to target")."""
    cause = err.__cause__ if err.__cause__ is not None and "Error in call to target" in str(err) else err
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def override_value(value: Any) -> str:
    """A value as Hydra override text; strings quoted so URLs with ?&=: parse.

    Raises SweepError for a string holding both quote kinds (no Hydra quoting can carry it).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise SweepError(f"cannot pass {text!r} as a Hydra override (it holds both quote kinds)")
