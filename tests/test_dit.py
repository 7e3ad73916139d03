"""DiT family at test size: tiny DiTTransformer2DModel (learned σ, 8 output channels) + tiny AutoencoderKL."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from diffusers import AutoencoderKL, DiffusionPipeline, DiTPipeline, DiTTransformer2DModel
from PIL import Image
from safetensors.torch import load_file, save_file

from erase.cli import main
from erase.errors import UserError
from erase.families import dit

CLASSES = (0, 3, 207)


def id2label() -> dict:
    names = {str(i): f"thing {i}" for i in range(1000)}
    names["207"] = "golden retriever"
    return names


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved tiny DiT pipeline with ImageNet names, an ImageNet-layout folder (id-named class folders),
    and an ImageNet-sized (1000-way) torchvision classifier as a plain weights file."""
    root = tmp_path_factory.mktemp("dit")
    torch.manual_seed(0)
    dit.random_pipeline("tiny", id2label=id2label()).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in CLASSES:
            folder = root / "imagenet" / split / str(k)
            folder.mkdir(parents=True)
            for i in range(6):
                pixels = rng.integers(0, 50, (20, 20, 3)).astype(np.uint8)
                pixels[..., k % 3] += 200
                Image.fromarray(pixels).save(folder / f"{i}.png")
    classifier = torchvision.models.resnet18(num_classes=1000)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(root / "resnet18.safetensors"))
    return root


def test_loss_uses_only_the_epsilon_channels():
    """With learned σ (8 output channels for 4 latent channels) nothing reaches the σ outputs."""
    torch.manual_seed(0)
    model = DiTTransformer2DModel(**dit.PRESETS["tiny"]["transformer"])
    assert model.config.out_channels == 8
    latents, labels = torch.randn(3, 4, 8, 8), torch.tensor([0, 207, 5])
    loss_fn = dit.epsilon_loss(dit.build_scheduler())

    torch.manual_seed(1)
    losses = loss_fn(model, (latents, labels))
    torch.manual_seed(1)  # the same noise and timesteps, by hand
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, 1000, (3,))
    noisy = dit.build_scheduler().add_noise(latents, noise, timesteps)
    output = model(noisy, timestep=timesteps, class_labels=labels).sample
    assert output.shape[1] == 8
    expected = ((output[:, :4] - noise) ** 2).mean(dim=(1, 2, 3))
    assert losses.shape == (3,) and torch.allclose(losses, expected, atol=1e-6)
    assert not torch.allclose(losses, ((output - torch.cat([noise, noise], 1)) ** 2).mean(dim=(1, 2, 3)))

    model.zero_grad()
    losses.mean().backward()
    patch, channels = model.config.patch_size, model.config.out_channels
    grad = model.proj_out_2.weight.grad.view(patch, patch, channels, -1)  # rows ordered (p, q, channel)
    bias = model.proj_out_2.bias.grad.view(patch, patch, channels)
    assert grad[:, :, 4:].abs().max() == 0 and bias[:, :, 4:].abs().max() == 0
    assert grad[:, :, :4].abs().max() > 0

    with pytest.raises(ValueError, match="channels"):
        dit.epsilon_part(torch.zeros(1, 6, 2, 2), 4)
    assert dit.epsilon_part(torch.ones(1, 4, 2, 2), 4).shape[1] == 4  # no learned σ: all of it


def test_dit_xl_2_random_init_architecture():
    with torch.device("meta"):
        pipeline = dit.random_pipeline("DiT-XL/2")
    config = pipeline.transformer.config
    assert (config.num_layers, config.num_attention_heads * config.attention_head_dim) == (28, 1152)
    assert (config.patch_size, config.sample_size, config.in_channels, config.out_channels) == (2, 32, 4, 8)
    assert config.num_embeds_ada_norm == 1000 and dit.image_size(pipeline) == 256
    assert sum(p.numel() for p in pipeline.vae.parameters()) == 83_653_863  # sd-vae-ft-ema
    assert 7.4e8 < sum(p.numel() for p in pipeline.transformer.parameters()) < 7.6e8


