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


class PenultimateFeatureExtractor(FeatureExtractorBase):
    """A classifier as a torch-fidelity extractor: uint8 images in, (penultimate, logits) features out.

    Features are returned in `self.features_list` order, as torch-fidelity expects (it builds that
    list from a set, so a fixed order would pick the wrong layer). Subclasses give `features_and_logits`.
    """

    FEATURES = ("penultimate", "logits")
    DUMMY_SHAPE = (1, 3, 32, 32)

    @staticmethod
    def get_provided_features_list():
        return PenultimateFeatureExtractor.FEATURES

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    def get_dummy_input_for_compile(self):
        return torch.zeros(self.DUMMY_SHAPE, dtype=torch.uint8)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x):
        penultimate, logits = self.features_and_logits(x)
        computed = {"penultimate": penultimate, "logits": logits}
        return tuple(computed[name] for name in self.features_list)


class DigitCNNFeatureExtractor(PenultimateFeatureExtractor):
    """The bundled digit classifier; weights from `feature_extractor_weights_path` (`save_classifier` safetensors)."""

    DUMMY_SHAPE = (1, 1, 8, 8)

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        from erase.families.classifier import load_classifier

        if feature_extractor_weights_path is None:
            raise ValueError(f"{name} needs feature_extractor_weights_path (the digit classifier safetensors)")
        self.classifier = load_classifier(feature_extractor_weights_path)

    def features_and_logits(self, x):
        penultimate = self.classifier.features(x.float() / 127.5 - 1.0)
        return penultimate, self.classifier.fc2(penultimate)


def register_extractors() -> None:
    if DIGITS_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(DIGITS_EXTRACTOR, DigitCNNFeatureExtractor)


def calculate_metrics(kwargs: dict) -> dict:
    """torch_fidelity.calculate_metrics on a fork of torch's global generator.

    torch-fidelity draws from the global generator; forking it means an evaluation in the middle of
    a run (bench/steps_to_forget.py evaluates every few steps) does not change that run's training.
    """
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if kwargs.get("cuda") else []):
        return torch_fidelity.calculate_metrics(**kwargs)


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
        metrics = calculate_metrics(kwargs)
    except (OSError, RuntimeError):
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


# --- Full-size settings: Inception from a local file, a user classifier's features, image folders ----

INCEPTION_EXTRACTOR = "erase-inception-v3"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's own file name


def _local_inception_class():
    """torch-fidelity's InceptionV3, with weights read from a local file without unpickling.

    torch-fidelity itself reads a weights path with torch.load(weights_only=False) and otherwise
    downloads; here the file is read with safetensors or torch.load(weights_only=True) and handed to
    its constructor in place of the download, so nothing is fetched and nothing is unpickled.
    """
    from torch_fidelity import feature_extractor_inceptionv3 as inception_module

    class LocalInceptionV3(inception_module.FeatureExtractorInceptionV3):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            from erase.eval.classify_images import read_state_dict

            if feature_extractor_weights_path is None:
                raise ValueError(f"{name} needs feature_extractor_weights_path (local Inception weights)")
            state = read_state_dict(feature_extractor_weights_path)
            original = inception_module.load_state_dict_from_url
            inception_module.load_state_dict_from_url = lambda *args, **kw: state
            try:
                super().__init__(name, features_list, feature_extractor_weights_path=None, **kwargs)
            finally:
                inception_module.load_state_dict_from_url = original

    return LocalInceptionV3


def find_inception_weights(path=None) -> Path:
    """The given file, or torch-fidelity's file in the torch hub cache; a clear one-line error otherwise."""
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"no such Inception weights file: {path}")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return cached
    raise UserError(
        f"FID with Inception needs its weights on disk and nothing is downloaded: pass --inception-weights "
        f"PATH (torch-fidelity's {INCEPTION_FILE}), or use a classifier's features (--features-classifier)"
    )


def classifier_extractor(classifier) -> str:
    """Register a loaded ImageClassifier as a torch-fidelity extractor (penultimate features, logits)."""

    class ClassifierFeatureExtractor(PenultimateFeatureExtractor):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.classifier = classifier

        def features_and_logits(self, x):
            penultimate = self.classifier.features(x)
            return penultimate, last_layer(self.classifier)(penultimate)

    name = f"erase-classifier-{id(classifier):x}"
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(name, ClassifierFeatureExtractor)
    return name


def last_layer(classifier):
    from erase.eval.classify_images import last_linear

    return last_linear(classifier.model)


def fid_features(inception_weights=None, classifier=None) -> tuple[str, str | None, str]:
    """(extractor name, weights path, description): Inception when weights are given (or cached),
    else the classifier's penultimate features when one is given, else the one-line Inception error."""
    if inception_weights or classifier is None:
        weights = find_inception_weights(inception_weights)
        if INCEPTION_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(INCEPTION_EXTRACTOR, _local_inception_class())
        return INCEPTION_EXTRACTOR, str(weights), "Inception-v3 pool3 (2048)"
    return classifier_extractor(classifier), None, f"{classifier.arch} penultimate features"


def folder_fid_kid(
    generated_dir, reference_dir, feature_extractor: str, weights_path=None, kid: bool = True,
    image_size: int | None = None, cuda: bool | None = None, batch_size: int = 64,
) -> dict[str, float]:
    """FID (and KID) between two image folders, read lazily by torch-fidelity (fits 50k-image sets)."""
    import io
    import os
    from contextlib import redirect_stdout

    from erase.eval.classify_images import image_files

    counts = [len(image_files(folder)) for folder in (generated_dir, reference_dir)]
    if min(counts) < 2:
        raise UserError(f"FID needs at least 2 images in each folder, got {counts[0]} and {counts[1]}")
    kwargs = dict(
        input1=str(generated_dir), input2=str(reference_dir), fid=True, kid=kid,
        cuda=torch.cuda.is_available() if cuda is None else cuda, feature_extractor=feature_extractor,
        cache=False, verbose=False, samples_find_deep=True, samples_find_ext="png,jpg,jpeg",
        batch_size=batch_size, save_cpu_ram=(os.cpu_count() or 1) < 4,  # no loader workers on small machines
    )
    if weights_path is not None:
        kwargs["feature_extractor_weights_path"] = str(weights_path)
    if image_size:
        kwargs["samples_resize_and_crop"] = image_size
    if kid:
        kwargs["kid_subset_size"] = min(counts[0], counts[1], 1000)
    with redirect_stdout(io.StringIO()):
        try:
            metrics = calculate_metrics(kwargs)
        except RuntimeError as error:
            raise UserError(f"FID failed: {str(error).splitlines()[0]}") from None
        except (OSError, SyntaxError) as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise  # a real I/O failure, not an image PIL cannot decode
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise UserError(f"an image in {generated_dir} or {reference_dir} is not readable: {reason}") from None
    out = {"fid": float(metrics["frechet_inception_distance"]), "generated": counts[0], "reference": counts[1]}
    if kid:
        out["kid"] = float(metrics["kernel_inception_distance_mean"])
        out["kid_std"] = float(metrics["kernel_inception_distance_std"])
    return out
