"""Tiny SD 1.x, SD 2.x and SDXL pipelines built from configs of the real classes, saved to disk.

Same components and layout as CompVis/stable-diffusion-v1-4 (UNet2DConditionModel with cross
attention, AutoencoderKL with 4 latent channels, CLIPTextModel, CLIPTokenizer, DDIM scheduler),
small enough that generation, Fisher and SFR-on run in seconds on a CPU. The SD 2.x variant has
stabilityai/stable-diffusion-2-1's differences (v-prediction DDIM, linear projections in the
transformers, a GELU text encoder); the SDXL one is a StableDiffusionXLPipeline with two text
encoders (CLIPTextModel, CLIPTextModelWithProjection), the pooled-text and time-id embedding and
SDXL's Euler scheduler. The tokenizer is byte-level (512 byte tokens and their `</w>` forms + 2
specials, no merges): valid offline.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

IMAGE_SIZE = 16  # pixels; the VAE halves it, so latents are 4×8×8
TEXT_DIM = 32


def write_byte_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary is every byte (plain and end-of-word) plus the two specials."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)
    return tokenizer


def tiny_unet(xl: bool = False, **sd2) -> UNet2DConditionModel:
    """SD's UNet at toy size; `xl`: with SDXL's pooled-text + time-id embedding and two encoders' width."""
    extra = {}
    if xl:  # SDXL: cross attention over both encoders' states; pooled (TEXT_DIM) + 6 time ids × 8
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8, use_linear_projection=True,
                     projection_class_embeddings_input_dim=TEXT_DIM + 6 * 8)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=2 * TEXT_DIM if xl else TEXT_DIM,
        attention_head_dim=4, norm_num_groups=8, **extra, **sd2,
    )


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=IMAGE_SIZE,
    )


def text_config(tokenizer, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra,
    )


def build_tiny_sd(folder, seed: int = 0, v_prediction: bool = False) -> Path:
    """Build, save (safetensors) and return the folder of a tiny random SD-1.x pipeline
    (`v_prediction`: SD 2.1's kind, with its v-prediction scheduler, linear projections and GELU text encoder)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    sd2 = {"use_linear_projection": True} if v_prediction else {}
    unet = tiny_unet(**sd2)
    vae = tiny_vae()
    tokenizer = write_byte_tokenizer(folder / "_tokenizer_src")
    text_encoder = CLIPTextModel(text_config(tokenizer, **({"hidden_act": "gelu"} if v_prediction else {})))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000,
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder / "pipeline", safe_serialization=True)
    return folder / "pipeline"


def build_tiny_sdxl(folder, seed: int = 0) -> Path:
    """Build, save and return the folder of a tiny random StableDiffusionXLPipeline (SDXL base's layout)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    unet, vae = tiny_unet(xl=True), tiny_vae()
    tokenizer = write_byte_tokenizer(folder / "_tokenizer_src")
    text_encoder = CLIPTextModel(text_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer, projection_dim=TEXT_DIM, hidden_act="gelu"))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", num_train_timesteps=1000,
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    pipeline.save_pretrained(folder / "pipeline", safe_serialization=True)
    return folder / "pipeline"


I2P_HEADER = ["", "prompt", "categories", "hard", "inappropriate_percentage", "nudity_percentage",
              "evaluation_seed", "evaluation_guidance", "sd_image_width", "sd_image_height", "case_number"]


def write_i2p_csv(path, rows) -> Path:
    """An I2P-format CSV from (prompt, categories, seed, guidance, case_number) tuples."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(I2P_HEADER)
        for i, (prompt, categories, seed, guidance, case_number) in enumerate(rows):
            writer.writerow([i, prompt, categories, 0, 0.0, 0.0, seed, guidance, 512, 512, case_number])
    return path


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    """One tiny pipeline folder per test module."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def tiny_sd2(tmp_path_factory) -> Path:
    """A tiny SD-2.x-style (v-prediction) pipeline folder per test module."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd2"), v_prediction=True)


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A tiny SDXL pipeline folder per test module."""
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Run `erase ARGV` in-process; (exit code, stdout, stderr). argparse exits are caught."""
    from erase.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def same_bytes(a: Path, b: Path) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()


def folder_files(folder: Path) -> dict[str, bytes]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
