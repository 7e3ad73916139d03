"""Erasures as LoRA adapters: `erase export lora` on a tiny SD pipeline, loaded back with plain diffusers."""

import shutil

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from sd_fixtures import run_cli, tiny_sd  # noqa: F401

from erase.families import sd
from erase.lora import low_rank
from erase.patch import save_patch

# One weight of each LoRA shape (Linear, 1×1 conv, 3×3 conv), and two tensors a LoRA cannot hold.
LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
CONV_1X1 = "down_blocks.0.attentions.0.proj_in.weight"
CONV_3X3 = "down_blocks.0.resnets.0.conv1.weight"
NORM = "down_blocks.0.resnets.0.norm1.weight"
BIAS = "down_blocks.0.resnets.0.conv1.bias"
LORA_WEIGHTS = (LINEAR, CONV_1X1, CONV_3X3)


def make_run(base_folder, run):
    """A run folder as `erase sd` writes it (model/, patch.safetensors), with known changes."""
    base = sd.read_unet_state(base_folder)
    generator = torch.Generator().manual_seed(1)
    new = dict(base)
    for name in LORA_WEIGHTS + (NORM, BIAS):
        new[name] = base[name] + 0.05 * torch.randn(base[name].shape, generator=generator)
    sd.export_pipeline(base_folder, new, run / "model")
    save_patch(base, new, run / "patch.safetensors", base_model=str(base_folder))
    return base, new


