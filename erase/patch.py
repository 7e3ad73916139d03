"""Erasure patches: the weights an erasure changed, stored apart from the base model.

A patch is one safetensors file. For each changed tensor it holds either the flat indices and
new values of the changed elements (`NAME::indices`, `NAME::values`) or, when most elements
changed, the whole tensor (`NAME::dense`), whichever is smaller. Its metadata records the base
model (as the user named it) and SHA-256 fingerprints of the base and the resulting weights, so
applying it to another model is refused and a wrong result cannot go unnoticed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from erase.core.io import atomic_save_tensors, read_tensors
from erase.errors import EraseError, UserError

FORMAT = "erase-patch/1"
SEPARATOR = "::"


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes, in name order: independent of file layout."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy() if tensor.numel() else b"")
    return digest.hexdigest()


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits as integers, so -0.0 ≠ 0.0 and NaN payloads compare exactly."""
    kinds = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return tensor.contiguous().view(kinds[tensor.element_size()])


def make_patch(base: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """(patch tensors, stats) holding exactly the elements where `new` differs from `base`."""
    if set(base) != set(new):
        raise ValueError("base and new weights name different tensors")
    tensors, changed, total = {}, 0, 0
    for name in sorted(new):
        b, n = base[name], new[name]
        if b.shape != n.shape or b.dtype != n.dtype:
            raise ValueError(f"{name}: base {b.dtype}{tuple(b.shape)} vs new {n.dtype}{tuple(n.shape)}")
        total += n.numel()
        diff = (_bits(b) != _bits(n)).flatten()
        count = int(diff.sum())
        if count == 0:
            continue
        changed += count
        index_dtype = torch.int32 if n.numel() < 2**31 else torch.int64
        sparse_bytes = count * (index_dtype.itemsize + n.element_size())
        if sparse_bytes < n.numel() * n.element_size():
            indices = diff.nonzero().flatten()
            tensors[name + SEPARATOR + "indices"] = indices.to(index_dtype)
            tensors[name + SEPARATOR + "values"] = n.flatten()[indices].contiguous()
        else:
            tensors[name + SEPARATOR + "dense"] = n.contiguous()
    return tensors, {"changed": changed, "total": total, "changed_fraction": changed / total if total else 0.0}


def save_patch(base, new, path, base_model: str, component: str = "unet") -> dict:
    """Write the patch that turns `base` into `new`; returns its stats (with file size)."""
    tensors, metadata, stats = patch_of(base, new, base_model, component)
    write_patch(tensors, metadata, path)
    return {**stats, "bytes": Path(path).stat().st_size, "base_sha256": metadata["base_sha256"]}


def patch_of(base, new, base_model: str, component: str = "unet") -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    """(tensors, metadata, stats) of the patch that turns `base` into `new`, as save_patch writes it."""
    tensors, stats = make_patch(base, new)
    metadata = {
        "format": FORMAT,
        "component": component,
        "base_model": str(base_model),
        "base_sha256": fingerprint(base),
        "result_sha256": fingerprint(new),
        "changed": str(stats["changed"]),
        "total": str(stats["total"]),
    }
    return tensors, metadata, stats


def write_patch(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path) -> Path:
    """One safetensors file (atomically); an empty patch holds one empty tensor to carry the metadata."""
    if not tensors:  # safetensors needs at least one tensor to carry the metadata
        tensors = {SEPARATOR + "empty": torch.zeros(0)}
    atomic_save_tensors(tensors, path, metadata=metadata)
    return Path(path)


def read_patch(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a patch file; a UserError when it is not one."""
    tensors, metadata = read_tensors(path, "an erasure patch")
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not an erase patch (format {metadata.get('format')!r}, expected {FORMAT!r})")
    return tensors, metadata


def apply_patch(base: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """New weights = base with the patch's elements written in; fingerprints checked before and after."""
    if fingerprint(base) != metadata["base_sha256"]:
        raise UserError(
            f"this patch was made for a different base model ({metadata.get('base_model')}); "
            "its weights do not match the model given"
        )
    result = {name: t.clone() for name, t in base.items()}
    for key, value in tensors.items():
        name, _, kind = key.rpartition(SEPARATOR)
        if kind == "empty":
            continue
        if name not in result:
            raise UserError(f"the patch names a weight the base model lacks: {name}")
        if kind == "dense":
            result[name] = value.to(result[name].dtype).reshape(result[name].shape).contiguous()
        elif kind == "indices":
            values = tensors[name + SEPARATOR + "values"]
            flat = result[name].view(-1)
            flat[value.long()] = values.to(flat.dtype)
    if fingerprint(result) != metadata["result_sha256"]:
        raise EraseError("the patched weights do not match the fingerprint recorded in the patch")
    return result
