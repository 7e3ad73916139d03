"""A tiny SD-1.x-shaped pipeline built from configs of the real classes, saved to disk.

Same components and layout as CompVis/stable-diffusion-v1-4 (UNet2DConditionModel with cross
attention, AutoencoderKL with 4 latent channels, CLIPTextModel, CLIPTokenizer, DDIM scheduler),
small enough that generation, Fisher and SFR-on run in seconds on a CPU. The tokenizer is
byte-level (512 byte tokens and their `</w>` forms + 2 specials, no merges): valid offline.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
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


def build_tiny_sd(folder, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the folder of a tiny random SD-1.x pipeline."""
    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
        attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=IMAGE_SIZE,
    )
    tokenizer = write_byte_tokenizer(folder / "_tokenizer_src")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
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
