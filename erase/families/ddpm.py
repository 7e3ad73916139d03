"""Class-conditional DDPM family: UNet2DModel presets, ε-MSE loss, class forget/remain data, sampling.

The null class (id = num_classes) is what classifier-free guidance conditions on for ε_∅.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from safetensors import SafetensorError
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from erase.core.sharding import draw_rows
from erase.data.loader import loader
from erase.errors import UserError
from erase.families.ddpm_pipeline import ClassConditionalDDPMPipeline
from erase.families.diffusion import guided_away, noised_batch, per_sample_mse

# Architecture presets. "cifar10" is the paper's CIFAR-10 model (DDPM, Ho et al.).
PRESETS = {
    "digits": dict(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=32,
    ),
    "tiny": dict(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ),
    "cifar10": dict(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), dropout=0.1, attention_head_dim=256,
    ),
}


def build_unet(preset: str = "digits", num_classes: int = 10, **overrides) -> UNet2DModel:
    """A class-conditional UNet2DModel from a preset, with one extra embedding for the null class."""
    if preset not in PRESETS:
        raise UserError(f"unknown UNet preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = {**PRESETS[preset], **overrides}
    return UNet2DModel(num_class_embeds=num_classes + 1, **config)


def build_scheduler() -> DDPMScheduler:
    """Linear β from 1e-4 to 0.02 over 1000 steps, as in DDPM."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


def load_pipeline(path, device: str | torch.device = "cpu") -> ClassConditionalDDPMPipeline:
    """Load a class-conditional DDPM folder (local or hub id) with a clear error when it is not one."""
    path_str = str(path)
    local = Path(path_str)
    if local.exists() and not (local / "model_index.json").exists():
        raise UserError(f"{path_str} is not a diffusers pipeline folder (no model_index.json)")
    try:
        pipeline = ClassConditionalDDPMPipeline.from_pretrained(path_str)
    except (OSError, ValueError, SafetensorError) as error:  # missing, or damaged (truncated weights)
        raise UserError(f"cannot load a class-conditional DDPM from {path_str}: {str(error).splitlines()[0]}") from None
    if not pipeline.unet.config.num_class_embeds:
        raise UserError(f"{path_str} has an unconditional UNet; class forgetting needs num_class_embeds")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def epsilon_loss(scheduler: DDPMScheduler, class_dropout: float = 0.0, null_class: int | None = None,
                 guidance: float = 1.0):
    """Per-sample ε-prediction MSE at a random timestep: the family's loss for the core.

    batch = (images in [-1, 1], class labels). With class_dropout > 0 (pretraining; unlearning with
    method.label_dropout, as the official code does), that share of labels is replaced by the null
    class so the model keeps learning ε_∅ for guidance. With guidance w ≠ 1 the loss is on the
    guided prediction ε_∅ + w(ε_c − ε_∅), through both passes: the official class-DDPM Fisher's loss
    (its (1 + s)ε(c) − sε(∅) is w = 1 + s); w = 1 is the plain conditional prediction.
    """

    def loss_fn(model, batch):
        noisy, noise, timesteps, labels = noised_batch(scheduler, model, batch)
        if class_dropout > 0:
            drop = draw_rows(lambda n: torch.rand(n, device=labels.device), len(labels)) < class_dropout
            labels = torch.where(drop, torch.full_like(labels, null_class), labels)
        if guidance == 1.0:
            return per_sample_mse(model(noisy, timesteps, class_labels=labels).sample, noise)
        null = torch.full_like(labels, null_class)  # one forward of both halves, as the pipeline samples
        eps_class, eps_null = model(noisy.repeat(2, 1, 1, 1), timesteps.repeat(2),
                                    class_labels=torch.cat([labels, null])).sample.chunk(2)
        return per_sample_mse(eps_null + guidance * (eps_class - eps_null), noise)

    return loss_fn


def class_mapping_loss(scheduler: DDPMScheduler, num_classes: int):
    """RL / SalUn's forget loss for a class-conditional DDPM, per sample.

    On the same noisy forget image x_t, pull ε_θ(x_t, c_f) towards sg ε_θ(x_t, c') for a random other
    class c': the forgotten label itself is trained, so generating it yields another class.
    """

    def loss_fn(model, batch):
        noisy, _, timesteps, labels = noised_batch(scheduler, model, batch)
        shift = draw_rows(lambda n: torch.randint(1, num_classes, (n,), device=labels.device), len(labels))
        other = (labels + shift) % num_classes
        with torch.no_grad():
            target = model(noisy, timesteps, class_labels=other).sample
        return per_sample_mse(model(noisy, timesteps, class_labels=labels).sample, target)

    return loss_fn


def class_esd_loss(scheduler: DDPMScheduler, teacher: UNet2DModel, null_class: int, negative_guidance: float = 1.0):
    """ESD for a class-conditional DDPM, per sample: on the same noisy forget image x_t,
    ‖ε_θ(x_t, c_f) − [ε*(x_t, ∅) − η(ε*(x_t, c_f) − ε*(x_t, ∅))]‖², ε* a frozen copy of the original.

    The forgotten label is pushed to the negatively guided prediction: guidance away from c_f.
    """

    def loss_fn(model, batch):
        noisy, _, timesteps, labels = noised_batch(scheduler, model, batch)
        with torch.no_grad():
            eps_null = teacher(noisy, timesteps, class_labels=torch.full_like(labels, null_class)).sample
            eps_class = teacher(noisy, timesteps, class_labels=labels).sample
            target = guided_away(eps_null, eps_class, negative_guidance)
        return per_sample_mse(model(noisy, timesteps, class_labels=labels).sample, target)

    return loss_fn


