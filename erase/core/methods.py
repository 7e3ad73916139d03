"""Methods that share the SFR-on loop and differ only in their forget objective and mask.

The one place where a method name (sfron, ga, rl, salun, ft, esd) becomes a forget objective, a
mask and a cached Fisher. A family hands in its per-sample loss and, for the descent methods, the
loss on mapped forget data (another class, an anchor prompt, ESD's target); the core never imports
a family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from erase.core.fisher import fisher_diagonal, gradient_sum, load_fisher, save_fisher, trainable_parameters
from erase.core.io import atomic_write_json
from erase.core.losses import ascent_objective, descent_objective
from erase.core.saliency import gradient_saliency_mask, saliency_mask
from erase.errors import UserError


@dataclass(frozen=True)
class MethodSpec:
    """How a method forgets: objective `ascent` (adaptive GA), `descent` (relabel/map) or None; its mask."""

    name: str
    forget: str | None  # "ascent" | "descent" | None (remain-only fine-tuning)
    mask: str | None  # "fisher" (SFR-on balanced saliency) | "gradient" (SalUn top-k) | None
    adaptive: bool  # adaptive weighting (temperature λ) on the ascent loss
    description: str


METHODS = {
    "sfron": MethodSpec("sfron", "ascent", "fisher", True, "SFR-on: Fisher-balanced saliency mask + adaptive GA + remain steps"),
    "ga": MethodSpec("ga", "ascent", None, False, "gradient ascent on the forget data + remain steps"),
    "rl": MethodSpec("rl", "descent", None, False, "random labels / concept mapped to an anchor, no mask"),
    "salun": MethodSpec("salun", "descent", "gradient", False, "SalUn: gradient-magnitude top-k mask + random labels"),
    "ft": MethodSpec("ft", None, None, False, "fine-tuning on the remain data only"),
}


# ESD (Gandikota et al., 2023) is not one of METHODS: its target needs a frozen copy of the model and an
# unconditional prediction, which only the diffusion families have (SD, the class-conditional DDPM, DiT).
ESD = MethodSpec("esd", "descent", None, False, "ESD: negative-guidance target from a frozen copy, no mask")

# The forget objectives a concept erasure may pick for sfron/rl/salun/ga (SD): map the concept to its
# anchor (descent), plain ascent, or SFR-on's adaptive ascent.
FORGET_LOSSES = ("mapping", "ascent", "adaptive")


def method_spec(name: str, choices=tuple(METHODS)) -> MethodSpec:
    """The spec of `name`, one of the `choices` a family supports (ValueError otherwise)."""
    if name not in choices:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(choices)}")
    return ESD if name == "esd" else METHODS[name]


def with_forget_loss(spec: MethodSpec, forget_loss: str) -> MethodSpec:
    """`spec` with its forget objective replaced by one of FORGET_LOSSES (ESD keeps its own target)."""
    if forget_loss not in FORGET_LOSSES:
        raise ValueError(f"forget_loss must be one of {', '.join(FORGET_LOSSES)}, got {forget_loss!r}")
    if spec is ESD or spec.forget is None:
        return spec
    return replace(spec, forget="descent" if forget_loss == "mapping" else "ascent", adaptive=forget_loss == "adaptive")


def forget_objective(spec: MethodSpec, loss_fn: Callable, temperature: float, descent_loss: Callable | None = None,
                     relabel: Callable | None = None) -> Callable | None:
    """The forget step's objective: the family's loss ascended (adaptive weights with λ = `temperature`
    when the method has them, plain GA otherwise), `descent_loss` minimised (or `loss_fn` on `relabel`ed
    batches), or None (fine-tuning has no forget step)."""
    if spec.forget is None:
        return None
    if spec.forget == "ascent":
        return ascent_objective(loss_fn, temperature if spec.adaptive else 0.0)
    if descent_loss is not None:
        return descent_objective(descent_loss)
    if relabel is None:
        raise ValueError(f"{spec.name} needs a descent loss or a relabelling of the forget batches")
    return descent_objective(loss_fn, relabel)


def method_mask(spec: MethodSpec, model: torch.nn.Module, loss_fn: Callable, forget_batches, remain_batches, gamma: float,
                fisher_batches: int | None = None, salun_fraction: float = 0.5, seed: int = 0,
                cache: "FisherCache | None" = None, accelerator=None, show_progress: bool = True,
                fisher_clip: float | None = None):
    """The method's mask and the Fisher diagonals it came from: (mask or None, (F_f, F_r) or None).

    SFR-on: (F_f + 1e-15) / (F_r + 1e-15) ≥ γ, with the diagonals read from `cache` when it holds
    them for this key, else computed (and stored there), each batch gradient clipped to `fisher_clip`
    first when given. SalUn: the top `salun_fraction` of |∇L_f|.
    The global RNG is seeded first, so the passes' noise and timesteps repeat from run to run.
    """
    if spec.mask is None:
        return None, None
    torch.manual_seed(seed)
    if spec.mask == "gradient":
        gradients = gradient_sum(model, loss_fn, forget_batches, accelerator, num_batches=fisher_batches,
                                 show_progress=show_progress)
        return gradient_saliency_mask(gradients, salun_fraction), None
    fisher = cache.load() if cache is not None else None
    if fisher is None:
        fisher = (
            fisher_diagonal(model, loss_fn, forget_batches, accelerator, num_batches=fisher_batches,
                            desc="fisher (forget)", show_progress=show_progress, clip=fisher_clip),
            fisher_diagonal(model, loss_fn, remain_batches, accelerator, num_batches=fisher_batches,
                            desc="fisher (remain)", show_progress=show_progress, clip=fisher_clip),
        )
        if cache is not None and (accelerator is None or accelerator.is_main_process):
            cache.save(*fisher)
    return saliency_mask(fisher[0], fisher[1], gamma), fisher


FORGET_FILE, REMAIN_FILE, KEY_FILE = "fisher_forget.safetensors", "fisher_remain.safetensors", "fisher.json"


class FisherCache:
    """Fisher diagonals kept in a folder with the key of what they were computed from (fisher.json).

    They are read back only when the stored key equals this one, so diagonals made from other weights,
    another trained part, another class or data, batch count or seed are recomputed, never reused.
    """

    def __init__(self, folder, key: dict, reuse: bool = True):
        self.folder, self.reuse = Path(folder), reuse
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))  # as it reads back from JSON

    def load(self) -> tuple[dict, dict] | None:
        if not self.reuse:
            return None
        try:
            stored = json.loads((self.folder / KEY_FILE).read_text()).get("key")
            if stored != self.key:
                return None
            return load_fisher(self.folder / FORGET_FILE), load_fisher(self.folder / REMAIN_FILE)
        except (OSError, ValueError, AttributeError, UserError):  # missing, foreign or damaged: recompute
            return None

    def save(self, fisher_forget: dict, fisher_remain: dict, info: dict | None = None) -> None:
        """Both diagonals, then the key last: a folder with a key holds whole diagonals."""
        (self.folder / KEY_FILE).unlink(missing_ok=True)
        save_fisher(fisher_forget, self.folder / FORGET_FILE)
        save_fisher(fisher_remain, self.folder / REMAIN_FILE)
        atomic_write_json({"key": self.key, **(info or {})}, self.folder / KEY_FILE)


@torch.no_grad()
def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the trained weights (names, shapes, sum and norm of each): tells diagonals made
    from other weights or another trained part apart without hashing gigabytes."""
    import hashlib

    params = trainable_parameters(model)
    if not params:
        return "no trained weights"
    stats = torch.stack([torch.stack([p.sum(dtype=torch.float64), torch.linalg.vector_norm(p, dtype=torch.float64)])
                         for p in params.values()]).cpu().tolist()
    described = [[name, list(p.shape), s] for (name, p), s in zip(params.items(), stats)]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]