@pytest.fixture(scope="module")
def run(tiny_sd, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("lora") / "run"
    base, new = make_run(tiny_sd, folder)
    return folder, base, new


def load(folder):
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fused_weights(pipe, scale):
    """The UNet weights diffusers computes with adapter weight `scale` (fused, copied, unfused)."""
    pipe.set_adapters(["erasure"], adapter_weights=[scale])
    pipe.fuse_lora(components=["unet"])
    state = {k.replace(".base_layer", ""): v.clone() for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    pipe.unfuse_lora(components=["unet"])
    return state


@torch.no_grad()
def unet_output(unet):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)
    return unet(latents, torch.tensor([10, 500]), encoder_hidden_states=text).sample


def test_full_rank_adapter_is_the_erasure_in_the_original_pipeline(run, tiny_sd, capsys):  # noqa: F811
    folder, base, new = run
    adapter = folder / "lora-full.safetensors"
    code, out, err = run_cli(["export", "lora", folder, "--rank", "full"], capsys)
    assert code == 0, err
    assert str(adapter) in out
    assert "not in the adapter: 2 changed" in out  # the norm and the bias

    pipe = load(tiny_sd)
    original_output = unet_output(pipe.unet)
    pipe.load_lora_weights(str(adapter), adapter_name="erasure")

    weights = fused_weights(pipe, 1.0)
    for name in base:
        expected = new[name] if name in LORA_WEIGHTS else base[name]
        torch.testing.assert_close(weights[name], expected, rtol=0, atol=1e-6, msg=name)
    weights = fused_weights(pipe, 0.0)
    for name in base:
        torch.testing.assert_close(weights[name], base[name], rtol=0, atol=1e-7, msg=name)
    half = fused_weights(pipe, 0.5)
    torch.testing.assert_close(half[CONV_3X3], (base[CONV_3X3] + new[CONV_3X3]) / 2, rtol=0, atol=1e-6)

    # unfused, as users run it: weight 1 acts as the erased UNet without the norm and bias changes
    pipe = load(tiny_sd)  # fusing and unfusing rounds the weights; unloading must restore them bit for bit
    pipe.load_lora_weights(str(adapter), adapter_name="erasure")
    pipe.set_adapters(["erasure"], adapter_weights=[1.0])
    erased = load(tiny_sd).unet
    erased.load_state_dict({**base, **{name: new[name] for name in LORA_WEIGHTS}})
    torch.testing.assert_close(unet_output(pipe.unet), unet_output(erased), rtol=1e-4, atol=1e-5)
    pipe.set_adapters(["erasure"], adapter_weights=[0.0])
    torch.testing.assert_close(unet_output(pipe.unet), original_output, rtol=0, atol=1e-6)

    pipe.unload_lora_weights()
    assert not any("lora" in k for k in pipe.unet.state_dict())
    assert all(torch.equal(v, base[k]) for k, v in pipe.unet.state_dict().items())
    assert torch.equal(unet_output(pipe.unet), original_output)


def test_rank_r_is_the_truncated_svd_in_peft_shapes(run, tmp_path, capsys):
    folder, base, new = run
    out = tmp_path / "seven.safetensors"
    code, text, err = run_cli(["export", "lora", folder, "--rank", 2, "--out", out], capsys)
    assert code == 0, err
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
        module = CONV_3X3.removesuffix(".weight")
        down, up = f.get_tensor(f"unet.{module}.lora_A.weight"), f.get_tensor(f"unet.{module}.lora_B.weight")
        metadata = f.metadata()
    assert len(keys) == 2 * len(LORA_WEIGHTS)  # nothing for the norm and the bias
    out_ch, in_ch, k, _ = base[CONV_3X3].shape
    assert down.shape == (2, in_ch, k, k) and up.shape == (out_ch, 2, 1, 1)
    assert metadata["erase_rank"] == "2" and '"unet.lora_alpha": 2' in metadata["lora_adapter_metadata"]

    # Eckart–Young: the error left is the norm of the dropped singular values
    delta = (new[CONV_3X3] - base[CONV_3X3]).flatten(1)
    singular = torch.linalg.svdvals(delta)
    _, _, residual = low_rank(new[CONV_3X3] - base[CONV_3X3], 2)
    assert residual == pytest.approx(float((singular[2:] ** 2).sum()), rel=1e-4)
    approx = (up.flatten(1) @ down.flatten(1))
    assert float((delta - approx).norm() ** 2) == pytest.approx(residual, rel=1e-3)


def test_sd_export_lora_flag_writes_the_adapter_of_the_run(tiny_sd, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    tiny = ["--height", 16, "--width", 16, "--inference-steps", 2, "--num-images", 2, "--batch-size", 2,
            "--fisher-batches", 1, "--eval-samples", 0, "--mixed-precision", "no"]
    code, text, err = run_cli(["sd", "--model", tiny_sd, "--steps", 1, "--out", out, "--export-lora", 4, *tiny], capsys)
    assert code == 0, err
    assert (out / "lora-r4.safetensors").is_file() and "LoRA rank 4" in text
    pipe = load(tiny_sd)
    pipe.load_lora_weights(str(out / "lora-r4.safetensors"), adapter_name="erasure")
    assert pipe.get_active_adapters() == ["erasure"]


def test_bad_inputs_one_line_exit_2_nothing_written(run, tiny_sd, tmp_path, capsys):  # noqa: F811
    folder, _, _ = run
    before = sorted(p.name for p in folder.iterdir())
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    cases = [
        ["export", "lora", not_a_run, "--rank", 4],
        ["export", "lora", tmp_path / "missing", "--rank", 4],
        ["export", "lora", folder, "--rank", 0],
        ["export", "lora", folder, "--rank", -3],
        ["export", "lora", folder, "--rank", "many"],
        ["export", "lora", folder, "--rank", 4, "--base", tmp_path / "nowhere"],
        ["sd", "--model", tiny_sd, "--out", tmp_path / "sd-run", "--export-lora", 0],
    ]
    for argv in cases:
        code, _, err = run_cli(argv, capsys)
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err

    # a run whose base model has gone, and a base that is another model
    moved_base = tmp_path / "base"
    shutil.copytree(tiny_sd, moved_base)
    orphan = tmp_path / "orphan"
    make_run(moved_base, orphan)
    shutil.rmtree(moved_base)
    code, _, err = run_cli(["export", "lora", orphan, "--rank", 4], capsys)
    assert code == 2 and "base model is missing" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other"
    sd.export_pipeline(tiny_sd, {k: v + 1 for k, v in sd.read_unet_state(tiny_sd).items()}, other)
    code, _, err = run_cli(["export", "lora", orphan, "--rank", 4, "--base", other], capsys)
    assert code == 2 and "different base model" in err, err

    assert sorted(p.name for p in folder.iterdir()) == before
    assert not list(orphan.glob("lora*")) and not (tmp_path / "sd-run").exists()
