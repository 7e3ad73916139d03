"""What the diffusion families (DDPM, DiT, SD) share: noising at random timesteps, the per-sample MSE, ESD's target."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from erase.core.sharding import draw_rows


def noised(scheduler, x: torch.Tensor):
    """(x_t, ε, t): x noised at timesteps drawn uniformly, one per sample (drawn for the whole batch
    under several processes, so each sample's draw does not depend on how many there are)."""
    noise = draw_rows(lambda n: torch.randn((n, *x.shape[1:]), dtype=x.dtype, device=x.device), len(x))
    timesteps = draw_rows(lambda n: torch.randint(0, scheduler.config.num_train_timesteps, (n,), device=x.device), len(x))
    return scheduler.add_noise(x, noise, timesteps), noise, timesteps


def noised_batch(scheduler, model: torch.nn.Module, batch):
    """(x_t, ε, t, labels) on the model's device for a class-conditional (images or latents, labels) batch."""
    images, labels = batch
    device = next(model.parameters()).device  # CPU batches follow a model on the GPU (Fisher, masks)
    return (*noised(scheduler, images.to(device)), labels.to(device))


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


def guided_away(eps_null: torch.Tensor, eps_class: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """ESD's target ε(∅) − η(ε(c) − ε(∅)): classifier-free guidance pointed away from the class."""
    return eps_null - negative_guidance * (eps_class - eps_null)


def cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.dtype:
    """Put the model's weights in `dtype`, in place; returns the dtype they had. A half-precision pipeline's
    model is trained in float32 (what the optimizer can update) and given back in its own dtype. Torch's
    own `to`: diffusers' would warn about float32-kept modules these models do not have."""
    before = next(model.parameters()).dtype
    if before != dtype:
        torch.nn.Module.to(model, dtype)
    return before
