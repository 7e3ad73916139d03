"""Several processes (`accelerate launch`): every batch is split across them, each computes its share.

A batch size is global: under N processes each process takes N-th of the rows of every batch (the
Fisher pass's and the loop's), and the gradients are averaged across processes before they are used
(squared for the Fisher, masked and clipped in the loop), which is the gradient of the whole batch's
mean loss. Per-sample random draws (noise, timesteps, random labels) are made for the whole batch
from the RNG state every process shares, and each process keeps its rows. So a run gives the same
result under any number of processes, up to the float rounding of sums taken in another order, and
each process does 1/N of the model's work.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from erase.errors import UserError

_share = (0, 1)  # (this process's index, number of processes) while a sharded pass runs


@contextmanager
def sharded(accelerator):
    """Within the block, batches are split across the accelerator's processes (see the module doc).

    The RNG state of the main process is handed to the others first, so their draws agree.
    """
    index, count = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    if count > 1:
        from accelerate.utils import synchronize_rng_states

        synchronize_rng_states(["torch", "cuda"] if accelerator.device.type == "cuda" else ["torch"])
    with share_as(index, count):
        yield


@contextmanager
def share_as(index: int, count: int):
    """Within the block this process computes share `index` of `count` (what `sharded` sets)."""
    global _share
    previous, _share = _share, (index, count)
    try:
        yield
    finally:
        _share = previous


def process_count() -> int:
    return _share[1]


def my_rows(batch):
    """This process's rows of a batch (a tensor, or a tuple/list/dict of tensors with one row per sample)."""
    index, count = _share
    if count == 1:
        return batch
    if isinstance(batch, dict):
        return {key: my_rows(value) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(my_rows(value) for value in batch)
    rows = len(batch)
    if rows % count:
        raise UserError(f"a batch of {rows} cannot be split evenly across {count} processes; "
                        f"use a batch size that is a multiple of {count} (data.batch_size is the global batch)")
    size = rows // count
    return batch[index * size : (index + 1) * size]


def draw_rows(draw: Callable[[int], torch.Tensor], rows: int) -> torch.Tensor:
    """This process's `rows` of draw(n) made for the whole batch: draws agree with one process."""
    index, count = _share
    if count == 1:
        return draw(rows)
    return draw(rows * count)[index * rows : (index + 1) * rows]


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over the processes of a sharded pass (itself under one process)."""
    if _share[1] == 1:
        return tensor
    tensor = tensor.clone()
    torch.distributed.all_reduce(tensor)
    return tensor


def all_mean(tensor: torch.Tensor) -> torch.Tensor:
    return all_sum(tensor) / _share[1] if _share[1] > 1 else tensor


@torch.no_grad()
def average_gradients(params) -> None:
    """Replace each gradient by its mean over the processes, in one all-reduce of a flat buffer."""
    count = _share[1]
    grads = [p.grad for p in params if p.grad is not None]
    if count == 1 or not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    flat /= count
    torch._foreach_copy_(grads, torch._utils._unflatten_dense_tensors(flat, grads))
