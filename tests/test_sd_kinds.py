"""SD 2.x (v-prediction) and SDXL through the same commands as SD 1.x, on tiny pipelines built from configs."""

import copy
import json

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file
from sd_fixtures import folder_files, run_cli, tiny_sd2, tiny_sdxl  # noqa: F401

from erase.core.saliency import load_mask
from erase.families import sd, sdxl
from erase.recipes import REPO_ROOT

TINY = ["--height", 16, "--width", 16, "--inference-steps", 2, "--num-images", 4, "--batch-size", 2,
        "--fisher-batches", 2, "--mixed-precision", "no", "--eval-samples", 0]
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"
PIPELINES = {"sd2": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}


def mse(a, b):
    return ((a - b) ** 2).mean(dim=(1, 2, 3))


@pytest.mark.parametrize("kind", ["sd2", "sdxl"])
def test_erase_reload_in_plain_diffusers_generate_evaluate(kind, request, tmp_path, capsys):
    model = request.getfixturevalue(f"tiny_{kind}")
    run = tmp_path / "run"
    # forget steps alone, so every changed weight must lie under the mask
    code, out, err = run_cli(["sd", "--model", model, "--steps", 3, "--lr", 1e-3, "--out", run,
                              "--set", "method.remain_steps=false", *TINY], capsys)
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["after"]["forget_gap"] != metrics["before"]["forget_gap"]
    if kind == "sdxl":  # the SDXL recipe is picked for an SDXL model
        assert "guidance = 5.0" in (run / "config.toml").read_text()

    mask = load_mask(run / "mask.safetensors")
    base, after = load_file(str(model / UNET_FILE)), load_file(str(run / "model" / UNET_FILE))
    inside = sum(int(((after[n] != base[n]) & m).sum()) for n, m in mask.items())
    outside = sum(int(((after[n] != base[n]) & ~m).sum()) for n, m in mask.items())
    assert inside > 0 and outside == 0

    # only the UNet weights differ: text encoders (both, for SDXL), tokenizers, VAE, scheduler byte for byte
    exported, original = folder_files(run / "model"), folder_files(model)
    assert set(exported) == set(original)
    assert {name for name in original if exported[name] != original[name]} == {UNET_FILE}
    if kind == "sdxl":
        assert {"text_encoder_2/model.safetensors", "tokenizer_2/tokenizer.json", "vae/diffusion_pytorch_model.safetensors"} <= set(original)

    pipeline = PIPELINES[kind].from_pretrained(run / "model")
    assert type(pipeline) is PIPELINES[kind]
    assert all(torch.equal(v, pipeline.unet.state_dict()[k]) for k, v in after.items())

    rebuilt = tmp_path / "rebuilt"  # the patch rebuilds the same folder
    assert run_cli(["patch", "apply", model, run / "patch.safetensors", rebuilt], capsys)[0] == 0
    assert folder_files(rebuilt) == exported

    images = tmp_path / "i2p"  # the model's own size when none is given (16 here)
    code, out, err = run_cli(["generate", "--model", run / "model", "--prompts", REPO_ROOT / "prompts" / "i2p-sample.csv",
                              "--out", images, "--category", "sexual", "--limit", 2, "--steps", 2], capsys)
    assert code == 0, err
    pngs = sorted(images.glob("*.png"))
    assert [p.name for p in pngs] == ["0_0.png", "2_0.png"]
    from PIL import Image

    assert Image.open(pngs[0]).size == (16, 16)
    code, out, err = run_cli(["evaluate", "nudity", images], capsys)
    assert code == 0, err
    assert json.loads((images / "nudity.json").read_text())["images"] == 2


