"""Erasures as LoRA adapters: a low-rank approximation of the UNet weight change, loadable by diffusers.

An `erase sd` run changes UNet weights; its patch (erase/patch.py) holds the change exactly. The
adapter holds, for every changed Linear and Conv2d weight, the truncated SVD of the change
ΔW = W_erased − W_base (a conv's ΔW as out × (in·k·k)): lora_B = U_r √S_r, lora_A = √S_r V_rᵀ, shaped
as PEFT's LoRA layers (conv: A is a k×k conv to r channels, B a 1×1 conv). Keys and metadata are
diffusers' PEFT format (`unet.<module>.lora_A.weight`, a LoraConfig with lora_alpha = rank per
layer, so the scale is 1), so `pipe.load_lora_weights(file)` adds the erasure to the *original*
pipeline and `set_adapters(..., adapter_weights=[s])` scales it. Changed norms and biases have no
LoRA form: they are counted and left out (the erased model or the patch keeps them).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from erase.core.io import atomic_save_tensors
from erase.errors import UserError
from erase.patch import SEPARATOR, apply_patch, read_patch

PATCH_FILE = "patch.safetensors"
PREFIX = "unet"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


def lora_layers(unet: nn.Module) -> dict[str, str]:
    """{weight name: 'linear' | 'conv'} of the layers a PEFT LoRA can express exactly."""
    layers = {}
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear):
            layers[f"{name}.weight"] = "linear"
        elif (isinstance(module, nn.Conv2d) and module.groups == 1 and module.dilation == (1, 1)
              and module.padding_mode == "zeros"):
            layers[f"{name}.weight"] = "conv"  # PEFT's conv LoRA copies kernel, stride and padding only
    return layers


def low_rank(delta: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(lora_A, lora_B, ‖ΔW − B·A‖²) for one weight change; rank None or above the matrix rank: exact."""
    matrix = delta.float().flatten(1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = len(s) if rank is None else min(rank, len(s))
    root = s[:r].sqrt()
    down, up = root[:, None] * vh[:r], u[:, :r] * root
    residual = float((s[r:].double() ** 2).sum())
    if delta.dim() == 4:  # conv: A keeps the kernel, B is 1×1
        down = down.reshape(r, *delta.shape[1:])
        up = up.reshape(delta.shape[0], r, 1, 1)
    return down.contiguous(), up.contiguous(), residual


def make_lora(base: dict, new: dict, layers: dict[str, str], names, rank: int | None, dtype: torch.dtype):
    """(safetensors tensors, LoraConfig kwargs, stats) of the change base → new over `names`."""
    tensors, ranks = {}, {}
    kept = residual = left_sq = 0.0
    left = []
    for name in sorted(names):
        delta = new[name].double() - base[name].double()
        norm_sq = float((delta**2).sum())
        if name not in layers:
            left.append(name)
            left_sq += norm_sq
            continue
        down, up, error = low_rank(delta, rank)
        module = name.removesuffix(".weight")
        tensors[f"{PREFIX}.{module}.lora_A.weight"] = down.to(dtype)
        tensors[f"{PREFIX}.{module}.lora_B.weight"] = up.to(dtype)
        ranks[module] = down.shape[0]
        kept += norm_sq
        residual += error
    if not ranks:
        raise UserError("the run changed no Linear or Conv2d weight of the UNet: there is nothing to export as LoRA")
    common = Counter(ranks.values()).most_common(1)[0][0]
    others = {m: r for m, r in ranks.items() if r != common}
    # lora_alpha = rank in every layer: scale 1, so adapter weight s adds s·ΔW_r.
    config = {"r": common, "lora_alpha": common, "rank_pattern": others, "alpha_pattern": dict(others),
              "target_modules": sorted(ranks), "lora_bias": False, "use_dora": False}
    stats = {
        "rank": "full" if rank is None else rank,
        "layers": len(ranks),
        "parameters": sum(t.numel() for t in tensors.values()),
        "relative_error": (residual / kept) ** 0.5 if kept else 0.0,
        "not_expressed": {"tensors": len(left), "norm": left_sq**0.5,
                          "fraction": (left_sq / (left_sq + kept)) ** 0.5 if left_sq + kept else 0.0, "names": left},
    }
    return tensors, config, stats


def parse_rank(text: str) -> int | None:
    """`full` (None) or a whole number ≥ 1."""
    if str(text).strip().lower() == "full":
        return None
    try:
        rank = int(text)
    except (TypeError, ValueError):
        raise UserError(f"rank must be a whole number ≥ 1 or 'full', got {text!r}") from None
    if rank < 1:
        raise UserError(f"rank must be at least 1, got {rank}")
    return rank


def default_output(run_dir, rank: int | None) -> Path:
    return Path(run_dir) / f"lora-{'full' if rank is None else f'r{rank}'}.safetensors"


def export_lora(run_dir, rank: int | None, out=None, base: str | None = None) -> dict:
    """Write the LoRA adapter of an `erase sd` run; returns its stats (file, size, error, what is left out).

    The base model is the one the run's patch records (or `base`, e.g. where it lives now); the patch's
    fingerprints prove it is the same model, and rebuild the erased weights exactly.
    """
    from diffusers import UNet2DConditionModel

    from erase.families import sd

    run_dir = Path(run_dir)
    patch_path = run_dir / PATCH_FILE
    if not run_dir.is_dir() or not patch_path.is_file():
        raise UserError(f"{run_dir} is not an `erase sd` run folder (no {PATCH_FILE})")
    patch, metadata = read_patch(patch_path)
    if metadata.get("component") != "unet":
        raise UserError(f"{patch_path} patches {metadata.get('component')!r}, not a UNet")
    out = Path(out) if out is not None else default_output(run_dir, rank)
    if out.is_dir():
        raise UserError(f"{out} is a folder; --out names the adapter file")
    if base is not None:
        folder = sd.resolve_model(base)
    else:
        try:
            folder = sd.resolve_model(metadata["base_model"])
        except UserError as error:
            raise UserError(f"the run's base model is missing ({error}); pass --base where it is now") from None
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    layers = lora_layers(unet)
    dtype = sd.stored_unet_dtype(folder)
    base_state = sd.unet_state(unet, dtype)
    del unet
    new_state = apply_patch(base_state, patch, metadata)  # refuses another base model
    changed = {key.rpartition(SEPARATOR)[0] for key in patch} - {""}
    tensors, config, stats = make_lora(base_state, new_state, layers, changed, rank, dtype)
    info = {
        "format": "pt",
        METADATA_KEY: json.dumps({f"{PREFIX}.{k}": v for k, v in config.items()}, sort_keys=True),
        "erase_base_model": metadata["base_model"],
        "erase_base_sha256": metadata["base_sha256"],
        "erase_rank": str(stats["rank"]),
        "erase_relative_error": f"{stats['relative_error']:.6g}",
    }
    atomic_save_tensors(tensors, out, metadata=info)
    return stats | {"file": str(out), "bytes": out.stat().st_size, "patch_bytes": patch_path.stat().st_size}


def summary(stats: dict) -> str:
    """Two lines: the adapter, then what a LoRA cannot express."""
    left = stats["not_expressed"]
    lines = [f"LoRA rank {stats['rank']}: {stats['layers']} layers, {stats['parameters']:,} parameters, "
             f"{stats['bytes'] / 2**20:.2f} MiB (patch {stats['patch_bytes'] / 2**20:.2f} MiB); "
             f"‖ΔW − ΔW_r‖/‖ΔW‖ = {stats['relative_error']:.4f} -> {stats['file']}"]
    if left["tensors"]:
        lines.append(f"not in the adapter: {left['tensors']} changed norm/bias tensors (‖Δ‖ = {left['norm']:.3g}, "
                     f"{left['fraction']:.3f} of the whole change); LoRA expresses Linear and Conv2d weights only")
    return "\n".join(lines)
