"""Reading a user's metadata CSV with one clear error per way it can be wrong."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from esc_sweep.errors import DataError


def read_csv_rows(
    csv_path: Path, required: Sequence[str], expected: str, *, utf8_fix: str, invalid_fix: str, empty_fix: str
) -> tuple[list[str], list[dict[str, str]]]:
    """Header (stripped) and rows of ``csv_path``; DataError when unreadable, malformed or empty.

    ``expected`` describes the columns; the ``*_fix`` texts tell the user what to do.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(
                    f"{csv_path} lacks column(s) {', '.join(missing)}: expected "
                    f"{expected} (found {','.join(header) or 'no header'})"
                )
            reader.fieldnames = header
            rows = list(reader)
    except UnicodeDecodeError:
        raise DataError(f"{csv_path} is not a UTF-8 text CSV: {utf8_fix}") from None
    except OSError as exc:
        raise DataError(f"cannot read {csv_path}: {exc.strerror or exc}") from None
    except csv.Error as exc:
        raise DataError(f"{csv_path} is not a valid CSV ({exc}): {invalid_fix}") from None
    if not rows:
        raise DataError(f"{csv_path} lists no clips: {empty_fix}")
    return header, rows
