"""Forgetting objectives. Each returns a scalar to *minimise*; the loop scales it by α_f(t)."""

from __future__ import annotations

from typing import Callable

import torch

from erase.core.sharding import all_sum, process_count

EPS = 1e-15


def adaptive_weights(losses: torch.Tensor, temperature: float) -> torch.Tensor:
    """w_i = n·c_i / Σ_j c_j with c_i = 1 / (sg(ℓ_i)^λ + 1e-15): well-remembered samples weigh more.

    λ = 0 gives uniform weights (plain gradient ascent). The weights carry no gradient. Under several
    processes n and Σ_j run over the whole batch, every process's rows (erase.core.sharding).
    """
    detached = losses.detach().float().clamp_min(0)
    c = 1.0 / (detached**temperature + EPS)
    return (losses.numel() * process_count() * c / all_sum(c.sum())).to(losses.dtype)


def adaptive_forget_loss(losses: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_f = mean_i(w_i · ℓ_i), the quantity SFR-on ascends on the forget data."""
    return (adaptive_weights(losses, temperature) * losses).mean()


def ascent_objective(loss_fn: Callable, temperature: float = 0.5) -> Callable:
    """Gradient ascent on the adaptively weighted forget loss (λ = 0: plain GA)."""

    def objective(model, batch):
        losses = loss_fn(model, batch)
        return -adaptive_forget_loss(losses, temperature), losses.detach().mean()

    return objective


def descent_objective(loss_fn: Callable, transform: Callable | None = None) -> Callable:
    """Minimise the loss on transformed forget data (RL: random labels; SD: concept mapped to an anchor)."""

    def objective(model, batch):
        losses = loss_fn(model, transform(batch) if transform else batch)
        return losses.mean(), losses.detach().mean()

    return objective
