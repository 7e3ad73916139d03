"""The SFR-on loop: masked, adaptively weighted forgetting steps interleaved with remain steps.

Every step t of T:
  * every `forget_every` steps: zero grads, backward of α_f(t)·objective (the objective is already
    signed: −L_f for ascent), multiply every gradient by the saliency mask, clip, optimizer step;
  * then: zero grads, backward of α_r·L_r on a remain batch, clip, optimizer step — the same
    optimizer, so its state carries the remain geometry.
With an outer rate α < 1, slow weights follow the fast ones after each inner cycle:
θ_slow ← θ_slow + α(θ_fast − θ_slow). α = 1 (the paper's default) makes them identical.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from tqdm.auto import tqdm

from erase.core.sharding import all_mean, my_rows, sharded
from erase.errors import NonFiniteLossError


@dataclass
class SFRonConfig:
    """Hyper-parameters of the loop. Defaults: the paper's class-conditional DDPM setting."""

    steps: int = 50
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant | cosine (to 0 over the run, as the official classifier code)
    optimizer: str = "adam"  # adam | adamw | sgd
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    forget_every: int = 1  # the paper's inner length T_in
    forget_alpha: float = 10.0
    remain_alpha: float = 1.0
    decay_forget_alpha: bool = True  # cosine from forget_alpha to 0 over the run
    temperature: float = 0.5  # λ of the adaptive loss; 0 = plain gradient ascent
    gamma: float = 1.0  # saliency threshold γ
    grad_clip: float | None = 1.0
    outer_lr: float = 1.0  # the paper's slow rate α
    mixed_precision: str = "no"  # no | fp16 | bf16
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> "SFRonConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SFR-on option(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Every field finite and in its range; a ValueError that starts with the field's name."""
        ranges = {  # name: (lowest, lowest allowed itself, highest, highest allowed itself)
            "steps": (1, True, None, True), "forget_every": (1, True, None, True), "seed": (0, True, 2**63, False),
            "lr": (0, False, None, True), "gamma": (0, False, None, True), "outer_lr": (0, False, 1, True),
            "momentum": (0, True, 1, False), "weight_decay": (0, True, None, True), "forget_alpha": (0, True, None, True),
            "remain_alpha": (0, True, None, True), "temperature": (0, True, None, True), "grad_clip": (0, True, None, True),
        }
        for name, (low, low_ok, high, high_ok) in ranges.items():
            value = getattr(self, name)
            if value is None and name == "grad_clip":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            too_low = value < low or (value == low and not low_ok)
            too_high = high is not None and (value > high or (value == high and not high_ok))
            if too_low or too_high:
                low_text = f"{'[' if low_ok else '('}{low:g}"
                high_text = f"{high:g}{']' if high_ok else ')'}" if high is not None else "∞)"
                raise ValueError(f"{name} must be in {low_text}, {high_text}, got {value!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be adam, adamw or sgd, got {self.optimizer!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ValueError("mixed_precision fp16 needs a GPU; use bf16 or no")


def forget_weight(config: SFRonConfig, step: int) -> float:
    """α_f(t): cosine decay from forget_alpha to 0 over the run, or constant."""
    if not config.decay_forget_alpha:
        return config.forget_alpha
    return config.forget_alpha * 0.5 * (1.0 + math.cos(math.pi * step / config.steps))


def learning_rate(config: SFRonConfig, step: int) -> float:
    """The rate of both steps of step t: constant, or a cosine from lr to 0 over the run."""
    if config.lr_schedule == "constant":
        return config.lr
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / config.steps))


def make_optimizer(params, config: SFRonConfig) -> torch.optim.Optimizer:
    # Adam's fused CUDA kernel updates every tensor in a few launches (large models on a GPU);
    # elsewhere the default (foreach) implementation is used.
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fused)


