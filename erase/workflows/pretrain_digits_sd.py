"""Train the bundled text-to-image default: a tiny Stable Diffusion pipeline on sklearn's digits.

Only standard diffusers/transformers classes and file layouts (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, CLIPTokenizer, DDIMScheduler), so `StableDiffusionPipeline.from_pretrained(folder)`
loads it offline with no project code. Seeded; a few minutes on a 2-core CPU. Stages:
  1. tokenizer: byte-level BPE learned from the caption words and everyday words;
  2. VAE: 16×16×3 digits <-> 4×8×8 latents (reconstruction plus a small KL term);
  3. text encoder: trained alone to carry the digit in every token state from the digit's word or
     numeral onwards (a linear probe per position), with filler words it must ignore, then frozen
     as SD freezes CLIP. Trained jointly with the UNet it learned nothing; frozen at random
     initialisation the UNet ignored it (../shared/DESIGN.md §7);
  4. UNet: ε-prediction on the latents, captions from TRAIN_TEMPLATES, 10% empty captions for
     classifier-free guidance; the EMA weights are shipped.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from erase.data.digit_captions import COMMON_WORDS, DIGIT_WORDS, TRAIN_TEMPLATES, captions, digit_forms, tokenizer_words
from erase.data.digits import load_digits_tensors
from erase.data.tokenizer import build_tokenizer, save_tokenizer

IMAGE_SIZE = 16
VAE_STEPS = 400
TEXT_STEPS = 600
UNET_STEPS = 2000
BATCH_SIZE = 64
EMPTY_CAPTION_RATE = 0.1
BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def training_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,437 training digits upscaled 8→16 (nearest), grey copied to RGB, in [-1, 1]."""
    images, labels = load_digits_tensors("train")
    images = F.interpolate(images, scale_factor=IMAGE_SIZE // images.shape[-1], mode="nearest")
    return images.expand(-1, 3, -1, -1).contiguous(), labels


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
        layers_per_block=1, norm_num_groups=8, sample_size=IMAGE_SIZE,
    )


def build_text_encoder(tokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
    )


