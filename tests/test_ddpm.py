"""Class-conditional DDPM pipeline and family: save/load round trip, sampling, loss, data split."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from erase.errors import UserError
from erase.families import ddpm
from erase.families.ddpm_pipeline import ClassConditionalDDPMPipeline
from erase.recipes import ASSETS_DIR


@pytest.fixture
def tiny_pipeline():
    unet = ddpm.build_unet("tiny", num_classes=3)
    return ClassConditionalDDPMPipeline(unet=unet, scheduler=ddpm.build_scheduler())


def test_save_load_round_trip(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_class_ddpm", "ClassConditionalDDPMPipeline"]
    assert (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    loaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path / "m")
    for (n, a), (_, b) in zip(tiny_pipeline.unet.state_dict().items(), loaded.unet.state_dict().items()):
        assert torch.equal(a, b), n
    assert loaded.num_classes == 3


def test_bundled_model_carries_the_package_pipeline_file():
    """assets/digits-ddpm loads with plain diffusers through its own copy of the pipeline code: the
    copy must stay the package's file, byte for byte (save_pretrained writes it; edits go to both)."""
    from erase.families import ddpm_pipeline

    shipped = ASSETS_DIR / "digits-ddpm" / f"{ddpm_pipeline.PIPELINE_MODULE}.py"
    assert shipped.read_bytes() == Path(ddpm_pipeline.__file__).read_bytes()


def test_plain_diffusers_loads_the_folder_and_generates(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "m")
    plain = DiffusionPipeline.from_pretrained(str(tmp_path / "m"), trust_remote_code=True)
    assert type(plain).__name__ == "ClassConditionalDDPMPipeline"
    plain.set_progress_bar_config(disable=True)
    images = plain(class_labels=[0, 2], num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images
    assert len(images) == 2 and images[0].size == (8, 8)


def test_sampling_is_deterministic_and_guidance_changes_it(tiny_pipeline):
    a = ddpm.sample(tiny_pipeline, [0, 1, 2], num_inference_steps=3, seed=5)
    b = ddpm.sample(tiny_pipeline, [0, 1, 2], num_inference_steps=3, seed=5)
    c = ddpm.sample(tiny_pipeline, [0, 1, 2], guidance_scale=1.0, num_inference_steps=3, seed=5)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_out_of_range_labels_are_refused(tiny_pipeline):
    with pytest.raises(ValueError, match="class labels"):
        tiny_pipeline(class_labels=[3], num_inference_steps=2)


def test_epsilon_loss_is_per_sample(tiny_pipeline):
    loss_fn = ddpm.epsilon_loss(tiny_pipeline.scheduler)
    images, labels = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    losses = loss_fn(tiny_pipeline.unet, (images, labels))
    assert losses.shape == (5,) and torch.all(losses > 0)


def test_guided_epsilon_loss_is_on_the_guided_prediction(tiny_pipeline):
    """guidance w: the MSE of ε_∅ + w(ε_c − ε_∅) against the noise (the official Fisher's loss); w = 1 is the plain one."""
    scheduler, unet = tiny_pipeline.scheduler, tiny_pipeline.unet.eval()
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(0)
    guided = ddpm.epsilon_loss(scheduler, null_class=3, guidance=3.0)(unet, (images, labels))
    torch.manual_seed(0)
    plain = ddpm.epsilon_loss(scheduler, null_class=3, guidance=1.0)(unet, (images, labels))
    torch.manual_seed(0)  # the same noise and timesteps, by hand
    noise = torch.randn_like(images)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (4,))
    noisy = scheduler.add_noise(images, noise, timesteps)
    eps_class = unet(noisy, timesteps, class_labels=labels).sample
    eps_null = unet(noisy, timesteps, class_labels=torch.full_like(labels, 3)).sample
    assert torch.allclose(guided, (eps_null + 3 * (eps_class - eps_null) - noise).pow(2).mean(dim=(1, 2, 3)), atol=1e-5)
    assert torch.allclose(plain, (eps_class - noise).pow(2).mean(dim=(1, 2, 3)), atol=1e-6)
    assert not torch.allclose(guided, plain)


def test_label_dropout_conditions_that_share_on_the_null_class(tiny_pipeline):
    """Unlearning with method.label_dropout: dropped labels train ε_∅, the others their own class."""
    scheduler, unet = tiny_pipeline.scheduler, tiny_pipeline.unet
    images, labels = torch.randn(64, 1, 8, 8), torch.zeros(64, dtype=torch.long)
    for dropout, used in ((0.0, {0}), (0.5, {0, 3}), (0.999, {3})):
        unet.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        ddpm.epsilon_loss(scheduler, dropout, null_class=3)(unet, (images, labels)).mean().backward()
        rows = unet.class_embedding.weight.grad.abs().sum(dim=1)
        assert {k for k in range(4) if rows[k] > 0} == used, dropout


def test_class_split_and_missing_class():
    images, labels = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 1, 2, 0, 1])
    (fi, fl), (ri, rl) = ddpm.class_split(images, labels, 1)
    assert fl.tolist() == [1, 1, 1] and sorted(rl.tolist()) == [0, 0, 2] and len(fi) + len(ri) == 6
    with pytest.raises(UserError):
        ddpm.class_split(images, labels, 7)


def test_load_pipeline_rejects_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(UserError, match="not a diffusers pipeline"):
        ddpm.load_pipeline(tmp_path)


@pytest.mark.skipif(not (ASSETS_DIR / "digits-classifier.safetensors").exists(), reason="bundled classifier missing")
def test_fid_leaves_the_global_generator_alone():
    """bench/steps_to_forget.py evaluates mid-run: the evaluation must not change the training's noise."""
    from erase.eval.fid import DIGITS_EXTRACTOR, fid_kid

    images = torch.randint(0, 256, (2, 24, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    scores = fid_kid(images[0], images[1], DIGITS_EXTRACTOR, ASSETS_DIR / "digits-classifier.safetensors", kid=True)
    assert scores["fid"] > 0
    assert torch.equal(torch.get_rng_state(), state)