def test_class_by_id_or_name_and_pitfalls(files, tmp_path):
    pipeline = dit.load_pipeline(files / "model")
    assert dit.class_id(pipeline, "golden retriever") == 207 == dit.class_id(pipeline, "207")
    with pytest.raises(UserError, match="did you mean golden retriever"):
        dit.class_id(pipeline, "retriever")
    with pytest.raises(UserError, match="in \\[0, 999\\]"):
        dit.class_id(pipeline, 1000)
    # A freshly loaded model is put in eval mode by `sample`: label dropout would make this random.
    pipeline.transformer.train()
    a = dit.sample(pipeline, [207, 3], num_inference_steps=2, seed=3)
    b = dit.sample(pipeline, [207, 3], num_inference_steps=2, seed=3)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    # DiTPipeline guides with class 1000: a model without it is refused with a clear message.
    small = DiTPipeline(transformer=DiTTransformer2DModel(**{**dit.PRESETS["tiny"]["transformer"], "num_embeds_ada_norm": 10}),
                        vae=AutoencoderKL(**dit.PRESETS["tiny"]["vae"]), scheduler=dit.build_scheduler())
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(UserError, match="num_embeds_ada_norm = 1000"):
        dit.load_pipeline(tmp_path / "small")


def test_imagenet_folder_labels_are_class_ids(files):
    dataset = dit.imagenet_folder(files / "imagenet", size=16)
    assert sorted(set(dataset.targets)) == list(CLASSES)
    index = next(i for i, (path, _) in enumerate(dataset.samples) if Path(path).parent.name == "207")
    image, label = dataset[index]
    assert image.shape == (3, 16, 16) and label == 207


