"""Fisher diagonals: the mean over mini-batches of the squared batch gradient, per weight element."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from accelerate.utils import send_to_device
from tqdm.auto import tqdm

from erase.core.io import atomic_save_tensors, read_tensors
from erase.core.sharding import average_gradients, my_rows, sharded


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Named parameters that require gradients: the ones unlearning may change."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def fisher_diagonal(
    model: torch.nn.Module,
    loss_fn: Callable,
    batches: Iterable,
    accelerator=None,
    num_batches: int | None = None,
    desc: str = "fisher",
    show_progress: bool = True,
    clip: float | None = None,
) -> dict[str, torch.Tensor]:
    """F = mean over batches of (dL_batch/dθ)², accumulated in fp32 on the weights' device.

    `clip`: each batch gradient is first clipped to that total norm, as the official class-DDPM
    Fisher does (norm 1), so no batch outweighs the others; None squares it as it is.

    With an accelerator, the forward runs under its autocast (its mixed precision); the squares
    are still summed in fp32.

    `loss_fn(model, batch)` returns per-sample losses; L_batch is their mean. Under several
    processes (accelerate launch) every process passes the same batches and computes the gradient
    of its rows of each; the gradients are averaged before they are squared (erase.core.sharding),
    so the result equals one process's and each process does 1/N of the work.
    """
    sums, count = _stream_gradients(model, loss_fn, batches, accelerator, num_batches, desc, show_progress, squared=True,
                                    clip=clip)
    return {name: s / count for name, s in sums.items()}


def gradient_sum(
    model: torch.nn.Module,
    loss_fn: Callable,
    batches: Iterable,
    accelerator=None,
    num_batches: int | None = None,
    desc: str = "forget gradient",
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Σ over batches of dL_batch/dθ (fp32): what SalUn's mask ranks by magnitude."""
    sums, _ = _stream_gradients(model, loss_fn, batches, accelerator, num_batches, desc, show_progress, squared=False)
    return sums


def _stream_gradients(model, loss_fn, batches, accelerator, num_batches, desc, show_progress, squared: bool,
                      clip: float | None = None):
    """One backward per batch, gradients (or their squares) summed; returns (sums, batch count).

    The model is in eval mode meanwhile (dropout off: the statistics describe the model as it is).
    """
    params = trainable_parameters(_unwrap(model, accelerator))
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()
    # The bar is updated by hand: wrapping `batches` in tqdm.auto would call iter() on it twice,
    # which reshuffles a DataLoader once more (and starts its workers twice).
    total = len(batches) if hasattr(batches, "__len__") else None
    if num_batches is not None:
        total = num_batches if total is None else min(num_batches, total)
    bar = tqdm(desc=desc, total=total, disable=not show_progress, leave=False)
    with sharded(accelerator):
        for i, batch in enumerate(batches):
            if num_batches is not None and i >= num_batches:
                break
            model.zero_grad(set_to_none=True)
            if accelerator is not None:
                batch = send_to_device(my_rows(batch), accelerator.device, non_blocking=True)  # as the loop does
                with accelerator.autocast():  # the run's mixed precision (bf16 on a GPU: several times faster)
                    loss = loss_fn(model, batch).mean()
                accelerator.backward(loss)
                average_gradients(params.values())  # the whole batch's gradient, before it is squared
            else:
                loss = loss_fn(model, batch).mean()
                loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
            _accumulate(sums, params, squared)
            count += 1
            bar.update(1)
    bar.close()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if count == 0:
        raise ValueError(f"{desc}: got no batches")
    return sums, count


def _accumulate(sums: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], squared: bool) -> None:
    """sums += grad² (or grad) for every parameter with a gradient, in one fused call."""
    targets, grads = [], []
    for name, p in params.items():
        if p.grad is not None:
            targets.append(sums[name])
            grads.append(p.grad.detach().float())  # no copy when already fp32
    if targets and squared:
        torch._foreach_addcmul_(targets, grads, grads)
    elif targets:
        torch._foreach_add_(targets, grads)


def save_fisher(fisher: dict[str, torch.Tensor], path) -> None:
    atomic_save_tensors({k: v.float().contiguous().cpu() for k, v in fisher.items()}, path)


def load_fisher(path) -> dict[str, torch.Tensor]:
    return read_tensors(path, "Fisher diagonals")[0]


def _unwrap(model, accelerator):
    return accelerator.unwrap_model(model) if accelerator is not None else model
