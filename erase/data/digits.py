"""sklearn's handwritten digits (1,797 8×8 images, 10 classes): real data that ships with a package.

Images are kept at their native 8×8 and scaled to [-1, 1]; the split is fixed by a seed so the
bundled models, the demo and the tests all see the same train/test images.
"""

from __future__ import annotations

import numpy as np
import torch

NUM_CLASSES = 10
IMAGE_SIZE = 8
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_digits_tensors(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images in [-1, 1] as N×1×8×8 float32, labels as int64) for split 'train', 'test' or 'all'."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0 * 2.0 - 1.0).unsqueeze(1)
    labels = torch.from_numpy(data.target.astype(np.int64))
    if split == "all":
        return images, labels
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels.numpy()
    )
    if split == "train":
        return images[train_idx], labels[train_idx]
    if split == "test":
        return images[test_idx], labels[test_idx]
    raise ValueError(f"split must be train, test or all, got {split!r}")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 in [0, 255], the form evaluators and torch-fidelity take."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