def cosine_lr(optimizer, steps: int, warmup: int):
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_vae(images: torch.Tensor, steps: int, generator: torch.Generator, show_progress: bool) -> AutoencoderKL:
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = cosine_lr(optimizer, steps, warmup=20)
    for _ in tqdm(range(steps), desc="VAE", disable=not show_progress, leave=False):
        x = images[torch.randint(0, len(images), (BATCH_SIZE,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.mse_loss(reconstruction, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        means = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    return vae


class CaptionSampler:
    """Random training captions (template, word or numeral) with optional filler words.

    `digit_position` is the token index of the digit in the caption: the text encoder is taught
    that every state from there on names the digit, whatever words surround it.
    """

    def __init__(self, tokenizer, seed: int):
        self.tokenizer = tokenizer
        self.rng = np.random.default_rng(seed)
        self.digit_tokens = {}
        for digit in range(10):
            for form in digit_forms(digit):
                self.digit_tokens[tokenizer.convert_tokens_to_ids(form + "</w>")] = digit
        fillers = [w for w in COMMON_WORDS if w not in DIGIT_WORDS]
        self.fillers = [w for w in fillers if not self._names_digit(w)]

    def _names_digit(self, text: str) -> bool:
        return any(t in self.digit_tokens for t in self.tokenizer(text, add_special_tokens=False).input_ids)

    def _filler(self) -> str:
        if self.rng.random() < 0.5:
            return str(self.rng.choice(self.fillers))
        while True:  # a made-up word: it tokenizes into pieces, as an unseen word in a user's prompt does
            word = "".join(self.rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(self.rng.integers(2, 9))))
            if not self._names_digit(word):
                return word

    def sample(self, digits: list[int], max_fillers: int = 3) -> tuple[list[str], list[int]]:
        texts = []
        for digit in digits:
            template = TRAIN_TEMPLATES[int(self.rng.integers(len(TRAIN_TEMPLATES)))]
            words = template.format(d=digit_forms(digit)[int(self.rng.integers(2))]).split()
            for _ in range(int(self.rng.integers(0, max_fillers + 1))):
                words.insert(int(self.rng.integers(0, len(words) + 1)), self._filler())
            texts.append(" ".join(words))
        return texts, digits

    def token_labels(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Per position: the digit from its first mention on, -100 (ignored) before it."""
        labels = torch.full_like(input_ids, -100)
        for row, ids in enumerate(input_ids.tolist()):
            position = next(i for i, t in enumerate(ids) if t in self.digit_tokens)
            labels[row, position:] = self.digit_tokens[ids[position]]
        return labels


def train_text_encoder(tokenizer, steps: int, seed: int, show_progress: bool) -> CLIPTextModel:
    torch.manual_seed(seed)
    encoder = build_text_encoder(tokenizer)
    probe = torch.nn.Linear(encoder.config.hidden_size, 10)
    sampler = CaptionSampler(tokenizer, seed)
    parameters = list(encoder.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=3e-3, weight_decay=0.0)
    schedule = cosine_lr(optimizer, steps, warmup=30)
    for _ in tqdm(range(steps), desc="text encoder", disable=not show_progress, leave=False):
        texts, _ = sampler.sample([int(d) for d in sampler.rng.integers(0, 10, BATCH_SIZE)])
        ids = tokenize(tokenizer, texts)
        states = encoder(ids).last_hidden_state
        loss = F.cross_entropy(probe(states).flatten(0, 1), sampler.token_labels(ids).flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
    return encoder.eval().requires_grad_(False)


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def train_unet(latent_mean, latent_std, labels, caption_states, empty_state, steps: int, seed: int,
               show_progress: bool) -> UNet2DConditionModel:
    """caption_states[d]: the frozen encoder's states of digit d's training captions (K×77×D)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    unet = build_unet()
    scheduler = DDPMScheduler(**BETAS)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = cosine_lr(optimizer, steps, warmup=100)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    ema_params, params = list(ema.parameters()), list(unet.parameters())
    bar = tqdm(range(steps), desc="UNet", disable=not show_progress, leave=False)
    for step in bar:
        idx = torch.randint(0, len(labels), (BATCH_SIZE,), generator=generator)
        latents = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=generator)
        which = [int(torch.randint(0, len(caption_states[int(d)]), (1,), generator=generator)) for d in labels[idx]]
        states = torch.stack([caption_states[int(d)][k] for d, k in zip(labels[idx], which)])
        empty = torch.rand(BATCH_SIZE, generator=generator) < EMPTY_CAPTION_RATE
        states[empty] = empty_state
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH_SIZE,), generator=generator)
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, encoder_hidden_states=states).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(0.997, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema


def pretrain_digits_sd(out_dir, unet_steps: int = UNET_STEPS, seed: int = 0, evaluate: bool = True,
                       show_progress: bool = True) -> dict:
    """Writes a StableDiffusionPipeline folder (with a README of its captions and quality) to out_dir."""
    from erase.core.io import atomic_directory

    started = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = training_images()
    words = tokenizer_words()
    tokenizer = build_tokenizer(words)

    vae = train_vae(images, VAE_STEPS, generator, show_progress)
    with torch.no_grad():
        posteriors = [vae.encode(images[i : i + 256]).latent_dist for i in range(0, len(images), 256)]
        scale = vae.config.scaling_factor
        latent_mean = torch.cat([p.mean for p in posteriors]) * scale
        latent_std = torch.cat([p.std for p in posteriors]) * scale
        reconstruction = vae.decode(latent_mean[:256] / scale).sample
        vae_mse = float(F.mse_loss(reconstruction, images[:256]))
    vae_seconds = time.perf_counter() - started

    text_encoder = train_text_encoder(tokenizer, TEXT_STEPS, seed, show_progress)
    with torch.no_grad():
        caption_states = [text_encoder(tokenize(tokenizer, captions(d))).last_hidden_state for d in range(10)]
        empty_state = text_encoder(tokenize(tokenizer, [""])).last_hidden_state[0]
    text_seconds = time.perf_counter() - started - vae_seconds

    unet = train_unet(latent_mean, latent_std, labels, caption_states, empty_state, unet_steps, seed, show_progress)
    scheduler = DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    info = {
        "seconds_training": round(time.perf_counter() - started, 1),
        "seconds_vae": round(vae_seconds, 1),
        "seconds_text_encoder": round(text_seconds, 1),
        "vae_reconstruction_mse": round(vae_mse, 5),
        "unet_steps": unet_steps,
        "parameters": {name: sum(p.numel() for p in module.parameters())
                       for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))},
        "vocabulary": len(tokenizer),
        "seed": seed,
    }
    pipeline.set_progress_bar_config(disable=True)
    if evaluate:
        info["quality"] = judge_quality(pipeline)
    info["seconds"] = round(time.perf_counter() - started, 1)
    with atomic_directory(out_dir) as folder:
        pipeline.save_pretrained(folder, safe_serialization=True)
        save_tokenizer(tokenizer, words, Path(folder) / "tokenizer")
        (Path(folder) / "README.md").write_text(model_card(info))
    return info


