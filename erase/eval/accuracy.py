"""Class-forgetting metrics from a classifier's verdicts on generated images."""

from __future__ import annotations

import torch


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[int, float]:
    """Share of images of each requested class that the classifier labels as that class."""
    out = {}
    for k in range(num_classes):
        chosen = labels == k
        if chosen.any():
            out[k] = float((predictions[chosen] == k).float().mean())
    return out


def forgetting_accuracy(predictions: torch.Tensor, labels: torch.Tensor, forget_class: int) -> float:
    """FA: share of images generated for the forgotten class still labelled as it (lower is better)."""
    chosen = labels == forget_class
    if not chosen.any():
        raise ValueError(f"no images generated for class {forget_class}")
    return float((predictions[chosen] == forget_class).float().mean())


def remaining_accuracy(per_class: dict[int, float], forget_class: int) -> float:
    """Mean per-class accuracy over the classes that were not forgotten."""
    values = [v for k, v in per_class.items() if k != forget_class]
    return sum(values) / len(values) if values else float("nan")
