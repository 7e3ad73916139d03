"""The Python entry points on loaded pipelines: erase.sd.erase_concept, erase.ddpm.forget_class, erase.dit.forget_class."""

import re

import pytest
import torch
from diffusers import DiTPipeline, StableDiffusionPipeline

import erase.ddpm
import erase.dit
import erase.sd
from erase.errors import UserError
from erase.families import dit
from erase.families.ddpm_pipeline import ClassConditionalDDPMPipeline
from erase.families.sd import read_unet_state
from erase.patch import apply_patch
from erase.recipes import ASSETS_DIR, apply_options
from erase.workflows.sd import Recipe

SD_MODEL, DDPM_MODEL = ASSETS_DIR / "digits-sd", ASSETS_DIR / "digits-ddpm"
# Few images, steps and evaluation samples: the README's call, at test size.
SD_SMALL = dict(steps=2, num_images=8, batches=2, data={"inference_steps": 2},
                eval={"samples": 1, "remain_samples": 1, "inference_steps": 2})


def test_readme_example_erases_saves_and_plain_diffusers_reloads(tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(SD_MODEL)
    result = erase.sd.erase_concept(pipe, forget=["a handwritten seven", "the digit 7"], anchor=["a handwritten one", "the digit 1"],
                                    remain=[f"the digit {d}" for d in (0, 2, 3, 4, 5, 6, 8, 9)], **SD_SMALL)
    pipe.save_pretrained(tmp_path / "erased")
    image = StableDiffusionPipeline.from_pretrained(tmp_path / "erased")("a handwritten seven", guidance_scale=2.0,
                                                                        num_inference_steps=2).images[0]
    assert image.size == (16, 16)

    metrics = result.metrics
    assert result.pipeline is pipe and result.out_dir is None and len(result.history) == 2
    assert metrics["forget_prompts"] == ["a handwritten seven", "the digit 7"] and metrics["steps"] == 2
    for when in ("before", "after"):  # the bundled model's recipe: the digit classifier judges
        assert {"fa", "fa_paraphrase", "remaining_accuracy", "fid", "forget_gap"} <= set(metrics[when])
    assert 0 < result.mask_stats["fraction"] < 1 and metrics["patch"]["changed_weights"] > 0

    # the patch turns the bundled UNet into the erased one, which the saved folder holds
    erased = StableDiffusionPipeline.from_pretrained(tmp_path / "erased").unet.state_dict()
    patched = apply_patch(read_unet_state(SD_MODEL), result.patch, result.patch_metadata)
    assert all(torch.equal(patched[k], erased[k]) for k in erased)
    assert any(not torch.equal(patched[k], v) for k, v in read_unet_state(SD_MODEL).items())


def test_a_copy_of_a_half_precision_pipeline_is_erased_when_asked_and_the_work_folder_is_kept(tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(SD_MODEL, dtype=torch.bfloat16)  # trained in float32, kept bf16
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = erase.sd.erase_concept(pipe, "the digit 3", "the digit 1", "the digit 5", steps=1, num_images=2,
                                    inplace=False, out_dir=tmp_path / "work", lr=1e-3, batches=1,
                                    data={"inference_steps": 2}, **{"eval.samples": 0})
    assert result.pipeline is not pipe and result.pipeline.vae is pipe.vae  # frozen parts shared
    assert all(torch.equal(v, original[k]) for k, v in pipe.unet.state_dict().items())
    assert any(not torch.equal(v, original[k]) for k, v in result.pipeline.unet.state_dict().items())
    assert result.out_dir == tmp_path / "work" and (tmp_path / "work" / "mask.safetensors").is_file()
    assert result.history[0]["lr"] == 1e-3 and set(result.metrics["before"]) == {"forget_gap", "remain_mse"}
    assert result.pipeline.unet.dtype == torch.bfloat16 and result.patch_metadata["changed"] != "0"


def test_options_reach_every_key_and_mistakes_are_the_recipes_user_errors(tmp_path):
    table = apply_options(Recipe, {}, {"lr": 3e-4, "data": {"seed": 1}, "eval.samples": 0, "confine_to_mask": True})
    assert table == {"sfron": {"lr": 3e-4}, "data": {"seed": 1}, "eval": {"samples": 0},
                     "method": {"confine_to_mask": True}}
    pipe = StableDiffusionPipeline.from_pretrained(SD_MODEL)
    work = tmp_path / "work"
    cases = [({"seed": 1}, "seed is a key of several sections (data.seed, sfron.seed, eval.seed)"),
             ({"lrr": 1.0}, "unknown option lrr (did you mean lr?)"),
             ({"sfron.lrr": 1.0}, "unknown recipe key sfron.lrr (did you mean sfron.lr?)"),
             ({"lr": "fast"}, "sfron.lr must be a number"),
             ({"gamma": -1.0}, "sfron.gamma"),
             ({"device": "cpu"}, "unknown option device"),
             ({"model.path": "x"}, "the model is given as an argument"),
             ({"data": 3}, "option data is a section")]
    for options, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            erase.sd.erase_concept(pipe, "the digit 3", "the digit 1", "the digit 5", out_dir=work, **options)
    with pytest.raises(UserError, match="exactly one digit"):  # the bundled model's recipe checks its prompts
        erase.sd.erase_concept(pipe, "a cat", "the digit 1", out_dir=work)
    assert not work.exists()  # refused before any work


def test_forget_class_on_the_bundled_digits_ddpm():
    pipe = ClassConditionalDDPMPipeline.from_pretrained(DDPM_MODEL)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = erase.ddpm.forget_class(pipe, 3, steps=2, batches=1, lr=1e-3,
                                     eval={"forget_samples": 4, "samples_per_class": 2, "inference_steps": 2, "fid": False})
    metrics = result.metrics
    assert metrics["family"] == "ddpm" and metrics["forgotten_class"] == 3 and len(result.history) == 2
    assert 0 <= metrics["after"]["fa"] <= 1 and "grid" not in metrics["after"] and 0 < result.mask_stats["fraction"] < 1
    patched = apply_patch(before, result.patch, result.patch_metadata)
    assert all(torch.equal(patched[k], v) for k, v in pipe.unet.state_dict().items())
    with pytest.raises(UserError, match=r"forget.class must be in \[0, 9\]"):
        erase.ddpm.forget_class(pipe, 12)


def test_forget_class_on_a_tiny_dit_by_its_name(tmp_path):
    names = {str(i): f"thing {i}" for i in range(1000)} | {"207": "golden retriever"}
    torch.manual_seed(0)
    dit.random_pipeline("tiny", id2label=names).save_pretrained(tmp_path / "dit")
    pipe = DiTPipeline.from_pretrained(tmp_path / "dit")
    result = erase.dit.forget_class(
        pipe, "golden retriever", steps=2, batches=1, inplace=False,
        data={"generated_forget": 2, "generated_remain": 2, "remain_classes": [0], "inference_steps": 2, "batch_size": 2},
        eval={"forget_samples": 1, "samples_per_class": 1, "inference_steps": 2, "classes": [207, 0]})
    assert result.metrics["forgotten_class"] == 207 and result.metrics["forgotten_class_name"] == "golden retriever"
    assert result.patch_metadata["component"] == "transformer" and int(result.patch_metadata["changed"]) > 0
    assert result.pipeline.transformer is not pipe.transformer and result.pipeline.vae is pipe.vae
    with pytest.raises(UserError, match="not an ImageNet class name"):
        erase.dit.forget_class(pipe, "no such class")
