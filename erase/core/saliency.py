"""Weight-saliency masks: which weights the forgetting step may change.

SFR-on's forget-remain balanced saliency keeps a weight when it matters much more to the forget
data than to the remain data: (F_f + 1e-15) / (F_r + 1e-15) >= γ. SalUn's gradient saliency
(a baseline) keeps the top fraction of |∇L_f|.
"""

from __future__ import annotations

import torch

from erase.core.io import atomic_save_tensors, read_tensors

EPS = 1e-15


def saliency_mask(
    fisher_forget: dict[str, torch.Tensor], fisher_remain: dict[str, torch.Tensor], gamma: float = 1.0
) -> dict[str, torch.Tensor]:
    """Bool mask per parameter: (F_f + 1e-15) / (F_r + 1e-15) >= γ, element-wise."""
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    missing = set(fisher_forget) ^ set(fisher_remain)
    if missing:
        raise ValueError(f"forget and remain Fisher name different parameters: {sorted(missing)[:3]}")
    return {
        name: (fisher_forget[name].float() + EPS) / (fisher_remain[name].float() + EPS) >= gamma
        for name in fisher_forget
    }


def gradient_saliency_mask(gradients: dict[str, torch.Tensor], fraction: float = 0.5) -> dict[str, torch.Tensor]:
    """SalUn: keep the `fraction` of weights with the largest |gradient of the forget loss|, globally."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    magnitudes = torch.cat([g.detach().abs().flatten().float().cpu() for g in gradients.values()])
    keep = max(1, int(round(fraction * magnitudes.numel())))
    threshold = torch.topk(magnitudes, keep, sorted=True).values[-1]
    return {name: g.detach().abs().float() >= threshold.to(g.device) for name, g in gradients.items()}


def mask_stats(mask: dict[str, torch.Tensor]) -> dict:
    """The fraction of weights kept, overall and per parameter tensor."""
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    return {
        "fraction": kept / total if total else 0.0,
        "kept": kept,
        "total": total,
        "per_tensor": {name: float(m.float().mean()) for name, m in mask.items()},
    }


def save_mask(mask: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    atomic_save_tensors({k: v.bool().contiguous().cpu() for k, v in mask.items()}, path, metadata=metadata)


def load_mask(path) -> dict[str, torch.Tensor]:
    return {k: v.bool() for k, v in read_tensors(path, "a saliency mask")[0].items()}
