"""The classifier that judges generated images (FA): a torchvision model with its preprocessing.

Three sources, all read without unpickling:
  * a classifier fine-tuned by the toolkit (`erase pretrain classifier`): safetensors whose metadata
    names the architecture, the classes, the input size and the normalisation;
  * a classifier trained by the classifier family (digits CNN, CIFAR ResNet-18): delegated to it;
  * any torchvision architecture plus a local weights file the user has (safetensors, or a state
    dict read with torch.load(weights_only=True)), e.g. the ResNet-34 of the official protocol.
The official CIFAR-10 protocol: ResNet-34 fine-tuned from ImageNet weights, inputs resized to
224×224 and scaled to [-1, 1] ("half" normalisation), 500 generated images of the forgotten class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from erase.core.io import read_tensors
from erase.errors import UserError

NORMALIZATIONS = {
    "half": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),  # [-1, 1], as the official protocol and the DDPM data
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # torchvision's ImageNet weights
}
TOOLKIT_CLASS = "torchvision-classifier"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class ImageClassifier:
    """A model plus how images must look to it. Images go in as uint8 N×C×H×W."""

    model: nn.Module
    arch: str
    image_size: int | None
    mean: list[float]
    std: list[float]
    classes: list[str] | None = None
    in_channels: int = 3
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return last_linear(self.model).out_features

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        x = images.to(device).float() / 255.0
        if x.shape[1] != self.in_channels:
            x = x.mean(1, keepdim=True) if self.in_channels == 1 else x.expand(-1, self.in_channels, -1, -1)
        if self.image_size and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        mean = torch.tensor(self.mean[: self.in_channels], device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std[: self.in_channels], device=device).view(1, -1, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.model.eval()
        out = [self.model(self.preprocess(images[i : i + batch_size])).float().cpu()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features: the input of the last linear layer (for FID on classifier features)."""
        captured = []
        handle = last_linear(self.model).register_forward_hook(lambda m, inputs, output: captured.append(inputs[0]))
        try:
            self.model.eval()
            self.model(self.preprocess(images))
        finally:
            handle.remove()
        return captured[0].flatten(1).float()


def verdicts(classifier: ImageClassifier, images: torch.Tensor, label: int, logits: torch.Tensor | None = None) -> dict:
    """The official protocol's numbers for images generated for `label`: share predicted as it (FA),
    mean probability of it, mean entropy of the prediction, and the predicted-class histogram.
    `logits`: the classifier's logits of `images` when the caller has them already."""
    logits = classifier.logits(images) if logits is None else logits
    probs = logits.softmax(-1)
    predictions = probs.argmax(-1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    counts = torch.bincount(predictions, minlength=probs.shape[1])
    top = [(int(k), int(counts[k])) for k in counts.argsort(descending=True)[:5] if counts[k] > 0]
    return {
        "label": label,
        "images": len(logits),
        "fa": float((predictions == label).float().mean()),
        "mean_probability": float(probs[:, label].mean()),
        "mean_entropy": float(entropy.mean()),
        "top_predictions": {(classifier.classes[k] if classifier.classes else str(k)): n for k, n in top},
    }


# --- building and loading ------------------------------------------------------------------------


def build_torchvision(arch: str, num_classes: int) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, arch, None)
    if builder is None or not callable(builder) or arch.startswith("_") or arch[0].isupper():
        raise UserError(f"unknown torchvision architecture {arch!r} (e.g. resnet18, resnet34, resnet50)")
    return builder(weights=None, num_classes=num_classes)


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no linear layer to classify with")
    return linears[-1]


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """safetensors, or a torch.save'd state dict read with weights_only=True; unwraps {'state_dict': ...}
    and {'model': ...} and strips DataParallel's 'module.' prefix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such weights file: {path}")
    if path.suffix == ".safetensors":
        state = read_tensors(path, "classifier weights")[0]
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # pickle errors come in many types
            raise UserError(f"{path} is not a plain state dict that loads with weights_only=True: "
                            f"{str(error).splitlines()[0]}") from None
    for key in ("state_dict", "model", "ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_metadata(path) -> dict:
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    return read_tensors(path, "classifier weights")[1]


def load_image_classifier(
    path, arch: str | None = None, num_classes: int | None = None, image_size: int | None = None,
    normalize: str | None = None, device: str | torch.device = "cpu",
) -> ImageClassifier:
    """Any of the three sources (see the module docstring); explicit arguments override the metadata."""
    path = Path(path)
    metadata = read_metadata(path)
    if not path.is_file():
        raise UserError(f"no such classifier file: {path}")
    if metadata.get("class") == TOOLKIT_CLASS:
        meta = json.loads(metadata["config"])
        model = build_torchvision(meta["arch"], meta["num_classes"])
        model.load_state_dict(read_state_dict(path))
        mean, std = (NORMALIZATIONS[normalize] if normalize else (meta["mean"], meta["std"]))
        classifier = ImageClassifier(model, meta["arch"], image_size or meta["image_size"], mean, std,
                                     meta.get("classes"), info=meta)
    elif metadata.get("class") in ("DigitCNN", "resnet18"):
        from erase.families.classifier import load_classifier

        model = load_classifier(path)
        config = json.loads(metadata.get("config", "{}"))
        in_channels = int(config.get("in_channels", 1 if metadata["class"] == "DigitCNN" else 3))
        size = image_size or (8 if metadata["class"] == "DigitCNN" else None)
        mean, std = NORMALIZATIONS[normalize or "half"]
        classifier = ImageClassifier(model, metadata["class"], size, mean, std, in_channels=in_channels)
    else:
        if not arch:
            raise UserError(f"{path} is a plain weights file: say which torchvision architecture it is (--arch, or eval.arch in a recipe)")
        state = read_state_dict(path)
        if num_classes is None:
            matrices = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
            if not matrices:
                raise UserError(f"{path} has no linear layer weights; pass --num-classes")
            num_classes = matrices[-1].shape[0]
        model = build_torchvision(arch, num_classes)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise UserError(f"{path} does not fit torchvision's {arch}: {str(error).splitlines()[0]}") from None
        mean, std = NORMALIZATIONS[normalize or "imagenet"]
        classifier = ImageClassifier(model, arch, image_size or 224, mean, std)
    classifier.model.to(device).eval().requires_grad_(False)
    return classifier


def save_image_classifier(classifier: ImageClassifier, path, extra: dict | None = None) -> None:
    from erase.core.io import atomic_save_tensors

    config = {
        "arch": classifier.arch, "num_classes": classifier.num_classes, "image_size": classifier.image_size,
        "mean": classifier.mean, "std": classifier.std, "classes": classifier.classes, **(extra or {}),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in classifier.model.state_dict().items()}
    atomic_save_tensors(tensors, path, metadata={"class": TOOLKIT_CLASS, "config": json.dumps(config)})


# --- images on disk ------------------------------------------------------------------------------


def image_files(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"no such image folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_images_uint8(folder, size: int | None = None, limit: int | None = None) -> torch.Tensor:
    """All images of a folder (recursively, sorted) as uint8 N×3×H×W; `size` resizes them to size×size."""
    from erase.data.images import read_images_uint8

    try:
        return read_images_uint8(image_files(folder)[:limit], (size, size) if size else None)
    except UserError as error:
        if "mix sizes" not in str(error):
            raise
        raise UserError(f"{folder}: {error}; pass --image-size to resize them") from None
