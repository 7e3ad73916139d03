"""Classifier family: any torch.nn.Module classifier, with per-sample cross-entropy.

Also holds the small CNN used on the digits: it is the bundled digit classifier that judges
generated images (FA) and gives the features for FID on digits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DigitCNN(nn.Module):
    """A small CNN for 1×8×8 digits; `features` gives the penultimate 128-d embedding."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.config = {"num_classes": num_classes, "in_channels": in_channels, "width": width}
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * 4 * 4, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def cross_entropy_loss(model: nn.Module, batch) -> torch.Tensor:
    """Per-sample cross-entropy: the classifier family's loss for the core."""
    inputs, labels = batch
    return F.cross_entropy(model(inputs), labels, reduction="none")


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted class per input, in eval mode, batched."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(inputs[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(inputs), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    augment_shift: int = 1,
) -> nn.Module:
    """Plain supervised training (Adam), with small random shifts so generated digits are judged robustly."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = images[idx]
            if augment_shift:
                dx, dy = torch.randint(-augment_shift, augment_shift + 1, (2,), generator=generator).tolist()
                x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return model


def save_classifier(model: DigitCNN, path) -> None:
    """Weights as safetensors; the constructor arguments ride in the metadata."""
    import json

    from erase.core.io import atomic_save_tensors

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save_tensors(tensors, path, metadata={"class": "DigitCNN", "config": json.dumps(model.config)})


def load_classifier(path) -> DigitCNN:
    """Load a DigitCNN saved by `save_classifier` (safetensors: nothing is unpickled)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    model = DigitCNN(**json.loads(metadata.get("config", "{}")))
    model.load_state_dict(load_file(str(path)))
    return model.eval()