def cycle(batches: Iterable) -> Iterator:
    """Loop over an iterable forever; a DataLoader reshuffles on each pass."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("a batch iterable is empty")


class GradientMask:
    """Multiplies gradients by a bool saliency mask with one fused foreach call per step."""

    def __init__(self, named_params: dict[str, torch.nn.Parameter], mask: dict[str, torch.Tensor]):
        unknown = sorted(set(mask) - set(named_params))
        if unknown:
            raise ValueError(f"mask names parameters the model does not train: {unknown[:3]}")
        self.masked = [(named_params[n], mask[n].to(named_params[n].device, torch.bool)) for n in mask]
        for p, m in self.masked:
            if m.shape != p.shape:
                raise ValueError(f"mask shape {tuple(m.shape)} does not match parameter shape {tuple(p.shape)}")
        # Weights the mask does not name are not salient: the forget step leaves them alone.
        self.unmasked = [p for n, p in named_params.items() if n not in mask]

    def apply(self) -> None:
        pairs = [(p.grad, m) for p, m in self.masked if p.grad is not None]
        if pairs:
            grads, masks = zip(*pairs)
            torch._foreach_mul_(list(grads), list(masks))
        for p in self.unmasked:
            p.grad = None


def unlearn(
    model: torch.nn.Module,
    forget_objective: Callable | None,
    remain_loss_fn: Callable | None,
    forget_batches: Iterable | None,
    remain_batches: Iterable | None,
    config: SFRonConfig,
    mask: dict[str, torch.Tensor] | None = None,
    accelerator: Accelerator | None = None,
    on_step: Callable | None = None,
    show_progress: bool = True,
) -> list[dict]:
    """Run the SFR-on loop in place on `model`; returns the per-step history.

    forget_objective(model, batch) -> (scalar to minimise, forget loss to report); None skips the
    forget steps (fine-tuning baseline). remain_loss_fn(model, batch) -> per-sample losses; None
    skips the remain steps. `mask` maps parameter names to bool tensors; None updates all weights.
    on_step(step, model, record) is called after each step (benchmarks evaluate there).
    Under several processes (`accelerate launch`) every process passes the same batches and takes its
    rows of each (erase.core.sharding); DDP averages the gradients in the backward pass, before the
    mask, the clip and the update, so the run equals one process's on the same global batches.
    Raises NonFiniteLossError, leaving the caller to export nothing, when a loss is NaN or infinite.
    """
    config.validate()
    if forget_objective is None and remain_loss_fn is None:
        raise ValueError("nothing to do: neither a forget objective nor a remain loss")
    accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(list(named.values()), config)
    model, optimizer = accelerator.prepare(model, optimizer)
    params = list(named.values())
    gradient_mask = GradientMask(named, mask) if mask is not None else None
    slow = [p.detach().clone() for p in params] if config.outer_lr < 1.0 else None
    forget_iter = cycle(forget_batches) if forget_objective is not None else None
    remain_iter = cycle(remain_batches) if remain_loss_fn is not None else None

    model.train()
    history = []
    start = time.perf_counter()
    with sharded(accelerator):  # several processes: each takes its rows of every batch; DDP averages
        bar = tqdm(range(config.steps), desc="unlearning", disable=not show_progress or not accelerator.is_local_main_process)
        for step in bar:
            record = {"step": step + 1}
            losses = {}  # read once at the end of the step: one GPU sync per step, not one per loss
            if config.lr_schedule != "constant":
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step)
            record["lr"] = optimizer.param_groups[0]["lr"]
            if forget_iter is not None and step % config.forget_every == 0:
                alpha_f = forget_weight(config, step)
                batch = send_to_device(my_rows(next(forget_iter)), accelerator.device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with accelerator.autocast():
                    objective, reported = forget_objective(model, batch)
                losses["forget"] = (objective.detach(), torch.as_tensor(reported).detach())
                accelerator.backward(alpha_f * objective)
                if gradient_mask is not None:
                    gradient_mask.apply()
                if config.grad_clip:
                    accelerator.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                record["forget_alpha"] = alpha_f
            if remain_iter is not None:
                batch = send_to_device(my_rows(next(remain_iter)), accelerator.device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with accelerator.autocast():
                    remain_loss = remain_loss_fn(model, batch).mean()
                losses["remain"] = (remain_loss.detach(),) * 2
                accelerator.backward(config.remain_alpha * remain_loss)
                if config.grad_clip:
                    accelerator.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
            record.update(_read_losses(losses, step))
            if slow is not None and ((step + 1) % config.forget_every == 0 or step + 1 == config.steps):
                _outer_update(slow, params, config.outer_lr)
            record["seconds"] = time.perf_counter() - start
            history.append(record)
            bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k.endswith("_loss")})
            if on_step is not None:
                on_step(step + 1, accelerator.unwrap_model(model), record)
    optimizer.zero_grad(set_to_none=True)
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    model.eval()
    return history


@torch.no_grad()
def _outer_update(slow: list[torch.Tensor], fast: list[torch.nn.Parameter], rate: float) -> None:
    torch._foreach_lerp_(slow, [p.detach() for p in fast], rate)
    for s, p in zip(slow, fast):
        p.copy_(s)


def _read_losses(losses: dict[str, tuple[torch.Tensor, torch.Tensor]], step: int) -> dict[str, float]:
    """The step's reported losses as floats; NonFiniteLossError if an objective or loss is NaN/inf.

    Read after the step's updates are queued, so the GPU never waits for the host mid-step. A
    non-finite step has already been applied, but the run stops and nothing is exported.
    """
    if not losses:
        return {}
    values = all_mean(torch.stack([t.float().reshape(()) for pair in losses.values() for t in pair])).tolist()
    record = {}
    for k, which in enumerate(losses):
        objective, reported = values[2 * k], values[2 * k + 1]
        for value in (objective, reported):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"the {which} loss became {value} at step {step + 1}; lower the learning rate or the forget weight"
                )
        record[f"{which}_loss"] = reported
    return record
