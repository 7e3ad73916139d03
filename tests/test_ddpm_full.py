"""Full-scale DDPM class forgetting at test size: pretrain (resumable) -> forget (SFR-on) -> reload -> evaluate.

Tiny UNet2DModel of the same class as the CIFAR-10 preset, on a tiny colour-coded image folder.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from erase.cli import main
from erase.errors import UserError
from erase.families import ddpm
from erase.families.ddpm_pipeline import ClassConditionalDDPMPipeline
from erase.workflows.pretrain_ddpm import PretrainConfig, latest_checkpoint, pretrain_ddpm

REPO = Path(__file__).resolve().parent.parent
STEPS = 24


def write_class_folder(root: Path, per_class: int, size: int = 8, seed: int = 0) -> Path:
    """Three classes told apart by colour: train/ and test/ splits, one sub-folder per class."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", 3)):
        for k, name in enumerate(["cat", "dog", "ship"]):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 50, (size, size, 3)).astype(np.uint8)
                pixels[..., k] += 200
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("data") / "imgs", per_class=8)


def tiny_config(images: Path, steps: int = STEPS) -> PretrainConfig:
    return PretrainConfig(data=str(images), preset="tiny", steps=steps, batch_size=8, checkpoint_every=4)


@pytest.fixture(scope="module")
def pretrained(images, tmp_path_factory) -> Path:
    """An uninterrupted run: the reference for resumed runs and the model the forgetting tests start from."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    info = pretrain_ddpm(out, tiny_config(images), show_progress=False)
    assert info["steps"] == STEPS and info["resumed_from"] is None
    return out


def ema_weights(run: Path) -> dict:
    return load_file(str(run / "model" / "unet" / "diffusion_pytorch_model.safetensors"))


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_cifar10_preset_is_the_papers_model():
    """Base channels 128, multipliers 1,2,2,2, two res blocks, attention at 16×16, dropout 0.1: 35.7M."""
    with torch.device("meta"):
        unet = ddpm.build_unet("cifar10")
    config = unet.config
    assert tuple(config.block_out_channels) == (128, 256, 256, 256) and config.layers_per_block == 2
    assert config.dropout == 0.1 and config.sample_size == 32
    resolution = [32 // 2**i for i in range(4)]
    attention = [r for r, block in zip(resolution, unet.down_blocks) if hasattr(block, "attentions")]
    assert attention == [16]
    up_attention = [r for r, block in zip(reversed(resolution), unet.up_blocks) if hasattr(block, "attentions")]
    assert up_attention == [16]
    assert 35.7e6 < sum(p.numel() for p in unet.parameters()) < 35.8e6
    assert config.num_class_embeds == 11  # 10 classes + the null class of guidance
    scheduler = ddpm.build_scheduler()
    assert scheduler.config.num_train_timesteps == 1000 and scheduler.config.beta_schedule == "linear"
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (1e-4, 0.02)


def test_pretrain_writes_a_diffusers_folder(pretrained):
    pipeline = ClassConditionalDDPMPipeline.from_pretrained(pretrained / "model")
    assert pipeline.num_classes == 3 and pipeline.unet.config.in_channels == 3
    info = json.loads((pretrained / "pretrain.json").read_text())
    assert info["classes"] == ["cat", "dog", "ship"] and info["steps"] == STEPS
    assert json.loads((latest_checkpoint(pretrained) / "progress.json").read_text())["step"] == STEPS
    assert len(list((pretrained / "checkpoints").glob("step-*"))) == 2  # older ones pruned


def test_pretrain_resumes_after_being_killed(images, pretrained, tmp_path):
    """A process killed (SIGKILL) after a checkpoint, then --resume: same step count, same weights."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "erase.cli", "pretrain", "ddpm", "--data", str(images), "--preset", "tiny",
               "--batch-size", "8", "--checkpoint-every", "4", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(command + ["--steps", "100000"], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while latest_checkpoint(out) is None:
            assert child.poll() is None, "the training process ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
            time.sleep(0.005)
        assert child.poll() is None
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    killed_at = json.loads((latest_checkpoint(out) / "progress.json").read_text())["step"]
    assert 4 <= killed_at < STEPS and not (out / "model").exists()

    assert main(["pretrain", "ddpm", "--data", str(images), "--preset", "tiny", "--batch-size", "8",
                 "--checkpoint-every", "4", "--out", str(out), "--steps", str(STEPS), "--resume"]) == 0
    info = json.loads((out / "pretrain.json").read_text())
    assert info["steps"] == STEPS and info["resumed_from"] == killed_at
    assert_same_weights(ema_weights(out), ema_weights(pretrained))


def test_pretrain_resumes_after_an_interruption_in_process(images, pretrained, tmp_path):
    out = tmp_path / "interrupted"

    def stop_at_ten(step, loss):
        if step == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain_ddpm(out, tiny_config(images), show_progress=False, on_step=stop_at_ten)
    assert json.loads((latest_checkpoint(out) / "progress.json").read_text())["step"] == 8
    with pytest.raises(UserError, match="--resume"):
        pretrain_ddpm(out, tiny_config(images), show_progress=False)
    with pytest.raises(UserError, match="batch_size"):
        pretrain_ddpm(out, PretrainConfig(data=str(images), preset="tiny", steps=STEPS, batch_size=4), resume=True)
    info = pretrain_ddpm(out, tiny_config(images), resume=True, show_progress=False)
    assert info["steps"] == STEPS and info["resumed_from"] == 8
    assert_same_weights(ema_weights(out), ema_weights(pretrained))


def test_forget_with_real_images_reload_and_evaluate(images, pretrained, tmp_path, capsys):
    classifier = tmp_path / "classifier.safetensors"
    assert main(["pretrain", "classifier", "--data", str(images), "--arch", "resnet18", "--image-size", "16",
                 "--epochs", "3", "--batch-size", "12", "--out", str(classifier)]) == 0
    run = tmp_path / "forget"
    assert main([
        "ddpm", "--model", str(pretrained), "--forget-class", "1", "--data", str(images), "--steps", "3",
        "--batch-size", "8", "--classifier", str(classifier), "--out", str(run),
        "--set", "fisher.batches=2", "--set", "eval.forget_samples=8", "--set", "eval.samples_per_class=4",
        "--set", "eval.inference_steps=3", "--set", "eval.reference_images=16",
    ]) == 0
    assert "FA (class 1)" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"family", "method", "forgotten_class", "steps", "seconds", "seconds_erase", "mask_fraction", "before",
            "after", "history"} <= metrics.keys()
    assert metrics["method"] == "sfron" and metrics["steps"] == 3 and len(metrics["history"]) == 3
    assert 0 < metrics["mask_fraction"] < 1
    for when in ("before", "after"):
        result = metrics[when]
        assert 0 <= result["fa"] <= 1 and result["fid"] is not None and result["fid"] >= 0
        assert set(result["per_class_accuracy"]) == {"0", "1", "2"}
        assert result["fid_features"] == "resnet18 penultimate features"
    for name in ("config.toml", "mask.safetensors", "grid_before.png", "grid_after.png", "loss.png"):
        assert (run / name).exists(), name
    original, erased = ema_weights(pretrained), ema_weights(run)
    assert any(not torch.equal(original[k], erased[k]) for k in original)

    plain = DiffusionPipeline.from_pretrained(str(run / "model"), trust_remote_code=True)
    assert type(plain).__name__ == "ClassConditionalDDPMPipeline"
    reloaded = ClassConditionalDDPMPipeline.from_pretrained(run / "model")
    assert all(torch.equal(a, b) for a, b in zip(plain.unet.state_dict().values(), reloaded.unet.state_dict().values()))
    generated = plain(class_labels=[1] * 4, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images
    folder = tmp_path / "generated"
    folder.mkdir()
    for i, image in enumerate(generated):
        image.save(folder / f"{i}.png")
    assert main(["evaluate", "classifier", str(folder), "--classifier", str(classifier), "--label", "dog",
                 "--out", str(tmp_path / "fa.json")]) == 0
    fa = json.loads((tmp_path / "fa.json").read_text())
    assert fa["label"] == 1 and fa["images"] == 4 and 0 <= fa["fa"] <= 1


def test_forget_with_self_generated_images(pretrained, tmp_path):
    run = tmp_path / "generated"
    assert main([
        "ddpm", "--model", str(pretrained / "model"), "--forget-class", "0", "--steps", "2", "--batch-size", "4",
        "--no-fid", "--out", str(run), "--set", "eval.classifier=", "--set", "data.generated_per_class=4",
        "--set", "data.inference_steps=2", "--set", "fisher.batches=1", "--set", "eval.forget_samples=2",
        "--set", "eval.samples_per_class=1", "--set", "eval.inference_steps=2",
    ]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["after"]["fa"] is None and metrics["after"]["fid"] is None  # nothing to judge with: said so
    assert 'dataset = "generated"' in (run / "config.toml").read_text()
    assert ClassConditionalDDPMPipeline.from_pretrained(run / "model").num_classes == 3


def test_random_init_and_model_errors(tmp_path, capsys):
    pipeline = ddpm.load_or_build_pipeline({"random_init": True, "preset": "tiny", "num_classes": 3})
    assert pipeline.num_classes == 3
    assert main(["ddpm", "--forget-class", "0", "--out", str(tmp_path / "x")]) == 2
    assert main(["ddpm", "--model", str(tmp_path), "--forget-class", "0", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "model_index.json" in err and "Traceback" not in err
