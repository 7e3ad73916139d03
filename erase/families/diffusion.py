"""What the class-conditional diffusion families (DDPM, DiT) share: noising a batch, the per-sample MSE."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def noised_batch(scheduler, model: torch.nn.Module, batch):
    """(x_t, ε, t, labels) on the model's device: the batch's images (or latents) noised at uniform timesteps."""
    images, labels = batch
    device = next(model.parameters()).device  # CPU batches follow a model on the GPU (Fisher, masks)
    images, labels = images.to(device), labels.to(device)
    noise = torch.randn_like(images)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (images.shape[0],), device=device)
    return scheduler.add_noise(images, noise, timesteps), noise, timesteps, labels


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


def guided_away(eps_null: torch.Tensor, eps_class: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """ESD's target ε(∅) − η(ε(c) − ε(∅)): classifier-free guidance pointed away from the class."""
    return eps_null - negative_guidance * (eps_class - eps_null)