QUALITY = dict(samples=4, guidance=2.0, steps=20)


def judge_quality(pipeline) -> dict:
    """The digit classifier's accuracy on images of training captions and of held-out paraphrases."""
    import tempfile

    from erase.data.digit_captions import HELDOUT_TEMPLATES
    from erase.workflows.sd_digits import caption_accuracy

    with tempfile.TemporaryDirectory() as tmp:
        train = caption_accuracy(pipeline, TRAIN_TEMPLATES, Path(tmp) / "train", **QUALITY)
        heldout = caption_accuracy(pipeline, HELDOUT_TEMPLATES, Path(tmp) / "heldout", **QUALITY)
    return {
        "train": {str(d): round(a, 4) for d, a in train.items()}, "heldout": {str(d): round(a, 4) for d, a in heldout.items()},
        "train_mean": sum(train.values()) / 10, "train_min": min(train.values()),
        "heldout_mean": sum(heldout.values()) / 10, "heldout_min": min(heldout.values()),
        "settings": QUALITY,
    }


def model_card(info: dict) -> str:
    """README.md of the bundled folder: what it is, how to load it, its captions and its measured quality."""
    from erase.data.digit_captions import HELDOUT_TEMPLATES

    lines = [
        "# digits-sd: a tiny text-to-image Stable Diffusion pipeline on handwritten digits",
        "",
        "The embedded default of `erase` (`erase demo`): Stable Diffusion's own architecture and file layout "
        "(UNet2DConditionModel, AutoencoderKL, CLIPTextModel, a byte-level BPE CLIPTokenizer, DDIMScheduler), "
        "trained on scikit-learn's handwritten digits (16×16, RGB) with text captions by `erase pretrain digits-sd` "
        f"(seed {info['seed']}, {info['seconds_training']} s on the CPU). Plain diffusers loads it, no project code:",
        "",
        "```python",
        "from diffusers import StableDiffusionPipeline",
        'pipe = StableDiffusionPipeline.from_pretrained("assets/digits-sd")',
        'images = pipe(["a handwritten seven", "the digit 3"], guidance_scale=2.0, num_inference_steps=20).images',
        "```",
        "",
        "Parameters: " + ", ".join(f"{k} {v:,}" for k, v in info["parameters"].items()) + f"; vocabulary {info['vocabulary']}.",
        "",
        "## Captions",
        "Each names the digit as a word (`seven`) or a numeral (`7`); 10% of training captions are empty "
        "(classifier-free guidance). Training templates:",
        "",
        *[f"- `{t}`" for t in TRAIN_TEMPLATES],
        "",
        "Held-out paraphrases (never seen in training; used only to check that an erasure generalises):",
        "",
        *[f"- `{t}`" for t in HELDOUT_TEMPLATES],
        "",
        "The text encoder was trained alone to carry the digit in every token state from the digit's word or "
        "numeral onwards, ignoring filler words, then frozen: paraphrases generalise more easily here than "
        "through a real CLIP text encoder.",
    ]
    quality = info.get("quality")
    if quality:
        q = quality["settings"]
        lines += [
            "",
            "## Quality",
            f"Share of images read as the named digit by the bundled digit classifier ({q['samples']} images per "
            f"caption, guidance {q['guidance']}, {q['steps']} DDIM steps):",
            "",
            "| captions | " + " | ".join(str(d) for d in range(10)) + " | mean |",
            "|---|" + "---|" * 11,
            "| training | " + " | ".join(f"{quality['train'][str(d)]:.2f}" for d in range(10)) + f" | {quality['train_mean']:.3f} |",
            "| held-out | " + " | ".join(f"{quality['heldout'][str(d)]:.2f}" for d in range(10)) + f" | {quality['heldout_mean']:.3f} |",
        ]
    return "\n".join(lines) + "\n"
