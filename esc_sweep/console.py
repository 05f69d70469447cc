"""The one rich console every message and progress bar goes through (stderr, so stdout stays for results)."""

from __future__ import annotations

from rich.console import Console

# soft_wrap: a message is one line however long (a terminal folds it; logs and tests see one line).
console = Console(stderr=True, soft_wrap=True)
