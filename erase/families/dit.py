"""DiT family: `DiTPipeline` = `DiTTransformer2DModel` + `AutoencoderKL` + scheduler (facebook/DiT-XL-2-256).

The transformer denoises VAE latents (scaled by the VAE's scaling factor). With learned σ
(out_channels = 2 × latent channels, as DiT-XL/2) the first half of the output channels is ε and
the rest the variance interpolation: the unlearning loss is the ε-MSE on the ε channels only.
DiTPipeline hard-codes the null class id 1000 for guidance, so models need num_embeds_ada_norm =
1000 (ImageNet's 1000 classes + the null one). A freshly built model is in train mode, where the
label embedding drops labels at random: `sample` calls .eval() first, and unlearning turns the
dropout off (the forget class must always be the one conditioned on).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel
from safetensors import SafetensorError
from tqdm.auto import tqdm

from erase.errors import UserError
from erase.families.diffusion import guided_away, noised_batch, per_sample_mse

NULL_CLASS = 1000  # DiTPipeline's guidance label

# Architectures. "DiT-XL/2": the paper's 256×256 ImageNet model (diffusers keeps one label/timestep
# embedding per block, hence 750M parameters instead of the original 675M); VAE: sd-vae-ft-ema.
PRESETS = {
    "DiT-XL/2": dict(
        transformer=dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                         sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
                         norm_elementwise_affine=False, activation_fn="gelu-approximate", attention_bias=True),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=256,
                 block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.18215),
    ),
    "tiny": dict(  # the same classes at test size: 16×16 images, 8×8 latents, learned σ
        transformer=dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                         sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
                         norm_elementwise_affine=False, norm_num_groups=4),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=16,
                 block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, scaling_factor=0.18215),
    ),
}


def build_scheduler() -> DDIMScheduler:
    """DiT's diffusion: linear β from 1e-4 to 0.02 over 1000 steps; DDIM for sampling."""
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         clip_sample=False)


def random_pipeline(preset: str = "DiT-XL/2", id2label: dict | None = None) -> DiTPipeline:
    """A DiTPipeline with random weights from a preset: speed and memory without downloading a checkpoint."""
    if preset not in PRESETS:
        raise UserError(f"unknown DiT preset {preset!r}; choose one of {', '.join(PRESETS)}")
    transformer = DiTTransformer2DModel(**PRESETS[preset]["transformer"])
    vae = AutoencoderKL(**PRESETS[preset]["vae"])
    pipeline = DiTPipeline(transformer=transformer.eval(), vae=vae.eval(), scheduler=build_scheduler(),
                           id2label=id2label)
    if id2label:
        pipeline.register_to_config(id2label={str(k): v for k, v in id2label.items()})  # kept by save_pretrained
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def load_pipeline(path, device: str | torch.device = "cpu") -> DiTPipeline:
    """Load a DiT folder (local or hub id, e.g. facebook/DiT-XL-2-256) with a clear error when it is not one."""
    path_str = str(path)
    local = Path(path_str)
    if local.exists() and not (local / "model_index.json").exists():
        raise UserError(f"{path_str} is not a diffusers pipeline folder (no model_index.json)")
    try:
        pipeline = DiTPipeline.from_pretrained(path_str)
    except (OSError, ValueError, SafetensorError) as error:  # missing, or damaged (truncated weights)
        raise UserError(f"cannot load a DiT pipeline from {path_str}: {str(error).splitlines()[0]}") from None
    check_null_class(pipeline.transformer)
    id2label = DiTPipeline.load_config(path_str).get("id2label")
    if id2label:
        pipeline.register_to_config(id2label=id2label)  # DiTPipeline would drop the names on save_pretrained
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def load_or_build_pipeline(model_cfg: dict) -> DiTPipeline:
    """A recipe's [model]: `path` (folder or hub id), or `random_init = true` with `preset`."""
    from erase.families.ddpm import pick_device
    from erase.recipes import resolve_path

    device = pick_device(model_cfg.get("device"))
    if model_cfg.get("random_init"):
        return random_pipeline(model_cfg.get("preset", "DiT-XL/2")).to(device)
    if not model_cfg.get("path"):
        raise UserError("the recipe names no model: set model.path (or model.random_init = true)")
    path = model_cfg["path"]
    local = resolve_path(path)
    return load_pipeline(local if local.exists() else path, device=device)


def check_null_class(transformer: DiTTransformer2DModel) -> None:
    if transformer.config.num_embeds_ada_norm != NULL_CLASS:
        raise UserError(f"DiTPipeline guides with the null class {NULL_CLASS}: the transformer needs "
                        f"num_embeds_ada_norm = {NULL_CLASS}, not {transformer.config.num_embeds_ada_norm}")


def class_id(pipeline: DiTPipeline, value) -> int:
    """An ImageNet class by id (207, "207") or by name ("golden retriever", from the pipeline's id2label)."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        k = int(text)
    elif not pipeline.labels:
        raise UserError(f"class {text!r}: this pipeline has no id2label names; give the class id")
    elif text not in pipeline.labels:
        close = [name for name in pipeline.labels if text.lower() in name.lower()][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"{text!r} is not an ImageNet class name of this pipeline{hint}")
    else:
        k = pipeline.get_label_ids([text])[0]
    if not 0 <= k < NULL_CLASS:
        raise UserError(f"class id must be in [0, {NULL_CLASS - 1}], got {k}")
    return k


def class_name(pipeline: DiTPipeline, k: int) -> str | None:
    names = [name for name, i in pipeline.labels.items() if i == k]
    return names[0] if names else None


def image_size(pipeline: DiTPipeline) -> int:
    """Pixel size: latent size × the VAE's downsampling factor."""
    factor = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    return pipeline.transformer.config.sample_size * factor


