"""The main job on the embedded default: the bundled text-to-image pipeline (assets/digits-sd).

erase (few steps) -> reload with plain diffusers -> `erase generate` from a labelled prompt CSV ->
`erase evaluate classifier --classifier digits`; the model's tokenizer and the [digits] prompt sets.
"""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from erase.cli import main
from erase.data.digit_captions import (
    HELDOUT_TEMPLATES,
    captions,
    concept_prompts,
    prompt_csv,
    swap_digit,
    tokenizer_words,
)
from erase.data.tokenizer import build_tokenizer
from erase.errors import UserError
from erase.recipes import ASSETS_DIR
from erase.workflows.sd_digits import prompt_sets

MODEL = ASSETS_DIR / "digits-sd"
needs_model = pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="bundled model missing")
SMALL = ["--set", "data.num_images=16", "--set", "fisher.batches=2", "--set", "eval.samples=1",
         "--set", "eval.remain_samples=1", "--set", "eval.inference_steps=4", "--set", "data.inference_steps=4"]


def test_tokenizer_knows_every_caption_word_and_splits_the_rest():
    tokenizer = build_tokenizer(tokenizer_words())
    for text in captions(7) + captions(7, HELDOUT_TEMPLATES) + ["a phone", "someone"]:
        words = text.split()
        assert len(tokenizer(text, add_special_tokens=False).input_ids) == len(words), text
    pieces = tokenizer("xylophonic", add_special_tokens=False).input_ids
    assert len(pieces) > 1 and tokenizer.decode(pieces) == "xylophonic"


def test_concept_prompt_sets_pair_forget_and_anchor_prompts():
    sets = concept_prompts([3, 7], anchor_digit=1)
    assert [swap_digit(p, 1) for p, _ in sets["forget"]] == [p for p, _ in sets["anchor"]]
    assert {d for _, d in sets["remain"]} == {0, 1, 2, 4, 5, 6, 8, 9}
    assert {d for _, d in sets["paraphrase"]} == {3, 7}
    assert not {p for p, _ in sets["paraphrase"]} & {p for p, _ in sets["forget"]}
    assert [d for _, d in sets["remain"][:8]] == [0, 1, 2, 4, 5, 6, 8, 9]  # any prefix covers every digit


def test_explicit_forget_prompts_name_the_digits_to_erase():
    forget, remain, sets = prompt_sets({"digits": {"forget": [7], "anchor": 1},
                                        "forget": {"prompts": ["a sketch of a Three", "the digit 3"]}})
    assert sets["forget_digits"] == [3] and forget["anchor"] == ["a sketch of a one", "the digit 1"]
    assert all("three" not in p and "3" not in p.split() for p in remain["prompts"])
    with pytest.raises(UserError, match="exactly one digit"):
        prompt_sets({"digits": {"forget": [7]}, "forget": {"prompts": ["a handwritten digit"]}})
    with pytest.raises(UserError, match="anchor"):
        prompt_sets({"digits": {"forget": [1], "anchor": 1}})


@needs_model
def test_bundled_model_loads_with_plain_diffusers_and_draws_digits():
    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL))
    pipe.set_progress_bar_config(disable=True)
    assert (MODEL / "tokenizer" / "vocab.json").is_file() and (MODEL / "tokenizer" / "merges.txt").is_file()
    images = pipe(["a handwritten seven", "the digit 3"], guidance_scale=2.0, num_inference_steps=10,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


@needs_model
def test_demo_erases_reloads_generates_and_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--steps", "2", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "FA, held-out paraphrases" in printed and "not erased yet" in printed  # 2 steps, 16 images: too few
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["family"] == "sd" and metrics["method"] == "sfron" and metrics["steps"] == 2
    assert metrics["seconds"] > 0 and 0 < metrics["mask_fraction"] < 1
    assert "a handwritten seven" in metrics["forget_prompts"] and "a handwritten one" in metrics["anchor_prompts"]
    timings = metrics["timings"]  # every phase of the job, and the time line printed at the end
    assert all(timings[phase] > 0 for phase in ("generate", "encode", "fisher", "loop", "evaluate", "export"))
    assert timings["steps_per_second"] > 0 and "time: generate" in printed
    for when in ("before", "after"):
        assert {"fa", "fa_paraphrase", "remaining_accuracy", "fid"} <= set(metrics[when])
        assert all(0 <= metrics[when][k] <= 1 for k in ("fa", "fa_paraphrase", "remaining_accuracy"))
    for name in ("patch.safetensors", "grid_before.png", "grid_after.png", "loss.png", "config.toml"):
        assert (out / name).is_file(), name

    pipe = StableDiffusionPipeline.from_pretrained(str(out / "model"))  # plain diffusers, no project code
    assert pipe.unet.config.sample_size == 8

    prompts = tmp_path / "heldout.csv"
    prompts.write_text(prompt_csv([3, 7]))
    images = tmp_path / "images"
    assert main(["generate", "--model", str(out / "model"), "--prompts", str(prompts), "--out", str(images),
                 "--steps", "4", "--guidance", "2"]) == 0
    report = tmp_path / "report.json"
    assert main(["evaluate", "classifier", str(images), "--classifier", "digits", "--label", "7",
                 "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["images"] == 2 * 2 * len(HELDOUT_TEMPLATES) and set(result["per_label_accuracy"]) == {"3", "7"}
    assert 0 <= result["fa"] <= 1


@needs_model
def test_erase_sd_takes_the_bundled_models_recipe_and_explicit_prompts(tmp_path):
    out = tmp_path / "three"
    assert main(["sd", "--model", str(MODEL), "--forget-prompt", "a handwritten three", "--forget-prompt",
                 "the digit 3", "--steps", "1", "--out", str(out), *SMALL]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["forget_prompts"] == ["a handwritten three", "the digit 3"]
    assert metrics["anchor_prompts"] == ["a handwritten one", "the digit 1"]
    assert "fa_paraphrase" in metrics["after"]
