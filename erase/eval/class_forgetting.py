"""Before/after evaluation of class forgetting in a generator with a classifier the user supplies.

The model generates, with fixed seeds, `forget_samples` images of the forgotten class and
`samples_per_class` of each evaluated remaining class. The classifier gives FA (share of the
forgotten class's images still recognised as it; lower is better), the mean probability of the
forgotten class and per-class accuracy; FID/KID compare the remaining classes' images with real
ones (Inception from a local weights file, or the classifier's features). Family-agnostic: the
family hands in `generate(model, labels, seed) -> [-1, 1] images`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from erase.errors import UserError
from erase.eval.accuracy import forgetting_accuracy, per_class_accuracy, remaining_accuracy


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def load_reference(source, exclude_class: int, limit: int, image_size: int | None, root=None, split: str = "train",
                   seed: int = 0, classes=None) -> torch.Tensor:
    """Real images of the remaining classes (or of `classes`) as uint8, at most `limit`, seeded.

    `source`: an image folder or 'cifar10' (opened here), or an already opened labelled dataset.
    """
    from erase.data.images import dataset_labels, load_class_tensors, open_image_dataset

    opened = not isinstance(source, (str, Path))
    dataset = source if opened else open_image_dataset(source, split=split, image_size=image_size, root=root)
    labels = dataset_labels(dataset)
    keep = labels != exclude_class
    if classes is not None:
        keep &= torch.isin(labels, torch.as_tensor(list(classes)))
    idx = keep.nonzero().flatten()
    if len(idx) < 2:
        raise UserError(f"{getattr(source, 'root', source)} has fewer than 2 reference images of the remaining classes")
    if len(idx) > limit:
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:limit]].sort().values
    images, _ = load_class_tensors(dataset, idx)
    return to_uint8(images)


class ClassForgettingEvaluator:
    """FA, per-class accuracy and FID of a generator, with a user classifier; same call shape as the
    digits evaluator: `evaluate(model, name) -> dict` with a 'grid' of images."""

    def __init__(
        self,
        cfg: dict,
        num_classes: int,
        forget_class: int,
        generate: Callable,
        reference: torch.Tensor | None = None,
        eval_classes: list[int] | None = None,
    ):
        from erase.eval.classify_images import load_image_classifier
        from erase.recipes import resolve_path

        self.num_classes, self.forget_class, self.generate = num_classes, forget_class, generate
        self.forget_samples = int(cfg.get("forget_samples", 500))
        self.per_class = int(cfg.get("samples_per_class", 100))
        self.seed = int(cfg.get("seed", 0))
        self.classifier = None
        if cfg.get("classifier"):
            self.classifier = load_image_classifier(
                resolve_path(cfg["classifier"]), arch=cfg.get("arch") or None,
                image_size=cfg.get("classifier_image_size") or None, normalize=cfg.get("normalize") or None,
                device="cuda" if torch.cuda.is_available() else "cpu",
            )
            if self.classifier.num_classes < num_classes:
                raise UserError(f"the classifier knows {self.classifier.num_classes} classes, the model {num_classes}")
        others = [k for k in (eval_classes or range(num_classes)) if k != forget_class]
        self.eval_classes = [forget_class] + others
        counts = [self.forget_samples] + [self.per_class] * len(others)
        self.labels = torch.cat([torch.full((n,), k) for k, n in zip(self.eval_classes, counts)])
        self.reference = reference
        self.fid = bool(cfg.get("fid", True)) and reference is not None and len(others) > 0
        self.kid = bool(cfg.get("kid", True))
        self.extractor = self.weights = self.features = None
        if self.fid:
            from erase.eval.fid import fid_features

            features = cfg.get("fid_features", "inception")
            if features not in ("inception", "classifier"):
                raise UserError(f"eval.fid_features must be inception or classifier, got {features!r}")
            if features == "classifier" and self.classifier is None:
                raise UserError("eval.fid_features = \"classifier\" needs eval.classifier")
            self.extractor, self.weights, self.features = fid_features(
                cfg.get("inception_weights") or None if features == "inception" else None,
                self.classifier if features == "classifier" else None,
            )

    def evaluate(self, model, name: str) -> dict:
        images = self.generate(model, self.labels, self.seed)
        images_u8 = to_uint8(images)
        result = {"fa": None, "remaining_accuracy": None, "per_class_accuracy": None, "forget_class_probability": None}
        if self.classifier is not None:
            probs = self.classifier.logits(images_u8).softmax(-1)
            predictions = probs.argmax(-1)
            per_class = per_class_accuracy(predictions, self.labels, self.num_classes)
            result.update(
                fa=forgetting_accuracy(predictions, self.labels, self.forget_class),
                remaining_accuracy=remaining_accuracy(per_class, self.forget_class),
                per_class_accuracy={str(k): v for k, v in per_class.items()},
                forget_class_probability=float(probs[self.labels == self.forget_class, self.forget_class].mean()),
            )
        result.update(fid=None, kid=None, fid_features=self.features or "not measured")
        if self.fid:
            from erase.eval.fid import fid_kid

            remaining = self.labels != self.forget_class
            scores = fid_kid(images_u8[remaining], self.reference, self.extractor, self.weights, kid=self.kid,
                             cuda=torch.cuda.is_available())
            result.update(fid=scores["fid"], kid=scores.get("kid"))
        result["grid"] = self.grid(images)
        return result

    def grid(self, images: torch.Tensor, rows: int = 4, columns: int = 10) -> torch.Tensor:
        """`rows` images of each of the first `columns` evaluated classes (the forgotten one first)."""
        picked = []
        for r in range(rows):
            for k in self.eval_classes[:columns]:
                idx = (self.labels == k).nonzero().flatten()
                picked.append(images[idx[r % len(idx)]])
        return torch.stack(picked)

    @property
    def grid_columns(self) -> int:
        return min(len(self.eval_classes), 10)