def class_split(images: torch.Tensor, labels: torch.Tensor, forget_class: int):
    """(forget images/labels, remain images/labels) for forgetting one class."""
    forget = labels == forget_class
    if not forget.any():
        raise UserError(f"class {forget_class} has no images in the data")
    return (images[forget], labels[forget]), (images[~forget], labels[~forget])


@torch.no_grad()
def sample(
    pipeline: ClassConditionalDDPMPipeline,
    class_labels,
    guidance_scale: float = 2.0,
    num_inference_steps: int = 20,
    seed: int = 0,
    batch_size: int = 500,
    show_progress: bool = False,
) -> torch.Tensor:
    """Generate images for the given labels with DDIM; returns [-1, 1] float N×C×H×W on the CPU."""
    labels = torch.as_tensor(class_labels, dtype=torch.long)
    pipeline.unet.eval()
    sampler = ClassConditionalDDPMPipeline(unet=pipeline.unet, scheduler=DDIMScheduler.from_config(pipeline.scheduler.config))
    sampler.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in tqdm(range(0, len(labels), batch_size), desc="sampling", disable=not show_progress, leave=False):
        images = sampler(
            labels[i : i + batch_size], guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
            generator=generator, output_type="pt",
        ).images
        out.append(images.cpu() * 2 - 1)
    return torch.cat(out)


def pretrain(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float = 2e-3,
    batch_size: int = 128,
    class_dropout: float = 0.1,
    ema_decay: float = 0.999,
    seed: int = 0,
    mixed_precision: str = "no",
    accelerator: Accelerator | None = None,
    show_progress: bool = True,
) -> UNet2DModel:
    """Train a class-conditional DDPM with Accelerate; returns the EMA weights (what gets shipped)."""
    torch.manual_seed(seed)
    accelerator = accelerator or Accelerator(mixed_precision=mixed_precision)
    loss_fn = epsilon_loss(scheduler, class_dropout, null_class=unet.config.num_class_embeds - 1)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    data = loader(TensorDataset(images, labels), batch_size, seed)
    model, optimizer, data, lr_schedule = accelerator.prepare(unet, optimizer, data, lr_schedule)
    ema = copy.deepcopy(accelerator.unwrap_model(model)).eval().requires_grad_(False)
    ema_params = list(ema.parameters())
    model_params = list(accelerator.unwrap_model(model).parameters())
    step = 0
    bar = tqdm(total=steps, desc="pretraining DDPM", disable=not show_progress)
    model.train()
    while step < steps:
        for batch in data:
            with accelerator.autocast():
                loss = loss_fn(model, batch).mean()
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_schedule.step()
            with torch.no_grad():
                decay = min(ema_decay, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema_params, [p.detach() for p in model_params], 1 - decay)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step >= steps:
                break
    bar.close()
    return ema


# --- Full-size settings: random-init models, real class images, the model choice of a recipe --------


def random_pipeline(preset: str = "cifar10", num_classes: int = 10, **overrides) -> ClassConditionalDDPMPipeline:
    """A pipeline with random weights from a preset: speed and memory can be measured without a checkpoint."""
    pipeline = ClassConditionalDDPMPipeline(unet=build_unet(preset, num_classes, **overrides), scheduler=build_scheduler())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def pick_device(name: str | None) -> torch.device:
    """'auto' is the GPU when there is one; None keeps the CPU (the digits demo's behaviour)."""
    if name in (None, "", "cpu"):
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_or_build_pipeline(model_cfg: dict) -> ClassConditionalDDPMPipeline:
    """A recipe's [model]: `path` (folder or hub id), or `random_init = true` with `preset`/`num_classes`."""
    from erase.recipes import resolve_path

    device = pick_device(model_cfg.get("device"))
    if model_cfg.get("random_init"):
        return random_pipeline(model_cfg.get("preset", "cifar10"), int(model_cfg.get("num_classes", 10))).to(device)
    if not model_cfg.get("path"):
        raise UserError("the recipe names no model: set model.path (or model.random_init = true)")
    return load_pipeline(resolve_path(model_cfg["path"]), device=device)


def pick_per_class(labels: torch.Tensor, per_class: int | None, seed: int, classes=None) -> torch.Tensor:
    """Indices of up to `per_class` seeded-random items of each class (all classes, or `classes`)."""
    generator = torch.Generator().manual_seed(seed)
    wanted = labels.unique().tolist() if classes is None else list(classes)
    picked = []
    for k in wanted:
        idx = (labels == k).nonzero().flatten()
        if per_class is not None and len(idx) > per_class:
            idx = idx[torch.randperm(len(idx), generator=generator)[:per_class]].sort().values
        picked.append(idx)
    return torch.cat(picked) if picked else torch.empty(0, dtype=torch.long)


def real_class_data(
    source, num_classes: int, image_size: int, channels: int, per_class: int | None = 1000,
    root=None, split: str = "train", seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real labelled images for forgetting: an image folder or torchvision-format CIFAR-10 on disk.

    Up to `per_class` images of every class are decoded once into [-1, 1] tensors at the model's size.
    """
    from erase.data.images import dataset_labels, load_class_tensors, open_image_dataset

    dataset = open_image_dataset(source, split=split, image_size=image_size, root=root)
    if len(dataset.classes) > num_classes:
        raise UserError(f"{source} has {len(dataset.classes)} classes but the model knows {num_classes}")
    labels = dataset_labels(dataset)
    images, labels = load_class_tensors(dataset, pick_per_class(labels, per_class, seed))
    if channels == 1:
        images = images.mean(dim=1, keepdim=True)
    return images, labels
