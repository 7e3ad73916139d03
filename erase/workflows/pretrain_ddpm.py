"""Pretrain a class-conditional DDPM (`erase pretrain ddpm`): Accelerate, EMA, resumable checkpoints.

Every `checkpoint_every` steps, OUT/checkpoints/step-NNNNNNN/ receives `accelerator.save_state`
(model, optimizer, LR schedule, RNG states) plus the EMA weights (safetensors) and the step count
(JSON); the folder appears under its final name only when complete. `resume=True` continues from
the newest one: the data order (a seeded permutation per epoch, skipped to the position) and the
random draws pick up where they stopped, so a killed run ends with the same step count and the same
weights as an uninterrupted one. The shipped model is the EMA UNet, as a diffusers folder OUT/model/.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from erase.core.io import atomic_directory, atomic_save_tensors, atomic_write_json
from erase.errors import UserError
from erase.families import ddpm
from erase.families.ddpm_pipeline import ClassConditionalDDPMPipeline

# Training defaults per preset. "cifar10": the official SFR-on/DDIM CIFAR-10 pretraining config
# (Adam lr 2e-4, batch 128, 800k steps, EMA 0.9999, grad clip 1, random flips, class dropout 0.1).
TRAINING_DEFAULTS = {
    "cifar10": dict(steps=800_000, batch_size=128, lr=2e-4, ema_decay=0.9999, checkpoint_every=5000),
    "tiny": dict(steps=2000, batch_size=32, lr=2e-3, ema_decay=0.999, checkpoint_every=200),
    "digits": dict(steps=1500, batch_size=128, lr=2e-3, ema_decay=0.999, checkpoint_every=250),
}
# Settings that must not change when a run is resumed (steps may grow).
RESUME_FIXED = ("data", "preset", "image_size", "batch_size", "lr", "seed", "class_dropout", "hflip")


@dataclass
class PretrainConfig:
    data: str
    data_root: str | None = None
    preset: str = "cifar10"
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    ema_decay: float | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    image_size: int | None = None
    class_dropout: float = 0.1
    hflip: bool = True
    grad_clip: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"
    workers: int = 0

    def resolved(self) -> "PretrainConfig":
        """Fill the unset values from the preset's training defaults."""
        if self.preset not in TRAINING_DEFAULTS:
            raise UserError(f"unknown preset {self.preset!r}; choose one of {', '.join(TRAINING_DEFAULTS)}")
        values = asdict(self)
        for key, value in TRAINING_DEFAULTS[self.preset].items():
            if values[key] is None:
                values[key] = value
        if values["image_size"] is None:
            values["image_size"] = ddpm.PRESETS[self.preset]["sample_size"]
        return PretrainConfig(**values)


