"""Classifier family: splits, relabelling, models, and `erase classifier` (its methods: test_methods.py)."""

import json

import pytest
import torch

from erase.cli import main
from erase.families.classifier import (
    DigitCNN,
    build_classifier,
    class_forget_split,
    load_classifier,
    random_forget_split,
    random_other_labels,
    save_classifier,
)


def test_random_split_is_reproducible_by_seed():
    forget_a, remain_a = random_forget_split(1000, 0.1, seed=3)
    forget_b, remain_b = random_forget_split(1000, 0.1, seed=3)
    forget_c, _ = random_forget_split(1000, 0.1, seed=4)
    assert torch.equal(forget_a, forget_b) and torch.equal(remain_a, remain_b)
    assert not torch.equal(forget_a, forget_c)
    assert len(forget_a) == 100 and len(remain_a) == 900
    assert sorted(forget_a.tolist() + remain_a.tolist()) == list(range(1000))  # a partition


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.0001])
def test_random_split_rejects_empty_sides(fraction):
    with pytest.raises(ValueError):
        random_forget_split(100, fraction, seed=0)


def test_class_split():
    labels = torch.tensor([0, 1, 2, 1, 0, 1])
    forget, remain = class_forget_split(labels, 1)
    assert forget.tolist() == [1, 3, 5] and remain.tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="no training samples"):
        class_forget_split(labels, 7)


def test_random_labels_are_always_another_class():
    labels = torch.randint(0, 10, (2000,))
    _, relabelled = random_other_labels(10, seed=0)((None, labels))
    assert not torch.any(relabelled == labels)
    assert relabelled.min() >= 0 and relabelled.max() <= 9
    assert len(relabelled.unique()) == 10


@pytest.mark.parametrize("arch", ["digit-cnn", "resnet18"])
def test_save_and_load_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    model = build_classifier(arch, num_classes=4, in_channels=1, image_size=8).eval()
    save_classifier(model, tmp_path / "c.safetensors")
    loaded = load_classifier(tmp_path / "c.safetensors")
    x = torch.randn(2, 1, 8, 8)
    assert type(loaded) is type(model)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)


# --- the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "digits", "--forget", "class", "--forget-class", "12"], "forget.class must be in [0, 9]"),
        (["--dataset", "digits", "--forget", "random", "--fraction", "1.5"], "forget.fraction must be below 1"),
        (["--dataset", "/no/such/folder", "--forget", "random"], "neither digits"),
        (["--dataset", "cifar10", "--forget", "random", "--data-root", "{tmp}/empty"], "nothing is downloaded"),
        (["--dataset", "digits", "--forget", "random", "--model", "{tmp}/missing.safetensors"], "no such classifier"),
        (["--dataset", "digits", "--forget", "random", "--set", "sfron.lr=-1"], "sfron.lr must be in (0, ∞)"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["classifier", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def test_classifier_command_end_to_end_on_digits(tmp_path, capsys):
    """A short run with --retrain: every method's metrics.json has the four metrics and the gaps."""
    out = tmp_path / "run"
    code = main([
        "classifier", "--dataset", "digits", "--forget", "class", "--forget-class", "3", "--method", "sfron",
        "--steps", "10", "--retrain", "--out", str(out), "--set", "train.steps=40",
    ])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("ua", "ra", "ta", "mia", "seconds", "avg_gap"):
        assert isinstance(metrics[name], float), name
    assert set(metrics["gap"]) == {"ua", "ra", "ta", "mia"}
    assert metrics["avg_gap"] == pytest.approx(sum(metrics["gap"].values()) / 4)
    assert metrics["gap"]["ua"] == pytest.approx(abs(metrics["ua"] - metrics["retrained"]["ua"]))
    assert metrics["retrained"]["ua"] == 1.0  # never trained on digit 3: it cannot name it
    assert 0 < metrics["mask_fraction"] < 1 and len(metrics["history"]) == 10
    for name in ("model.safetensors", "original.safetensors", "retrained.safetensors", "mask.safetensors", "config.toml"):
        assert (out / name).is_file(), name
    assert "UA" in capsys.readouterr().out
    model = load_classifier(out / "model.safetensors")
    assert isinstance(model, DigitCNN)

    # the same original, a baseline, no retraining: no gap keys; ga changes no mask
    code = main([
        "classifier", "--dataset", "digits", "--forget", "random", "--fraction", "0.1", "--method", "ga",
        "--steps", "5", "--model", str(out / "original.safetensors"), "--out", str(tmp_path / "ga"),
    ])
    assert code == 0
    metrics = json.loads((tmp_path / "ga" / "metrics.json").read_text())
    assert "gap" not in metrics and metrics["mask_fraction"] == 1.0 and metrics["forget_size"] == 144
