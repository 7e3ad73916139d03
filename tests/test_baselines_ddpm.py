"""Every method of the DDPM class workflow runs through the one loop on a tiny DDPM; the bench's bookkeeping."""

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from erase.core.methods import METHODS, forget_objective, method_spec
from erase.core.fisher import load_fisher
from erase.core.saliency import mask_stats, saliency_mask
from erase.core.sfron import SFRonConfig, unlearn
from erase.data.digits import load_digits_tensors
from erase.data.loader import loader
from erase.errors import UserError
from erase.families import ddpm
from erase.workflows import ddpm_class

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import steps_to_forget  # noqa: E402

FORGET_CLASS = 3


@pytest.fixture(scope="module")
def data():
    images, labels = load_digits_tensors("train")
    return ddpm.class_split(images, labels, FORGET_CLASS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_runs_two_steps_on_a_tiny_ddpm(name, data, tmp_path):
    (fi, fl), (ri, rl) = data
    spec = method_spec(name)
    unet = ddpm.build_unet("tiny", num_classes=10).requires_grad_(True)
    before = [p.detach().clone() for p in unet.parameters()]
    scheduler = ddpm.build_scheduler()
    loss_fn = ddpm.epsilon_loss(scheduler)
    forget, remain = loader(TensorDataset(fi, fl), 16, 0), loader(TensorDataset(ri, rl), 16, 1)
    settings = {**steps_to_forget.METHOD_SETTINGS[name], "steps": 2, "lr": 1e-3, "gamma": 1.0}
    config = SFRonConfig.from_dict(settings)
    fisher = ddpm_class.Fisher(batches=2, salun_fraction=0.5)
    mask = ddpm_class.class_mask(spec, fisher, unet, loss_fn, forget, remain, config, tmp_path,
                                 {"forget_class": FORGET_CLASS}, show_progress=False)
    objective = forget_objective(spec, loss_fn, config.temperature, ddpm.class_mapping_loss(scheduler, 10))
    history = unlearn(unet, objective, loss_fn, forget, remain, config, mask=mask, show_progress=False)

    assert [r["step"] for r in history] == [1, 2]
    assert all(("forget_loss" in r) == (spec.forget is not None) and "remain_loss" in r for r in history)
    assert all(math.isfinite(v) for r in history for k, v in r.items() if k.endswith("_loss"))
    assert any(not torch.equal(p, b) for p, b in zip(unet.parameters(), before))
    if spec.mask == "gradient":  # SalUn: the top half of |∇L_f|
        assert mask_stats(mask)["fraction"] == pytest.approx(0.5, abs=0.01)
    elif spec.mask == "fisher":  # SFR-on: the Fisher-balanced mask of the cached diagonals
        forget_fisher = load_fisher(tmp_path / "fisher_forget.safetensors")
        expected = saliency_mask(forget_fisher, load_fisher(tmp_path / "fisher_remain.safetensors"), 1.0)
        assert all(torch.equal(mask[n], expected[n]) for n in expected)
        assert 0 < mask_stats(mask)["fraction"] < 1
    else:
        assert mask is None


def test_bench_gives_every_method_the_recipe_settings_but_its_own_forget_weight():
    recipe = {"sfron": {"steps": 50, "lr": 1e-3, "forget_alpha": 10.0, "gamma": 3.0, "remain_alpha": 1.0}}
    runs = steps_to_forget.plan_runs(
        recipe, ["sfron", "ga", "salun", "ft"], 300, lr_overrides={"ga": 3e-4}, long_sfron=True
    )
    by_key = {r["key"]: r["config"] for r in runs}
    assert list(by_key) == ["sfron-lr0.001", "sfron-long-lr0.001", "ga-lr0.0003", "salun-lr0.001", "ft-lr0.001"]
    assert by_key["sfron-lr0.001"]["steps"] == 50 and by_key["sfron-long-lr0.001"]["steps"] == 300
    assert by_key["ga-lr0.0003"]["steps"] == 300 and by_key["ga-lr0.0003"]["lr"] == 3e-4
    assert by_key["sfron-lr0.001"]["forget_alpha"] == 10.0 and by_key["salun-lr0.001"]["forget_alpha"] == 1.0
    assert by_key["salun-lr0.001"]["decay_forget_alpha"] is False
    assert all(c["remain_alpha"] == 1.0 for c in by_key.values())
    grid = steps_to_forget.plan_runs(recipe, ["sfron", "rl"], 300, lrs=[1e-4, 1e-3])
    pairs = [(r["method"], r["config"]["lr"]) for r in grid]
    assert pairs == [("sfron", 1e-4), ("sfron", 1e-3), ("rl", 1e-4), ("rl", 1e-3)]
    assert grid[2]["label"] == "RL lr 0.0001"
    assert "γ 3" in steps_to_forget.describe(runs[0], recipe)
    assert "top-50% \\|∇L_f\\| mask" in steps_to_forget.describe(runs[3], recipe)


def test_forgotten_needs_low_fa_kept_accuracy_and_kept_fid():
    curve = [
        {"step": 10, "fa": 0.01, "remaining_accuracy": 0.90},  # forgot, but the other digits suffered
        {"step": 20, "fa": 0.08, "remaining_accuracy": 0.97},
        {"step": 30, "fa": 0.05, "remaining_accuracy": 0.96},
    ]
    assert steps_to_forget.first_forgotten({"curve": curve}, 0.98)["step"] == 30
    assert steps_to_forget.first_forgotten({"curve": curve}, 0.99) is None
    with_fid = [{**p, "fid": 30.0} for p in curve] + [{"step": 40, "fa": 0.0, "remaining_accuracy": 0.97, "fid": 24.0}]
    assert steps_to_forget.first_forgotten({"curve": with_fid}, 0.98, original_fid=20.0)["step"] == 40  # FID ≤ 25


def test_replace_section_keeps_the_other_sections(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# B\n\n## One\nold\n\n## Two\nkeep\n")
    steps_to_forget.replace_section(path, "## One", "## One\nnew table\n")
    assert path.read_text() == "# B\n\n## One\nnew table\n\n## Two\nkeep\n"
    steps_to_forget.replace_section(path, "## Two", "## Two\nlast\n")
    assert path.read_text().endswith("## Two\nlast\n\n")


def test_evaluation_schedule_is_dense_early_and_sparse_late():
    due = [s for s in range(1, 301) if steps_to_forget.evaluation_due(s, 300, (10, 100, 50))]
    assert due == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 150, 200, 250, 300]
    assert steps_to_forget.evaluation_due(47, 47, (10, 100, 50))  # the last step is always evaluated


def test_stored_results_are_told_apart_by_method():
    recipe = {"sfron": {"steps": 50, "lr": 1e-3}}
    runs = steps_to_forget.plan_runs(recipe, ["ga", "rl", "salun"], 300)
    assert runs[0]["config"] == runs[1]["config"]  # same settings ...
    assert len({steps_to_forget.run_key(r["method"], r["config"]) for r in runs}) == 3  # ... different results


def test_class_mapping_trains_the_forgotten_label():
    """RL/SalUn must move the forgotten class's own embedding (the relabelling shortcut would not)."""
    scheduler = ddpm.build_scheduler()
    unet = ddpm.build_unet("tiny", num_classes=10).requires_grad_(True)
    images = torch.randn(4, 1, 8, 8)
    labels = torch.full((4,), FORGET_CLASS)
    losses = ddpm.class_mapping_loss(scheduler, 10)(unet, (images, labels))
    assert losses.shape == (4,)
    losses.mean().backward()
    grad = unet.class_embedding.weight.grad
    assert grad[FORGET_CLASS].abs().sum() > 0
    others = [k for k in range(11) if k != FORGET_CLASS]
    assert grad[others].abs().sum() == 0  # the target branch carries no gradient


def test_esd_target_is_the_negatively_guided_prediction_of_a_frozen_copy():
    """With the model still equal to its frozen copy, ESD's loss is (1 + η)² ‖ε(x_t, c) − ε(x_t, ∅)‖²."""
    scheduler = ddpm.build_scheduler()
    unet = ddpm.build_unet("tiny", num_classes=10).eval()
    teacher = copy.deepcopy(unet).requires_grad_(False)
    images, labels = torch.randn(3, 1, 8, 8), torch.full((3,), FORGET_CLASS)
    torch.manual_seed(0)
    losses = ddpm.class_esd_loss(scheduler, teacher, null_class=10, negative_guidance=0.5)(unet, (images, labels))
    torch.manual_seed(0)  # the same noise and timesteps
    noise = torch.randn_like(images)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (3,))
    noisy = scheduler.add_noise(images, noise, timesteps)
    with torch.no_grad():
        gap = unet(noisy, timesteps, class_labels=labels).sample - unet(noisy, timesteps, class_labels=torch.full_like(labels, 10)).sample
    expected = (1.5**2) * gap.pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(losses.detach(), expected, rtol=1e-4, atol=1e-7)
    assert losses.detach().min() > 0