class EpochPermutation(Sampler):
    """A fresh seeded permutation per epoch: a resumed run sees exactly the order it would have seen."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def latest_checkpoint(out_dir) -> Path | None:
    """The newest complete checkpoint folder (incomplete ones carry a .tmp suffix and are ignored)."""
    root = Path(out_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def pretrain_ddpm(
    out_dir,
    config: PretrainConfig,
    resume: bool = False,
    show_progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> dict:
    """Train (or continue training) a class-conditional DDPM; writes OUT/model/ and OUT/pretrain.json.

    on_step(step, loss) runs after every optimizer step (logging; tests interrupt runs there).
    """
    started = time.perf_counter()
    config = config.resolved()
    out_dir = Path(out_dir)
    checkpoint = latest_checkpoint(out_dir)
    check_out_dir(out_dir, config, resume, checkpoint)
    dataset = open_training_data(config)

    torch.manual_seed(config.seed)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    channels, height, _ = dataset[0][0].shape
    unet = ddpm.build_unet(
        config.preset, len(dataset.classes), in_channels=channels, out_channels=channels, sample_size=height
    )
    scheduler = ddpm.build_scheduler()
    loss_fn = ddpm.epsilon_loss(scheduler, config.class_dropout, null_class=unet.config.num_class_embeds - 1)
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.lr, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # constant, as in DDPM
    sampler = EpochPermutation(len(dataset), config.seed)
    loader = DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True, num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG out of the loader
    )
    if len(loader) == 0:
        raise UserError(f"{config.data} has {len(dataset)} images, fewer than one batch of {config.batch_size}")
    model, optimizer, loader, lr_schedule = accelerator.prepare(unet, optimizer, loader, lr_schedule)
    ema = ddpm.build_unet(
        config.preset, len(dataset.classes), in_channels=channels, out_channels=channels, sample_size=height
    ).to(accelerator.device)
    ema.load_state_dict(accelerator.unwrap_model(model).state_dict())
    ema.eval().requires_grad_(False)
    ema_params = list(ema.parameters())
    model_params = list(accelerator.unwrap_model(model).parameters())

    step, resumed_from = 0, None
    if resume and checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        ema.load_state_dict(load_file(str(checkpoint / "ema.safetensors"), device=str(accelerator.device)))
        step = resumed_from = int(json.loads((checkpoint / "progress.json").read_text())["step"])
    if accelerator.is_main_process:
        atomic_write_json(asdict(config) | {"num_classes": len(dataset.classes), "classes": list(dataset.classes)},
                          out_dir / "train_config.json")

    per_epoch = len(loader)
    bar = tqdm(total=config.steps, initial=step, desc="pretraining DDPM",
               disable=not show_progress or not accelerator.is_local_main_process)
    loss_value = float("nan")
    model.train()
    while step < config.steps:
        epoch, skip = divmod(step, per_epoch)
        loader.set_epoch(epoch)
        epoch_batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for images, labels in epoch_batches:
            if config.hflip:
                flip = torch.rand(images.shape[0], device=images.device) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(3), images)
            with accelerator.autocast():
                loss = loss_fn(model, (images, labels)).mean()
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if config.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            lr_schedule.step()
            with torch.no_grad():
                decay = min(config.ema_decay, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema_params, [p.detach() for p in model_params], 1 - decay)
            step += 1
            loss_value = loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_checkpoint(accelerator, ema, step, out_dir, config.keep_checkpoints)
            if on_step is not None:
                on_step(step, loss_value)
            if step >= config.steps:
                break
    bar.close()

    info = {
        "steps": step,
        "resumed_from": resumed_from,
        "final_loss": loss_value,
        "preset": config.preset,
        "parameters": sum(p.numel() for p in ema.parameters()),
        "num_classes": len(dataset.classes),
        "classes": list(dataset.classes),
        "seconds_this_run": round(time.perf_counter() - started, 1),
    }
    if accelerator.is_main_process:
        pipeline = ClassConditionalDDPMPipeline(unet=ema.to("cpu").float(), scheduler=scheduler)
        with atomic_directory(out_dir / "model") as folder:
            pipeline.save_pretrained(folder)
        atomic_write_json(info, out_dir / "pretrain.json")
    accelerator.wait_for_everyone()
    return info


def check_out_dir(out_dir: Path, config: PretrainConfig, resume: bool, checkpoint: Path | None) -> None:
    """Refuse to overwrite a run by accident, or to resume one with different settings."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a folder")
    if not resume:
        if checkpoint is not None or (out_dir / "model").exists():
            raise UserError(f"{out_dir} already holds a training run; pass --resume to continue it or choose another --out")
        return
    saved_path = out_dir / "train_config.json"
    if checkpoint is None or not saved_path.exists():
        return  # nothing to resume: start from step 0
    saved = json.loads(saved_path.read_text())
    changed = [k for k in RESUME_FIXED if saved.get(k) != getattr(config, k)]
    if changed:
        raise UserError(f"--resume with different settings than the run in {out_dir}: {', '.join(changed)}")
    done = int(json.loads((checkpoint / "progress.json").read_text())["step"])
    if config.steps < done:
        raise UserError(f"--steps {config.steps} is below the {done} steps already trained in {out_dir}")


def open_training_data(config: PretrainConfig):
    from erase.data.images import open_image_dataset

    dataset = open_image_dataset(config.data, split="train", image_size=config.image_size, root=config.data_root)
    if len(dataset) == 0:
        raise UserError(f"{config.data} holds no images")
    return dataset


def save_checkpoint(accelerator: Accelerator, ema: torch.nn.Module, step: int, out_dir: Path, keep: int) -> None:
    """save_state + EMA + step into a .tmp folder, renamed when complete; older checkpoints pruned."""
    root = out_dir / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        atomic_save_tensors({k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()},
                            tmp / "ema.safetensors")
        atomic_write_json({"step": step}, tmp / "progress.json")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