def epsilon_part(output: torch.Tensor, latent_channels: int) -> torch.Tensor:
    """The ε channels of a DiT output: all of it, or the first half when σ is learned too."""
    if output.shape[1] == 2 * latent_channels:
        return output[:, :latent_channels]
    if output.shape[1] == latent_channels:
        return output
    raise ValueError(f"a DiT output of {output.shape[1]} channels fits neither ε nor ε+σ for {latent_channels} latents")


def epsilon_loss(scheduler):
    """Per-sample ε-MSE at a random timestep on VAE latents, ε channels only: the family's loss for the core.

    batch = (latents already scaled by the VAE's scaling factor, class labels).
    """

    def loss_fn(model, batch):
        noisy, noise, timesteps, labels = noised_batch(scheduler, model, batch)
        eps = epsilon_part(model(noisy, timestep=timesteps, class_labels=labels).sample, noisy.shape[1])
        return per_sample_mse(eps, noise)

    return loss_fn


def class_esd_loss(scheduler, teacher: DiTTransformer2DModel, negative_guidance: float = 1.0):
    """ESD for DiT, per sample: ‖ε_θ(x_t, c_f) − [ε*(x_t, ∅) − η(ε*(x_t, c_f) − ε*(x_t, ∅))]‖² on the ε
    channels, ε* a frozen copy of the original and ∅ DiTPipeline's null class."""

    def loss_fn(model, batch):
        noisy, _, timesteps, labels = noised_batch(scheduler, model, batch)
        channels = noisy.shape[1]
        with torch.no_grad():
            null = torch.full_like(labels, NULL_CLASS)
            eps_null = epsilon_part(teacher(noisy, timestep=timesteps, class_labels=null).sample, channels)
            eps_class = epsilon_part(teacher(noisy, timestep=timesteps, class_labels=labels).sample, channels)
            target = guided_away(eps_null, eps_class, negative_guidance)
        eps = epsilon_part(model(noisy, timestep=timesteps, class_labels=labels).sample, channels)
        return per_sample_mse(eps, target)

    return loss_fn


def set_label_dropout(transformer: torch.nn.Module, probability: float) -> list[float]:
    """Set the class-label dropout of every label embedding (one per block); returns the old values."""
    from diffusers.models.embeddings import LabelEmbedding

    old = []
    for module in transformer.modules():
        if isinstance(module, LabelEmbedding):
            old.append(module.dropout_prob)
            module.dropout_prob = probability
    return old


def restore_label_dropout(transformer: torch.nn.Module, values: list[float]) -> None:
    from diffusers.models.embeddings import LabelEmbedding

    modules = [m for m in transformer.modules() if isinstance(m, LabelEmbedding)]
    for module, value in zip(modules, values):
        module.dropout_prob = value


@torch.no_grad()
def encode(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 32, seed: int = 0,
           show_progress: bool = False) -> torch.Tensor:
    """[-1, 1] images -> latents × scaling_factor (a seeded sample of the posterior, as DiT trains), on the CPU."""
    vae.eval()
    device, dtype = vae.device, vae.dtype
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="encoding latents", disable=not show_progress, leave=False):
        posterior = vae.encode(images[i : i + batch_size].to(device, dtype)).latent_dist
        out.append((posterior.sample(generator=generator) * vae.config.scaling_factor).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def sample(pipeline: DiTPipeline, class_labels, guidance_scale: float = 4.0, num_inference_steps: int = 50,
           seed: int = 0, batch_size: int = 64, show_progress: bool = False) -> torch.Tensor:
    """Generate images for the given labels; returns [-1, 1] float N×3×H×W on the CPU."""
    labels = [int(k) for k in torch.as_tensor(class_labels).reshape(-1).tolist()]
    pipeline.transformer.eval()  # label dropout off
    pipeline.vae.eval()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in tqdm(range(0, len(labels), batch_size), desc="sampling", disable=not show_progress, leave=False):
        images = pipeline(labels[i : i + batch_size], guidance_scale=guidance_scale, generator=generator,
                          num_inference_steps=num_inference_steps, output_type="pt").images
        out.append(images.float().cpu() * 2 - 1)
    return torch.cat(out)


def imagenet_folder(source, split: str = "train", size: int | None = None):
    """An ImageNet-layout folder (one sub-folder per class) whose labels are ImageNet class ids.

    Sub-folders named by class id ("207/") map to that id; otherwise there must be 1000 of them
    (WordNet ids, e.g. n02099601/) and their sorted order is the standard class order.
    """
    from erase.data.images import open_image_dataset

    dataset = open_image_dataset(source, split=split, image_size=size)
    names = list(dataset.classes)
    if all(name.isdigit() for name in names):
        ids = [int(name) for name in names]
    elif len(names) == NULL_CLASS:
        ids = list(range(NULL_CLASS))
    else:
        raise UserError(f"{source}: name the class folders by ImageNet class id (e.g. 207/), or give all "
                        f"1000 WordNet-id folders; found {len(names)} folders such as {names[0]!r}")
    if max(ids) >= NULL_CLASS:
        raise UserError(f"{source}: class folder ids must be below {NULL_CLASS}")
    dataset.samples = [(path, ids[target]) for path, target in dataset.samples]
    dataset.targets = [ids[target] for target in dataset.targets]
    dataset.imgs = dataset.samples
    return dataset
