"""Image datasets the user has on disk: an image folder (one sub-folder per class, ImageNet layout)
or torchvision-format CIFAR-10/100 and SVHN. Nothing is downloaded at run time.

Images come out as float tensors in [-1, 1] (C×H×W) with integer labels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from erase.errors import UserError

TORCHVISION_SETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN"}


def read_images_uint8(paths, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Image files as uint8 N×3×H×W (RGB), resized (bicubic) to size = (height, width) when given. A file
    that is not a readable image (truncated, corrupt, not an image) is a UserError naming it."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if size is not None and image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.BICUBIC)
                arrays.append(np.asarray(image))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
            raise UserError(f"{path} is not a readable image: {reason}") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UserError(f"the images mix sizes {sorted(shapes)[:3]}; resize them to one size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def image_transform(image_size: int | None, channels: int = 3):
    """Resize (shorter side) + center crop when a size is given; scale to [-1, 1]."""
    from torchvision import transforms

    steps = []
    if channels == 1:
        steps.append(transforms.Grayscale(1))
    if image_size:
        steps += [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    steps += [transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)]
    return transforms.Compose(steps)


def open_image_dataset(
    source: str | Path, split: str = "train", image_size: int | None = None, root: str | Path | None = None
) -> Dataset:
    """An image-folder path, or 'cifar10' / 'cifar100' / 'svhn' read from `root` in torchvision's layout.

    The dataset has `.classes` (names) and yields (image in [-1, 1], label).
    """
    import torchvision

    name = str(source).lower()
    if name in TORCHVISION_SETS:
        root = Path(root or Path("data") / name)
        cls = getattr(torchvision.datasets, TORCHVISION_SETS[name])
        kwargs = {"split": "train" if split == "train" else "test"} if name == "svhn" else {"train": split == "train"}
        try:
            dataset = cls(str(root), download=False, transform=image_transform(image_size), **kwargs)
        except RuntimeError:
            raise UserError(
                f"{name} is not in {root}: put torchvision's {TORCHVISION_SETS[name]} files there "
                f"(e.g. {root}/cifar-10-batches-py) or pass --data-root; nothing is downloaded"
            ) from None
        if name == "svhn":
            dataset.classes = [str(i) for i in range(10)]
        return dataset
    path = Path(source)
    if not path.is_dir():
        raise UserError(f"no such dataset folder: {path} (or name one of {', '.join(TORCHVISION_SETS)})")
    split_dir = path / split
    folder = split_dir if split_dir.is_dir() else path
    try:
        return torchvision.datasets.ImageFolder(str(folder), transform=image_transform(image_size))
    except (FileNotFoundError, RuntimeError) as error:
        raise UserError(f"{folder} is not an image folder with one sub-folder per class: {error}") from None


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """All labels without decoding images (ImageFolder .targets, CIFAR .targets, SVHN .labels)."""
    for attribute in ("targets", "labels"):
        if hasattr(dataset, attribute):
            return torch.as_tensor(getattr(dataset, attribute), dtype=torch.long)
    return torch.as_tensor([dataset[i][1] for i in range(len(dataset))], dtype=torch.long)


def load_class_tensors(dataset: Dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the chosen items into (images, labels) tensors."""
    items = [dataset[int(i)] for i in indices]
    if not items:
        raise UserError("no images selected from the dataset")
    return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items], dtype=torch.long)