def test_forget_with_real_images_reload_and_evaluate(files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([
        "dit", "--model", str(files / "model"), "--forget-class", "golden retriever", "--data", str(files / "imagenet"),
        "--steps", "3", "--batch-size", "2", "--classifier", str(files / "resnet18.safetensors"), "--arch", "resnet18",
        "--fid-reference", str(files / "imagenet"), "--out", str(run),
        "--set", "fisher.batches=2", "--set", "eval.forget_samples=4", "--set", "eval.samples_per_class=2",
        "--set", "eval.inference_steps=2", "--set", "eval.classes=[207, 0, 3]", "--set", "eval.classifier_image_size=16",
    ]) == 0
    assert "FA (class 207 golden retriever)" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["family"] == "dit" and metrics["forgotten_class"] == 207 and len(metrics["history"]) == 3
    assert metrics["forget_latents"] == 6 and metrics["remain_latents"] == 12 and 0 < metrics["mask_fraction"] < 1
    for when in ("before", "after"):
        assert 0 <= metrics[when]["fa"] <= 1 and metrics[when]["fid"] >= 0
        assert set(metrics[when]["per_class_accuracy"]) == {"0", "3", "207"}
    latents = load_file(str(run / "latents.safetensors"))
    assert latents["forget_latents"].shape == (6, 4, 8, 8) and set(latents["remain_labels"].tolist()) == {0, 3}

    before = DiTPipeline.from_pretrained(files / "model")
    after = DiffusionPipeline.from_pretrained(str(run / "model"))
    assert type(after) is DiTPipeline and after.get_label_ids(["golden retriever"]) == [207]
    changed = [k for k, v in before.transformer.state_dict().items() if not torch.equal(v, after.transformer.state_dict()[k])]
    assert changed
    assert all(torch.equal(v, after.vae.state_dict()[k]) for k, v in before.vae.state_dict().items())  # VAE frozen
    images = after([207] * 3, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    folder = tmp_path / "generated"
    folder.mkdir()
    for i, image in enumerate(images):
        image.save(folder / f"{i}.png")
    assert main(["evaluate", "classifier", str(folder), "--classifier", str(files / "resnet18.safetensors"),
                 "--arch", "resnet18", "--image-size", "16", "--label", "207"]) == 0
    assert "of 3 images labelled 207" in capsys.readouterr().out


def test_forget_with_self_generated_images_reuses_cached_latents(files, tmp_path):
    run = tmp_path / "generated"
    args = [
        "dit", "--model", str(files / "model"), "--forget-class", "3", "--steps", "2", "--batch-size", "2",
        "--out", str(run), "--set", "data.generated_forget=4", "--set", "data.generated_remain=4",
        "--set", "data.remain_classes=[0, 207]", "--set", "data.inference_steps=2", "--set", "fisher.batches=1",
        "--set", "eval.forget_samples=2", "--set", "eval.samples_per_class=1", "--set", "eval.inference_steps=2",
        "--set", "eval.classes=[3, 0]", "--set", "data.reuse_latents=true",
    ]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["after"]["fa"] is None and metrics["after"]["fid"] is None  # no classifier, no reference
    cached = run / "latents.safetensors"
    latents, stamp = load_file(str(cached)), cached.stat().st_mtime_ns
    assert set(latents["remain_labels"].tolist()) == {0, 207} and (latents["forget_labels"] == 3).all()
    assert main(args) == 0
    assert cached.stat().st_mtime_ns == stamp  # read back, not encoded again
    assert DiTPipeline.from_pretrained(run / "model").transformer.config.out_channels == 8


def test_user_errors_are_one_line(files, tmp_path, capsys):
    assert main(["dit", "--forget-class", "207", "--out", str(tmp_path / "a")]) == 2
    assert main(["dit", "--model", str(files / "model"), "--forget-class", "no such class",
                 "--out", str(tmp_path / "b")]) == 2
    assert main(["dit", "--model", str(files / "model"), "--forget-class", "207", "--data", str(tmp_path),
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("erase: error:") == 3 and "Traceback" not in err


def test_esd_target_is_guided_away_from_the_class_on_the_epsilon_channels():
    """While the model equals its frozen copy, ESD's loss is (1 + η)² ‖ε(x_t, c) − ε(x_t, ∅)‖² on the ε channels."""
    torch.manual_seed(0)
    model = DiTTransformer2DModel(**dit.PRESETS["tiny"]["transformer"]).eval()
    teacher = copy.deepcopy(model).requires_grad_(False)
    latents, labels = torch.randn(2, 4, 8, 8), torch.tensor([207, 207])
    torch.manual_seed(1)
    losses = dit.class_esd_loss(dit.build_scheduler(), teacher, negative_guidance=2.0)(model, (latents, labels))
    torch.manual_seed(1)
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, 1000, (2,))
    noisy = dit.build_scheduler().add_noise(latents, noise, timesteps)
    with torch.no_grad():
        eps_class = model(noisy, timestep=timesteps, class_labels=labels).sample[:, :4]
        eps_null = model(noisy, timestep=timesteps, class_labels=torch.full_like(labels, dit.NULL_CLASS)).sample[:, :4]
    expected = 9.0 * (eps_class - eps_null).pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(losses.detach(), expected, rtol=1e-4, atol=1e-7) and losses.min() > 0


def test_esd_runs_through_erase_dit(files, tmp_path):
    run = tmp_path / "esd"
    assert main([
        "dit", "--model", str(files / "model"), "--forget-class", "3", "--steps", "2", "--batch-size", "2",
        "--method", "esd", "--out", str(run), "--set", "data.generated_forget=2", "--set", "data.generated_remain=2",
        "--set", "data.remain_classes=[0]", "--set", "data.inference_steps=2", "--set", "eval.forget_samples=1",
        "--set", "eval.samples_per_class=1", "--set", "eval.inference_steps=2", "--set", "eval.classes=[3, 0]",
    ]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "esd" and metrics["mask_fraction"] == 1.0 and len(metrics["history"]) == 2
    assert not (run / "mask.safetensors").exists()
