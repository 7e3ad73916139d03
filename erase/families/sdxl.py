"""SDXL's extra UNet inputs, carried inside each prompt's conditioning tensor.

Besides the text encoders' hidden states (N×77×2048 for SDXL base), an SDXL UNet takes the second
text encoder's pooled embedding (N×1280) and six time ids (original size, crop corner, target size)
as `added_cond_kwargs`. `pack` appends them to the hidden states as extra, zero-padded token rows, so
the one tensor per prompt that the SD family caches, batches, splits across processes and probes
carries all three; `unet_inputs` takes them apart for the UNet call. SD 1.x/2.x conditionings are the
hidden states alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TIME_IDS = 6  # original (h, w), crop top-left (y, x), target (h, w)


def is_xl(unet) -> bool:
    """Whether the UNet takes SDXL's pooled text embedding and time ids."""
    return unet.config.get("addition_embed_type") == "text_time"


def time_ids(height: int, width: int) -> torch.Tensor:
    """What StableDiffusionXLPipeline passes for an uncropped image of this size."""
    return torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32)


def pack(hidden: torch.Tensor, pooled: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N×(L+k)×D: the hidden states, then [pooled, time ids, zeros] in k rows of width D."""
    extra = torch.cat([pooled.float(), time_ids(*size).expand(len(pooled), -1).to(pooled.device)], dim=1)
    width = hidden.shape[-1]
    rows = math.ceil(extra.shape[1] / width)
    extra = F.pad(extra, (0, rows * width - extra.shape[1])).view(len(hidden), rows, width)
    return torch.cat([hidden.float(), extra], dim=1)


def unet_inputs(unet, conditioning: torch.Tensor) -> dict:
    """The UNet's keyword arguments from packed conditionings (the inverse of `pack`)."""
    pooled_dim = unet.config.projection_class_embeddings_input_dim - TIME_IDS * unet.config.addition_time_embed_dim
    rows = math.ceil((pooled_dim + TIME_IDS) / conditioning.shape[-1])
    extra = conditioning[:, -rows:].flatten(1)
    return {"encoder_hidden_states": conditioning[:, :-rows],
            "added_cond_kwargs": {"text_embeds": extra[:, :pooled_dim], "time_ids": extra[:, pooled_dim:pooled_dim + TIME_IDS]}}


@torch.no_grad()
def encode(pipeline, prompts: list[str], size: tuple[int, int]) -> torch.Tensor:
    """Packed conditionings of the prompts for images of `size` (height, width)."""
    hidden, _, pooled, _ = pipeline.encode_prompt(prompts, device=pipeline.device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
    return pack(hidden, pooled, size)


@torch.no_grad()
def null(pipeline, size: tuple[int, int]) -> torch.Tensor:
    """The unconditional side of classifier-free guidance as the pipeline makes it (zeros where its
    config forces them for an empty negative prompt, as SDXL base's does), packed."""
    _, hidden, _, pooled = pipeline.encode_prompt([""], device=pipeline.device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=True)
    return pack(hidden, pooled, size)
