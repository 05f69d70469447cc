"""The inner validation split (``trainer.validation=inner``): carved from an outer fold's training clips.

Stratified by class and grouped by source recording: ESC-50 cuts several clips
from one recording (``src_file``), and a recording split across the two sides
would leak, so each recording goes wholly to one side.
"""

from __future__ import annotations

import torch


def inner_split(
    train_index: torch.Tensor, targets: torch.Tensor, groups: list[str], fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, select rows) of ``train_index``: about ``fraction`` of each class's clips to select.

    ``targets`` and ``groups`` are indexed by clip (the whole ClipSet); the split is deterministic
    in ``seed``. Each class keeps at least one recording on the fit side.
    """
    rows = train_index.cpu().tolist()
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, dict[str, list[int]]] = {}
    for row in rows:
        by_class.setdefault(int(targets[row]), {}).setdefault(groups[row], []).append(row)
    chosen_groups: set[str] = set()
    for label in sorted(by_class):
        recordings = sorted(by_class[label])
        order = torch.randperm(len(recordings), generator=generator).tolist()
        wanted = fraction * sum(len(v) for v in by_class[label].values())
        taken = 0
        for position in order[: max(0, len(recordings) - 1)]:  # at least one recording stays for fitting
            if taken >= wanted:
                break
            chosen_groups.add(recordings[position])
            taken += len(by_class[label][recordings[position]])
    select = [row for row in rows if groups[row] in chosen_groups]
    fit = [row for row in rows if groups[row] not in chosen_groups]
    device = train_index.device
    return torch.tensor(fit, dtype=torch.long, device=device), torch.tensor(select, dtype=torch.long, device=device)