def test_esd_runs_through_the_workflow_without_a_mask(tmp_path):
    pipeline = ddpm.random_pipeline("tiny")
    before = [p.detach().clone() for p in pipeline.unet.parameters()]
    recipe = {"method": {"name": "esd"}, "data": {"dataset": "digits", "batch_size": 16}}
    settings = ddpm_class.read(recipe)
    spec = settings.method.spec
    config = SFRonConfig(steps=2, lr=1e-3, forget_alpha=1.0, decay_forget_alpha=False)
    mask, history, _ = ddpm_class.erase_class(settings, pipeline, spec, config, FORGET_CLASS, tmp_path, show_progress=False)
    assert spec.name == "esd" and mask is None
    assert [r["step"] for r in history] == [1, 2] and all("forget_loss" in r for r in history)
    assert any(not torch.equal(p, b) for p, b in zip(pipeline.unet.parameters(), before))
    with pytest.raises(UserError, match="method.name must be one of .*, esd, got 'esdx'"):
        ddpm_class.read({"method": {"name": "esdx"}})
    for bad in (0, -1.0, "strong", True):
        with pytest.raises(UserError, match="negative_guidance"):
            ddpm_class.read({"method": {"name": "esd", "negative_guidance": bad}})


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_label_dropout_trains_the_unconditional_prediction_while_unlearning(dropout, tmp_path):
    """method.label_dropout (the official code's 0.1): the null class is trained in the loop; without it, it is not."""
    torch.manual_seed(0)
    pipeline = ddpm.random_pipeline("tiny")
    null_row = pipeline.unet.class_embedding.weight[pipeline.null_class].detach().clone()
    settings = ddpm_class.read({"method": {"label_dropout": dropout}, "data": {"batch_size": 16}, "fisher": {"batches": 1}})
    config = SFRonConfig(steps=3, lr=1e-3, gamma=1.0)
    ddpm_class.erase_class(settings, pipeline, settings.method.spec, config, FORGET_CLASS, tmp_path, show_progress=False)
    moved = not torch.equal(pipeline.unet.class_embedding.weight[pipeline.null_class], null_row)
    assert moved == (dropout > 0)


def test_reading_compares_with_the_best_baseline_and_with_ga_only_when_it_ran():
    def result(method, fa_by_step):
        return {"method": method, "curve": [{"step": s, "fa": fa, "remaining_accuracy": 1.0} for s, fa in fa_by_step]}

    before = {"remaining_accuracy": 1.0}
    runs = [result("sfron", [(2, 0.5), (4, 0.05)]), result("rl", [(2, 0.5), (4, 0.5), (6, 0.0)])]
    text = steps_to_forget.reading(runs, before)
    assert "SFR-on reaches the target at step 4; the best baseline (RL) at step 6" in text
    assert "Against plain GA" not in text
    runs.append(result("ga", [(2, 0.5), (40, 0.0)]))
    assert "Against plain GA the ratio is 10×" in steps_to_forget.reading(runs, before)