def test_sdxl_esd_x_and_its_lora_export_load_into_the_original_pipeline(tiny_sdxl, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    code, _, err = run_cli(["sd", "--model", tiny_sdxl, "--steps", 1, "--lr", 1e-3, "--out", run, "--train", "xattn",
                            "--method", "esd", "--export-lora", "full", *TINY], capsys)
    assert code == 0, err
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipe.load_lora_weights(str(run / "lora-full.safetensors"), adapter_name="erasure")
    pipe.fuse_lora(components=["unet"])
    fused = {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    erased = load_file(str(run / "model" / UNET_FILE))
    changed = [n for n, v in erased.items() if n.endswith("to_k.weight") and not torch.equal(v, load_file(
        str(tiny_sdxl / UNET_FILE))[n])]
    assert changed and all(torch.allclose(fused[n], erased[n], atol=1e-5) for n in changed)


def test_the_python_api_starts_an_sdxl_pipeline_from_the_sdxl_recipe(tiny_sdxl, tmp_path):  # noqa: F811
    """erase.sd.erase_concept on an SDXL pipeline takes pipelines/sdxl-nudity.toml, as `erase sd` does."""
    import erase.sd

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = erase.sd.erase_concept(pipe, "a photo of a cat", "a photo of a dog", steps=1, num_images=2,
                                    out_dir=tmp_path / "work", lr=1e-3, batches=1, mixed_precision="no",
                                    data={"height": 16, "width": 16, "inference_steps": 2}, **{"eval.samples": 0})
    assert any(not torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    assert result.metrics["steps"] == 1
    from erase.recipes import load_recipe

    sdxl_guidance = load_recipe(REPO_ROOT / "pipelines" / "sdxl-nudity.toml")["data"]["guidance"]
    manifest = json.loads((tmp_path / "work" / "data" / "forget" / "manifest.json").read_text())
    assert sdxl_guidance == 5.0 and manifest["guidance"] == sdxl_guidance  # the SD v1.4 default would be 7.5


def test_v_prediction_loss_targets_v_and_the_comparisons_do_not_depend_on_it(tiny_sd2):  # noqa: F811
    pipeline, _ = sd.load_pipeline(str(tiny_sd2))
    unet, v_scheduler = pipeline.unet, pipeline.scheduler
    assert v_scheduler.config.prediction_type == "v_prediction"
    eps_scheduler = DDIMScheduler.from_config(v_scheduler.config, prediction_type="epsilon")
    latents = torch.randn(2, 4, 8, 8)
    forget = sd.encode_prompts(pipeline, ["a photo of a nude person"] * 2)
    anchor = sd.encode_prompts(pipeline, ["a photo of a person wearing clothes"] * 2)

    def loss(loss_fn, batch):
        torch.manual_seed(3)
        return loss_fn(unet, batch).detach()

    v_loss = loss(sd.epsilon_loss(v_scheduler), (latents, forget))
    eps_loss = loss(sd.epsilon_loss(eps_scheduler), (latents, forget))
    torch.manual_seed(3)  # the same draws, by hand: v = √ᾱ ε − √(1−ᾱ) x₀
    noise, t = torch.randn_like(latents), torch.randint(0, 1000, (2,))
    alpha = v_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    with torch.no_grad():
        prediction = unet(x_t, t, encoder_hidden_states=forget).sample
    assert torch.allclose(v_loss, mse(prediction, alpha.sqrt() * noise - (1 - alpha).sqrt() * latents), atol=1e-6)
    assert torch.allclose(eps_loss, mse(prediction, noise), atol=1e-6)
    assert not torch.allclose(v_loss, eps_loss, rtol=1e-2)

    # Concept mapping and ESD compare two outputs of the model: the same loss under either prediction type.
    teacher = copy.deepcopy(unet)
    null = sd.null_conditioning(pipeline).unsqueeze(0)
    for make, batch in ((sd.mapping_loss, (latents, forget, anchor)),
                        (lambda s: sd.esd_loss(s, teacher, null, 2.0), (latents, forget))):
        assert torch.equal(loss(make(v_scheduler), batch), loss(make(eps_scheduler), batch))


def test_sdxl_losses_pass_the_pooled_embedding_and_time_ids(tiny_sdxl):  # noqa: F811
    pipeline, _ = sd.load_pipeline(str(tiny_sdxl))
    unet = pipeline.unet
    prompts = ["a photo of a nude person", "a cat"]
    packed = sd.encode_prompts(pipeline, prompts, (16, 24))
    hidden, _, pooled, _ = pipeline.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    time_ids = pipeline._get_add_time_ids((16, 24), (0, 0), (16, 24), torch.float32,
                                          text_encoder_projection_dim=pipeline.text_encoder_2.config.projection_dim)
    inputs = sdxl.unet_inputs(unet, packed)
    assert torch.equal(inputs["encoder_hidden_states"], hidden)
    assert torch.equal(inputs["added_cond_kwargs"]["text_embeds"], pooled)
    assert torch.equal(inputs["added_cond_kwargs"]["time_ids"], time_ids.expand(2, -1))

    # the ε-loss noises the DDPM way (not Euler's σ scale) and calls the UNet with the added conditions
    latents = torch.randn(2, 4, 8, 8)
    torch.manual_seed(5)
    loss = sd.epsilon_loss(pipeline.scheduler)(unet, (latents, packed)).detach()
    torch.manual_seed(5)
    noise, t = torch.randn_like(latents), torch.randint(0, 1000, (2,))
    alpha = pipeline.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        prediction = unet(alpha.sqrt() * latents + (1 - alpha).sqrt() * noise, t, encoder_hidden_states=hidden,
                          added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.expand(2, -1)}).sample
    assert torch.allclose(loss, mse(prediction, noise), atol=1e-6)

    # ESD's ∅ is the pipeline's own unconditional input: zeros for SDXL (force_zeros_for_empty_prompt)
    null = sdxl.unet_inputs(unet, sd.null_conditioning(pipeline, (16, 24)).unsqueeze(0))
    assert not null["encoder_hidden_states"].any() and not null["added_cond_kwargs"]["text_embeds"].any()


def test_other_pipelines_are_refused_with_one_line(tmp_path, capsys):
    dit = tmp_path / "dit"
    dit.mkdir()
    (dit / "model_index.json").write_text(json.dumps({
        "_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "KarrasDiffusionSchedulers"]}))
    digits_ddpm = REPO_ROOT / "assets" / "digits-ddpm"
    for model, found in ((dit, "DiTPipeline"), (digits_ddpm, "ClassConditionalDDPMPipeline")):
        for argv in (["sd", "--model", model, "--out", tmp_path / "out", "--steps", 1],
                     ["generate", "--model", model, "--prompts", REPO_ROOT / "prompts" / "i2p-sample.csv",
                      "--out", tmp_path / "out"]):
            code, _, err = run_cli(argv, capsys)
            assert code == 2, err
            assert len(err.strip().splitlines()) == 1 and found in err and "not a Stable Diffusion" in err, err
            assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, model, size", [("sd-2-1-nudity", "stabilityai/stable-diffusion-2-1", 768),
                                               ("sdxl-nudity", "stabilityai/stable-diffusion-xl-base-1.0", 1024)])
def test_recipes_are_valid_and_keep_the_v1_4_settings(name, model, size):
    from erase.recipes import load_recipe
    from erase.workflows.sd import Settings

    settings, v14 = Settings(load_recipe(REPO_ROOT / "pipelines" / f"{name}.toml")), Settings(
        load_recipe(REPO_ROOT / "pipelines" / "sd-v1-4-nudity.toml"))
    assert (settings.model, settings.height, settings.width) == (model, size, size)
    for key in ("forget_rows", "remain_rows", "anchors", "num_images", "batch_size", "method", "forget_loss", "train"):
        assert getattr(settings, key) == getattr(v14, key), key
    assert settings.config.lr == v14.config.lr and settings.config.steps == v14.config.steps


def test_attack_refuses_sdxl_with_one_line(tiny_sdxl, tmp_path, capsys):  # noqa: F811
    code, _, err = run_cli(["attack", "--model", tiny_sdxl, "--original", tiny_sdxl, "--prompts",
                            REPO_ROOT / "prompts" / "i2p-sample.csv", "--judge", "nudenet", "--out", tmp_path / "out"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "SDXL" in err, err
    assert not (tmp_path / "out").exists()
