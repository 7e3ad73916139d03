"""FID/KID with torch-fidelity, on any registered feature extractor.

Offline there are no Inception weights, so the digits use the bundled digit classifier's
penultimate features, registered as a torch-fidelity feature extractor. Users with the standard
Inception weights on disk pass `weights_path` with extractor "inception-v3-compat".
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from erase.errors import UserError

DIGITS_EXTRACTOR = "erase-digit-cnn"


class UInt8Images(Dataset):
    """uint8 N×C×H×W tensor as the Dataset torch-fidelity reads."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("expected a uint8 N×C×H×W tensor")
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


class DigitCNNFeatureExtractor(FeatureExtractorBase):
    """The bundled digit classifier as a torch-fidelity extractor: uint8 images in, features out.

    Weights come from `feature_extractor_weights_path` (a safetensors file from
    `save_classifier`). Features are returned in `self.features_list` order, as torch-fidelity
    expects (it builds that list from a set, so a fixed order would pick the wrong layer).
    """

    FEATURES = ("penultimate", "logits")

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        from erase.families.classifier import load_classifier

        if feature_extractor_weights_path is None:
            raise ValueError(f"{name} needs feature_extractor_weights_path (the digit classifier safetensors)")
        self.classifier = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return DigitCNNFeatureExtractor.FEATURES

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        x = x.float() / 127.5 - 1.0
        penultimate = self.classifier.features(x)
        computed = {"penultimate": penultimate, "logits": self.classifier.fc2(penultimate)}
        return tuple(computed[name] for name in self.features_list)


def register_extractors() -> None:
    if DIGITS_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(DIGITS_EXTRACTOR, DigitCNNFeatureExtractor)


def fid_kid(
    generated: torch.Tensor,
    reference: torch.Tensor,
    feature_extractor: str = DIGITS_EXTRACTOR,
    weights_path: str | Path | None = None,
    feature_layer: str | None = None,
    kid: bool = True,
    cuda: bool = False,
) -> dict[str, float]:
    """FID (and KID) between two uint8 N×C×H×W image sets; returns {'fid', 'kid', 'kid_std'}."""
    register_extractors()
    kwargs = dict(
        input1=UInt8Images(generated), input2=UInt8Images(reference), fid=True, kid=kid, cuda=cuda,
        feature_extractor=feature_extractor, cache=False, save_cpu_ram=True, verbose=False,
    )
    if weights_path is not None:
        kwargs["feature_extractor_weights_path"] = str(weights_path)
    if feature_layer is not None:
        kwargs["feature_layer_fid"] = feature_layer
        kwargs["feature_layer_kid"] = feature_layer
    if kid:
        kwargs["kid_subset_size"] = min(len(generated), len(reference), 1000)
    try:
        metrics = torch_fidelity.calculate_metrics(**kwargs)
    except (OSError, RuntimeError) as error:
        if feature_extractor.startswith("inception") and weights_path is None:
            raise UserError(
                "the Inception weights could not be downloaded; pass the path of the "
                "pt_inception-2015-12-05 weights file you have on disk (--inception-weights)"
            ) from None
        raise
    out = {"fid": float(metrics["frechet_inception_distance"])}
    if kid:
        out["kid"] = float(metrics["kernel_inception_distance_mean"])
        out["kid_std"] = float(metrics["kernel_inception_distance_std"])
    return out
