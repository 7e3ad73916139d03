"""Classifier family: any torch.nn.Module classifier, with per-sample cross-entropy.

Holds what unlearning a classifier needs from the family — the loss, forget/remain splits (a
seeded random subset, or a whole class), the random-label transform of RL/SalUn (the objective and
mask a method uses come from erase/core/methods.py), batched probabilities for the metrics — plus
the models: the small digits CNN (also the bundled judge of generated digits
and the features for FID on digits) and torchvision's ResNet-18.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from erase.core.sfron import SFRonConfig, unlearn
from erase.core.sharding import draw_rows
from erase.data.loader import loader

ARCHITECTURES = ("digit-cnn", "resnet18")


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
    """Per-sample cross-entropy: the classifier family's loss for the core.

    Computed from float64 logits: in float32 a sample classified with a margin above ~17 gets a
    loss of exactly 0, and SFR-on's adaptive weights 1/(ℓ^λ + 1e-15) would then put all the weight
    on such samples, whose gradient is (nearly) zero — the forget step would do nothing.
    """
    inputs, labels = batch
    logits = model(inputs)
    losses = F.cross_entropy(logits.double(), labels, reduction="none")
    return losses.to(torch.promote_types(logits.dtype, torch.float32))


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


def build_resnet18(num_classes: int = 10, in_channels: int = 3, small_inputs: bool = True) -> nn.Module:
    """torchvision's ResNet-18; for small (CIFAR-size) inputs the stem is a 3×3 stride-1 conv without
    max-pooling, as in the unlearning literature's CIFAR ResNet-18."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if small_inputs or in_channels != 3:
        kernel, stride, padding = (3, 1, 1) if small_inputs else (7, 2, 3)
        model.conv1 = nn.Conv2d(in_channels, 64, kernel, stride=stride, padding=padding, bias=False)
    if small_inputs:
        model.maxpool = nn.Identity()
    model.config = {"arch": "resnet18", "num_classes": num_classes, "in_channels": in_channels, "small_inputs": small_inputs}
    return model


def build_classifier(arch: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A fresh classifier by name: 'digit-cnn' (1×8×8 digits) or 'resnet18'."""
    if arch == "digit-cnn":
        return DigitCNN(num_classes=num_classes, in_channels=in_channels)
    if arch == "resnet18":
        return build_resnet18(num_classes, in_channels, small_inputs=image_size <= 64)
    raise ValueError(f"unknown classifier architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def save_classifier(model: nn.Module, path) -> None:
    """Weights as safetensors; the constructor arguments ride in the metadata."""
    from erase.core.io import atomic_save_tensors

    if not isinstance(model, DigitCNN) and getattr(model, "config", {}).get("arch") != "resnet18":
        raise ValueError(f"save_classifier saves a DigitCNN or a build_resnet18 model, not {type(model).__name__}")
    kind = "DigitCNN" if isinstance(model, DigitCNN) else "resnet18"
    config = {k: v for k, v in model.config.items() if k != "arch"}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save_tensors(tensors, path, metadata={"class": kind, "config": json.dumps(config)})


def load_classifier(path) -> nn.Module:
    """Load a DigitCNN (or ResNet-18) saved by `save_classifier` (safetensors: nothing is unpickled)."""
    from erase.core.io import read_tensors
    from erase.errors import UserError

    state, metadata = read_tensors(path, "classifier weights")
    try:
        config = json.loads(metadata.get("config", "{}"))
        model = build_resnet18(**config) if metadata.get("class") == "resnet18" else DigitCNN(**config)
        model.load_state_dict(state)
    except (ValueError, TypeError, RuntimeError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise UserError(f"{path} is not a classifier saved by erase: {reason}") from None
    return model.eval()


# --- forget / remain data ------------------------------------------------------------------------


def random_forget_split(num_samples: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(forget indices, remain indices), sorted: a seeded random `fraction` of the training set is forgotten."""
    if not 0 < fraction < 1:
        raise ValueError(f"the forget fraction must be in (0, 1), got {fraction}")
    count = int(round(fraction * num_samples))
    if not 0 < count < num_samples:
        raise ValueError(f"a fraction of {fraction} of {num_samples} samples leaves an empty forget or remain set")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return order[:count].sort().values, order[count:].sort().values


def class_forget_split(labels: torch.Tensor, forget_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(forget indices, remain indices): every sample of `forget_class` is forgotten."""
    chosen = labels == forget_class
    if not chosen.any():
        raise ValueError(f"class {forget_class} has no training samples")
    return chosen.nonzero().flatten(), (~chosen).nonzero().flatten()


def random_other_labels(num_classes: int, seed: int = 0):
    """RL/SalUn's batch transform: each label becomes a uniformly drawn *other* class."""
    generator = torch.Generator().manual_seed(seed)

    def relabel(batch):
        inputs, labels = batch
        shift = draw_rows(lambda n: torch.randint(1, num_classes, (n,), generator=generator), len(labels))
        shift = shift.to(labels.device)  # drawn for the whole batch under several processes (erase.core.sharding)
        return inputs, (labels + shift) % num_classes

    return relabel


@torch.no_grad()
def probabilities(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax outputs, labels) over a whole dataset, in eval mode, on CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    for inputs, targets in loader(dataset, batch_size, seed=0, shuffle=False):
        probs.append(F.softmax(model(inputs.to(device)).float(), dim=-1).cpu())
        labels.append(torch.as_tensor(targets))
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


# --- training ------------------------------------------------------------------------------------


def fit(model: nn.Module, train_batches, config: SFRonConfig, show_progress: bool = True) -> nn.Module:
    """Supervised training (the original model, or the retrained reference): the core loop with remain
    steps only — i.e. fine-tuning on the training data — so there is no second training loop."""
    unlearn(model, None, cross_entropy_loss, None, train_batches, config, show_progress=show_progress)
    return model.eval()
