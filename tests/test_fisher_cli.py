"""`erase fisher` / `erase mask`: the cached Fisher equals the one `erase run` computes, the mask is the core's."""

import json
from dataclasses import asdict

import pytest
import torch
from safetensors import safe_open

from erase.cli import main
from erase.core.fisher import load_fisher
from erase.core.methods import method_spec
from erase.core.saliency import load_mask, mask_stats, saliency_mask
from erase.data.digits import load_digits_tensors
from erase.families import ddpm
from erase.families.ddpm_pipeline import ClassConditionalDDPMPipeline
from erase.recipes import apply_overrides, load_recipe
from erase.workflows import ddpm_class

FORGET_CLASS = 3


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    """A tiny 10-class DDPM saved as a diffusers folder, and a DDPM class recipe that points at it."""
    root = tmp_path_factory.mktemp("fisher-cli")
    torch.manual_seed(0)
    unet = ddpm.build_unet("tiny", num_classes=10)
    ClassConditionalDDPMPipeline(unet=unet, scheduler=ddpm.build_scheduler()).save_pretrained(root / "model")
    path = root / "recipe.toml"
    path.write_text(
        f'family = "ddpm"\ntask = "class"\n[model]\npath = "{root / "model"}"\n[forget]\nclass = {FORGET_CLASS}\n'
        '[data]\ndataset = "digits"\nbatch_size = 16\n[method]\nname = "sfron"\n[sfron]\nseed = 3\ngamma = 1.0\n'
        "[fisher]\nbatches = 2\n"
    )
    return path


def test_fisher_matches_the_workflow_and_mask_matches_the_core(recipe_path, tmp_path, capsys):
    out = tmp_path / "fisher"
    assert main(["fisher", str(recipe_path), "--out", str(out)]) == 0
    forget, remain = load_fisher(out / "fisher_forget.safetensors"), load_fisher(out / "fisher_remain.safetensors")
    info = json.loads((out / "fisher.json").read_text())
    assert info["forget_batches"] == 2 and info["remain_batches"] == 2 and info["processes"] == 1

    # What `erase run` computes for the same recipe (same loaders, same seed): identical tensors.
    recipe = load_recipe(recipe_path)
    settings = ddpm_class.read(recipe)
    config = settings.sfron
    pipeline = ddpm.load_pipeline(recipe["model"]["path"])
    images, labels = load_digits_tensors("train")
    unet = pipeline.unet.requires_grad_(True)
    reference_dir = tmp_path / "run"
    ddpm_class.class_mask(
        method_spec("sfron"), settings.fisher, unet, ddpm_class.fisher_loss(settings.fisher, pipeline),
        *ddpm_class.class_batches(settings.data, images, labels, FORGET_CLASS, config.seed), config, reference_dir,
        {"forget_class": FORGET_CLASS, "data": asdict(settings.data)}, show_progress=False,
    )
    expected_forget = load_fisher(reference_dir / "fisher_forget.safetensors")
    expected_remain = load_fisher(reference_dir / "fisher_remain.safetensors")
    assert set(forget) == {n for n, _ in unet.named_parameters()}
    for name in forget:
        assert forget[name].dtype == torch.float32
        assert torch.equal(forget[name], expected_forget[name]), name
        assert torch.equal(remain[name], expected_remain[name]), name
    assert any(t.abs().sum() > 0 for t in forget.values())
    # Same key: `erase run --set fisher.reuse=true --out DIR` reads these diagonals back.
    assert info["key"] == json.loads((reference_dir / "fisher.json").read_text())["key"]

    capsys.readouterr()
    mask_path = tmp_path / "mask.safetensors"
    assert main(["mask", "--fisher-dir", str(out), "--gamma", "2", "--out", str(mask_path), "--top", "3"]) == 0
    printed = capsys.readouterr().out
    mask = load_mask(mask_path)
    expected = saliency_mask(forget, remain, 2.0)
    assert all(torch.equal(mask[n], expected[n]) for n in expected)
    stats = mask_stats(expected)
    assert 0 < stats["fraction"] < 1
    assert f"kept {stats['fraction']:.2%}" in printed and f"{stats['kept']:,} of {stats['total']:,}" in printed
    assert len([line for line in printed.splitlines() if line.startswith("  ")]) == 3
    with safe_open(str(mask_path), framework="pt") as f:
        assert f.metadata()["gamma"] == "2.0"


