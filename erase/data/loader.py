"""The one DataLoader builder of the toolkit (unlearning loops, Fisher passes, evaluations)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def loader(dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    """A DataLoader with its own seeded generator (runs repeat exactly): full batches when shuffling, and
    never a batch larger than the data."""
    return DataLoader(
        dataset, batch_size=min(batch_size, len(dataset)), shuffle=shuffle, drop_last=shuffle,
        generator=torch.Generator().manual_seed(seed),
    )
