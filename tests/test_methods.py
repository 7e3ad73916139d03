"""erase.core.methods: the one place where a method becomes an objective, a mask and a cached Fisher."""

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from erase.core.methods import (
    ESD,
    FisherCache,
    forget_objective,
    method_mask,
    method_spec,
    weights_fingerprint,
    with_forget_loss,
)
from erase.core.sfron import SFRonConfig
from erase.families import ddpm
from erase.data.loader import loader
from erase.families.classifier import DigitCNN, cross_entropy_loss, random_other_labels
from erase.workflows import ddpm_class


def _tiny_problem():
    torch.manual_seed(0)
    model = DigitCNN(num_classes=3, width=4)
    images, labels = torch.randn(24, 1, 8, 8), torch.randint(0, 3, (24,))
    forget = loader(TensorDataset(images[:8], labels[:8]), 4, seed=0)
    remain = loader(TensorDataset(images[8:], labels[8:]), 4, seed=1)
    return model, forget, remain


def test_each_method_gets_its_objective_and_mask():
    model, forget, remain = _tiny_problem()
    names = dict(model.named_parameters())
    relabel = random_other_labels(3)
    for method in ("sfron", "ga", "rl", "salun", "ft"):
        spec = method_spec(method)
        objective = forget_objective(spec, cross_entropy_loss, 0.5, relabel=relabel)
        mask, fisher = method_mask(spec, model, cross_entropy_loss, forget, remain, 1.0, salun_fraction=0.25)
        assert (objective is None) == (method == "ft")
        assert (mask is None) == (method in ("ga", "rl", "ft")) and (fisher is not None) == (method == "sfron")
        if mask is not None:
            assert set(mask) == set(names) and all(mask[n].shape == names[n].shape for n in mask)
        if method == "salun":
            kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
            assert kept == pytest.approx(0.25, abs=0.01)
    batch = next(iter(forget))
    ascent, reported = forget_objective(method_spec("ga"), cross_entropy_loss, 0.5)(model, batch)
    assert ascent.item() == pytest.approx(-cross_entropy_loss(model, batch).mean().item(), rel=1e-5)
    assert reported.item() == pytest.approx(cross_entropy_loss(model, batch).mean().item(), rel=1e-5)


def test_sfron_mask_is_the_fisher_ratio():
    model, forget, remain = _tiny_problem()
    strict, (fisher_f, fisher_r) = method_mask(method_spec("sfron"), model, cross_entropy_loss, forget, remain, 3.0)
    for name in strict:
        assert torch.equal(strict[name], (fisher_f[name] + 1e-15) / (fisher_r[name] + 1e-15) >= 3.0)


def test_method_names_and_forget_losses():
    assert method_spec("esd", ("sfron", "esd")) is ESD
    with pytest.raises(ValueError, match="choose one of sfron, ga"):
        method_spec("esd", ("sfron", "ga"))
    mapping = with_forget_loss(method_spec("sfron"), "mapping")
    assert (mapping.forget, mapping.mask) == ("descent", "fisher")
    adaptive = with_forget_loss(method_spec("ga"), "adaptive")
    assert adaptive.forget == "ascent" and adaptive.adaptive and adaptive.mask is None
    with pytest.raises(ValueError, match="forget_loss must be one of"):
        with_forget_loss(method_spec("rl"), "mappping")


def test_fisher_cache_reads_back_only_its_own_key(tmp_path):
    model, forget, remain = _tiny_problem()
    spec = method_spec("sfron")
    key = {"weights": weights_fingerprint(model), "class": 1}
    _, computed = method_mask(spec, model, cross_entropy_loss, forget, remain, 1.0, cache=FisherCache(tmp_path, key))
    assert json.loads((tmp_path / "fisher.json").read_text())["key"] == key
    loaded = FisherCache(tmp_path, key).load()
    assert all(torch.equal(loaded[0][n], computed[0][n]) for n in computed[0])
    assert FisherCache(tmp_path, {**key, "class": 2}).load() is None  # computed for another class
    assert FisherCache(tmp_path, key, reuse=False).load() is None
    (tmp_path / "fisher_remain.safetensors").write_bytes(b"\x00" * 10)  # damaged: recomputed, not an error
    assert FisherCache(tmp_path, key).load() is None


def test_weights_fingerprint_tells_weights_and_trained_part_apart():
    model, _, _ = _tiny_problem()
    first = weights_fingerprint(model)
    assert weights_fingerprint(model) == first
    model.fc2.requires_grad_(False)
    assert weights_fingerprint(model) != first
    model.fc2.requires_grad_(True)
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] += 1e-3
    assert weights_fingerprint(model) != first


def test_class_ddpm_fisher_reuse_recomputes_for_another_class(tmp_path):
    """fisher.reuse used to read back a cache made for another forgotten class without noticing."""
    pipeline = ddpm.random_pipeline("tiny")
    recipe = {"data": {"dataset": "digits", "batch_size": 4}, "fisher": {"batches": 1, "reuse": True}}
    config = SFRonConfig(steps=1, gamma=1.0)
    loss_fn = ddpm.epsilon_loss(pipeline.scheduler)
    unet = pipeline.unet.requires_grad_(True)
    images, labels = torch.randn(64, 1, 8, 8), torch.arange(64) % 10

    settings = ddpm_class.read(recipe)

    def fisher_of(forget_class):
        forget, remain = ddpm_class.class_batches(settings.data, images, labels, forget_class, seed=0)
        ddpm_class.class_mask(method_spec("sfron"), settings.fisher, unet, loss_fn, forget, remain, config, tmp_path,
                              {"forget_class": forget_class}, show_progress=False)
        return FisherCache(tmp_path, json.loads((tmp_path / "fisher.json").read_text())["key"]).load()[0]

    three = fisher_of(3)
    assert json.loads((tmp_path / "fisher.json").read_text())["key"]["forget_class"] == 3
    five = fisher_of(5)
    assert json.loads((tmp_path / "fisher.json").read_text())["key"]["forget_class"] == 5
    assert any(not torch.equal(three[n], five[n]) for n in three)
    assert all(torch.equal(three[n], fisher_of(3)[n]) for n in three)  # same key again: the same diagonals
