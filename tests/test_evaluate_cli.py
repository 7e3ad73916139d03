"""`erase evaluate classifier` and `erase evaluate fid` on image folders, with real (tiny) classifiers."""

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from erase.cli import main
from erase.eval.classify_images import load_image_classifier, read_state_dict

NAMES = ["cat", "dog", "ship"]


def write_images(folder: Path, colour: int, count: int, seed: int, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 50, (size, size, 3)).astype(np.uint8)
        pixels[..., colour] += 200
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A colour-coded 3-class dataset, a ResNet-18 fine-tuned on it by `erase pretrain classifier`,
    and held-out folders of each class."""
    root = tmp_path_factory.mktemp("evaluate")
    for k, name in enumerate(NAMES):
        write_images(root / "data" / "train" / name, k, 10, seed=k)
        write_images(root / "data" / "test" / name, k, 3, seed=10 + k)
        write_images(root / "held_out" / name, k, 6, seed=20 + k)
    imagenet_weights = root / "resnet18-imagenet.pth"  # stands in for torchvision's ImageNet weights file
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), imagenet_weights)
    classifier = root / "classifier.safetensors"
    assert main(["pretrain", "classifier", "--data", str(root / "data"), "--arch", "resnet18", "--image-size", "16",
                 "--init-weights", str(imagenet_weights), "--epochs", "3", "--batch-size", "15",
                 "--out", str(classifier)]) == 0
    return root, classifier


def test_fa_on_a_folder_with_a_toolkit_classifier(setup, tmp_path, capsys):
    root, classifier = setup
    out = tmp_path / "fa.json"
    assert main(["evaluate", "classifier", str(root / "held_out" / "dog"), "--classifier", str(classifier),
                 "--label", "dog", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["label"] == 1 and result["images"] == 6
    assert result["fa"] == 1.0 and result["mean_probability"] > 0.5 and result["top_predictions"] == {"dog": 6}
    assert main(["evaluate", "classifier", str(root / "held_out" / "dog"), "--classifier", str(classifier),
                 "--label", "0", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["fa"] == 0.0  # none of the dog images is labelled cat
    assert "FA 0.000: 0 of 6 images labelled 0 (cat)" in capsys.readouterr().out


def test_plain_torchvision_weights_file_gives_the_same_verdict(setup, tmp_path):
    """The official protocol ships plain state dicts (torch.save): read with weights_only=True."""
    root, classifier = setup
    model = load_image_classifier(classifier).model
    plain = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, plain)
    assert read_state_dict(plain).keys() == model.state_dict().keys()
    out = tmp_path / "fa.json"
    assert main(["evaluate", "classifier", str(root / "held_out" / "ship"), "--classifier", str(plain),
                 "--arch", "resnet18", "--image-size", "16", "--normalize", "half", "--label", "2",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["fa"] == 1.0


def test_classifier_user_errors_are_one_line(setup, tmp_path, capsys):
    root, classifier = setup
    pickled = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module: refused, never unpickled
    folder = str(root / "held_out" / "dog")
    assert main(["evaluate", "classifier", folder, "--classifier", str(pickled), "--arch", "resnet18", "--label", "1"]) == 2
    assert main(["evaluate", "classifier", folder, "--classifier", str(pickled), "--label", "1"]) == 2
    assert main(["evaluate", "classifier", folder, "--classifier", str(classifier), "--label", "horse"]) == 2
    assert main(["evaluate", "classifier", str(tmp_path), "--classifier", str(classifier), "--label", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("erase: error:") == 4 and "Traceback" not in err
    assert "weights_only" in err and "--arch" in err and "horse" in err and "holds no images" in err


def test_fid_on_classifier_features(setup, tmp_path, capsys):
    root, classifier = setup
    out = tmp_path / "fid.json"
    same = main(["evaluate", "fid", str(root / "held_out"), str(root / "held_out"), "--features-classifier",
                 str(classifier), "--out", str(out)])
    assert same == 0
    identical = json.loads(out.read_text())
    assert identical["generated"] == identical["reference"] == 18 and abs(identical["fid"]) < 1e-3
    assert main(["evaluate", "fid", str(root / "held_out" / "dog"), str(root / "data" / "train"),
                 "--features-classifier", str(classifier), "--out", str(out)]) == 0
    different = json.loads(out.read_text())
    assert different["fid"] > 1.0 and different["features"] == "resnet18 penultimate features"
    assert "KID" in capsys.readouterr().out


def test_fid_without_inception_weights_is_one_clear_line(setup, tmp_path, monkeypatch, capsys):
    root, _ = setup
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # no cached Inception weights
    assert main(["evaluate", "fid", str(root / "held_out"), str(root / "data" / "train")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--inception-weights" in err and "nothing is downloaded" in err


def test_inception_weights_come_from_a_local_file_without_unpickling(tmp_path):
    """Inception-v3 for FID with weights from a local file (random weights stand in for the real file,
    which cannot be downloaded here); torch-fidelity's own reader would unpickle (weights_only=False)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from erase.eval.fid import fid_features

    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):
        with mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", return_value={}):
            random_inception = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in random_inception.state_dict().items()}, str(weights))

    name, path, description = fid_features(inception_weights=weights)
    assert path == str(weights) and description.startswith("Inception")
    with mock.patch("torch.load", side_effect=AssertionError("unpickling")):
        extractor = FEATURE_EXTRACTORS_REGISTRY[name](name, ["2048", "logits"], feature_extractor_weights_path=path)
    for key, value in random_inception.state_dict().items():
        assert torch.equal(extractor.state_dict()[key], value), key
    features, logits = extractor(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    assert features.shape == (1, 2048) and logits.shape == (1, 1008)