def test_each_option_of_the_official_fisher_changes_the_diagonals_and_the_key(recipe_path, tmp_path):
    """fisher.batches = 0 (a full pass), fisher.clip (each batch gradient clipped before squaring) and
    fisher.guidance (the loss on the guided prediction): each changes the diagonals and their cache key,
    and `erase fisher` computes what the workflow does with the clip and the guidance."""

    big_batches = ["data.batch_size=64"]  # fewer batches in a full pass: a faster test

    def fisher(*overrides):
        out = tmp_path / ("-".join(overrides) or "plain")
        sets = (a for o in (*big_batches, *overrides) for a in ("--set", o))
        assert main(["fisher", str(recipe_path), "--out", str(out), *sets]) == 0
        info = json.loads((out / "fisher.json").read_text())
        return load_fisher(out / "fisher_forget.safetensors"), load_fisher(out / "fisher_remain.safetensors"), info

    def total(diagonal):  # Σ_θ F = the mean over batches of |g_b|²
        return sum(float(t.sum()) for t in diagonal.values())

    plain = fisher()
    clip = round((total(plain[1]) / 4) ** 0.5, 6)  # half the remain batches' RMS gradient norm: it binds
    full, clipped, guided = fisher("fisher.batches=0"), fisher(f"fisher.clip={clip}"), fisher("fisher.guidance=3")
    recipe = apply_overrides(load_recipe(recipe_path), big_batches)
    settings = ddpm_class.read(recipe)
    loaders = ddpm_class.class_batches(settings.data, *load_digits_tensors("train"), FORGET_CLASS, settings.sfron.seed)
    remain_batches = loaders[1]
    assert plain[2]["remain_batches"] == 2 and full[2]["remain_batches"] == len(remain_batches) > 2
    assert total(clipped[0]) <= clip**2 * 1.0001 and total(clipped[1]) <= clip**2 * 1.0001 < total(plain[1])
    for variant in (full, clipped, guided):
        assert variant[2]["key"] != plain[2]["key"]
        assert any(not torch.equal(variant[1][n], plain[1][n]) for n in plain[1])

    official = [f"fisher.clip={clip}", "fisher.guidance=3"]  # a clip that binds; batches = 0 left out (time)
    forget, remain, info = fisher(*official)
    settings = ddpm_class.read(apply_overrides(recipe, official))
    pipeline = ddpm.load_pipeline(recipe["model"]["path"])
    unet = pipeline.unet.requires_grad_(True)
    ddpm_class.class_mask(
        method_spec("sfron"), settings.fisher, unet, ddpm_class.fisher_loss(settings.fisher, pipeline),
        *loaders, settings.sfron,
        tmp_path / "run", {"forget_class": FORGET_CLASS, "data": asdict(settings.data)}, show_progress=False,
    )
    assert info["key"] == json.loads((tmp_path / "run" / "fisher.json").read_text())["key"]
    for name, computed in (("forget", forget), ("remain", remain)):
        expected = load_fisher(tmp_path / "run" / f"fisher_{name}.safetensors")
        assert all(torch.equal(computed[n], expected[n]) for n in computed), name


def test_mask_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "mask.safetensors"
    assert main(["mask", "--fisher-dir", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fisher_forget.safetensors" in err and not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["mask", "--fisher-dir", str(tmp_path), "--gamma", "0", "--out", str(out)])
    assert exit_info.value.code == 2 and not out.exists()


def test_fisher_refuses_a_recipe_of_another_family_before_writing(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('family = "sd"\ntask = "concept"\n[model]\npath = "x"\n')
    out = tmp_path / "out"
    assert main(["fisher", str(recipe), "--out", str(out)]) == 2
    assert "DDPM class recipes" in capsys.readouterr().err and not out.exists()


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "erase", "mask", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "usage: erase mask" in done.stdout
