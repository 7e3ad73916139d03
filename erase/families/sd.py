"""Stable Diffusion family: loading, losses on cached latents, batch generation, export.

Two kinds of diffusers folder: StableDiffusionPipeline (SD 1.x, and 2.x with ε or v prediction) and
StableDiffusionXLPipeline (SDXL: two text encoders, a pooled text embedding and time ids, see sdxl.py).
The UNet is what gets erased; the VAE and text encoders stay frozen, so forget/remain images are
encoded to latents and prompts to conditionings once, before training. Batches are tuples
(latents, prompt conditionings[, anchor conditionings]).

Losses (per sample, at one random timestep with one noise draw per sample; ε_θ is the UNet's output,
ε or v as the scheduler's prediction_type says):
  * epsilon_loss:  ‖ε_θ(x_t, c) − target‖², target ε or v               (Fisher, remain steps, ascent)
  * mapping_loss:  ‖ε_θ(x_t, c_f) − sg(ε_θ(x_t, c_a))‖²                 (SFR-on's concept mapping)
  * esd_loss:      ‖ε_θ(x_t, c_f) − [ε*(x_t, ∅) − η(ε*(x_t, c_f) − ε*(x_t, ∅))]‖²   (ESD, ε* frozen)
Mapping and ESD compare two outputs of the same kind, so they hold for either prediction type: v is an
affine function of ε at fixed x_t and t (v = (ε − √(1−ᾱ_t) x_t)/√ᾱ_t), which carries the target over,
and the squared error in v is the one in ε times 1/ᾱ_t, the weighting of v-prediction training itself.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from erase.core.io import atomic_directory, atomic_file
from erase.data.prompts import PromptRow
from erase.errors import UserError
from erase.families import sdxl
from erase.families.diffusion import guided_away, noised, per_sample_mse

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
# Standard (non-variant) weight file names of diffusers and transformers components, sharded or not.
STANDARD_WEIGHTS = re.compile(r"^(model|diffusion_pytorch_model)(-\d+-of-\d+)?\.safetensors(\.index\.json)?$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".pb")
REQUIRED_COMPONENTS = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": None, "tokenizer": None}
# The pipelines `erase sd` takes (model_index.json's _class_name), with the components each needs.
PIPELINES = {
    "StableDiffusionPipeline": REQUIRED_COMPONENTS,
    "StableDiffusionXLPipeline": REQUIRED_COMPONENTS | {"text_encoder_2": None, "tokenizer_2": None},
}
TRAIN_SELECTIONS = ("full", "xattn", "noxattn")
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------- loading


def resolve_model(model: str) -> Path:
    """A local folder for `model`: the folder itself, or the hub snapshot (from the cache when offline)."""
    local = Path(model).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"{model} is a file, not a diffusers pipeline folder")
        check_sd_folder(local)
        return local
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", model) is not None
    if not looks_like_hub_id:
        raise UserError(f"no such model: {model} (not a folder, nor a hub id like CompVis/stable-diffusion-v1-4)")
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # the hub's "will try the cache" warnings would break the one-line error
    try:
        folder = Path(DiffusionPipeline.download(model))
    except Exception as error:  # hub errors come in many classes; all mean "cannot get it"
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
            reason = "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"
        else:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(f"no such model: {model} is not a local folder, and as a hub id: {reason}") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    check_sd_folder(folder)
    return folder


def check_sd_folder(folder: Path) -> dict:
    """The folder's model_index.json, after checking it describes a pipeline of PIPELINES with its components."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise UserError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{index_path} is not valid JSON") from None
    found = index.get("_class_name") if isinstance(index, dict) else None
    if isinstance(found, list):  # a custom pipeline: [module, class]
        found = found[-1]
    if found not in PIPELINES:
        raise UserError(f"{folder} is not a Stable Diffusion pipeline: its model_index.json names {found or 'no pipeline class'} "
                        "(supported: StableDiffusionPipeline for SD 1.x/2.x, StableDiffusionXLPipeline for SDXL)")
    for name, cls in PIPELINES[found].items():
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise UserError(f"{folder} is not a Stable Diffusion pipeline (no {name} component)")
        if cls is not None and entry[1] != cls:
            raise UserError(f"{folder} is not a Stable Diffusion pipeline ({name} is {entry[1]}, expected {cls})")
    return index


def pipeline_class(model: str) -> str:
    """The pipeline class a supported model's model_index.json names (a bad model is a UserError)."""
    return check_sd_folder(resolve_model(str(model)))["_class_name"]


def load_pipeline(model: str, device="cpu", dtype: torch.dtype = torch.float32):
    """(StableDiffusionPipeline or StableDiffusionXLPipeline, its local folder). Clear errors for bad input.

    The safety checker (SD) and the invisible watermark (SDXL) are off: images depend on the model alone."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    folder = resolve_model(str(model))
    xl = check_sd_folder(folder)["_class_name"] == "StableDiffusionXLPipeline"
    diffusers_logging.disable_progress_bar()  # the components' loading bars: stderr is kept for what matters
    transformers_logging.disable_progress_bar()
    try:
        # torch_dtype only when asked: diffusers 0.42 warns about the name, older releases need it.
        extra = {"torch_dtype": dtype} if dtype != torch.float32 else {}
        if xl:
            pipeline = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False, **extra)
        else:
            pipeline = StableDiffusionPipeline.from_pretrained(
                folder, safety_checker=None, requires_safety_checker=False, **extra
            )
    except (OSError, ValueError, TypeError, AttributeError, SafetensorError) as error:  # missing or damaged
        raise UserError(f"cannot load {model} as a Stable Diffusion pipeline: {str(error).splitlines()[0][:200]}") from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device), folder


def default_size(pipeline) -> int:
    """Image side the UNet was trained for (512 for SD v1.4 and 2 base, 768 for 2.1, 1024 for SDXL)."""
    return pipeline.unet.config.sample_size * pipeline.vae_scale_factor


def select_trainable(unet: UNet2DConditionModel, which: str) -> int:
    """Turn gradients on for the part of the UNet that is erased; returns the number of weights.

    full: every weight; xattn: cross-attention (attn2) only (ESD-x); noxattn: the weights and biases
    of the Linear and Conv2d layers outside attn2 (ESD-u as the ESD authors' esd_sd.py selects it:
    norm layers stay frozen).
    """
    if which not in TRAIN_SELECTIONS:
        raise UserError(f"train must be one of {', '.join(TRAIN_SELECTIONS)}, got {which!r}")
    layers = {name for name, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    count = 0
    for name, p in unet.named_parameters():
        if which == "full":
            on = True
        elif which == "xattn":
            on = "attn2" in name
        else:
            on = "attn2" not in name and name.rpartition(".")[0] in layers
        p.requires_grad_(on)
        count += p.numel() if on else 0
    return count


# --------------------------------------------------------------------------- cached inputs


@torch.no_grad()
def encode_prompts(pipeline, prompts: list[str], size: tuple[int, int] | None = None, batch_size: int = 32) -> torch.Tensor:
    """Each prompt's UNet conditioning, on the CPU: the text-encoder hidden states (N×77×D); for SDXL
    with its pooled embedding and the time ids of images of `size` (height, width; default the model's)."""
    size = size or (default_size(pipeline),) * 2
    out = []
    for i in range(0, len(prompts), batch_size):
        if isinstance(pipeline, StableDiffusionXLPipeline):
            embeds = sdxl.encode(pipeline, prompts[i : i + batch_size], size)
        else:
            embeds, _ = pipeline.encode_prompt(prompts[i : i + batch_size], pipeline.device, 1, False)
        out.append(embeds.float().cpu())
    return torch.cat(out)


def null_conditioning(pipeline, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The conditioning classifier-free guidance uses as unconditional (ESD's ∅), one row: the empty
    prompt's, or for SDXL what its pipeline makes of no negative prompt (zeros, for SDXL base)."""
    if isinstance(pipeline, StableDiffusionXLPipeline):
        return sdxl.null(pipeline, size or (default_size(pipeline),) * 2)[0].cpu()
    return encode_prompts(pipeline, [""])[0]


@torch.no_grad()
def encode_images(pipeline, images: torch.Tensor, seed: int = 0, batch_size: int = 8) -> torch.Tensor:
    """Scaled VAE latents of [-1, 1] images, one seeded posterior draw each, on the CPU."""
    vae = pipeline.vae
    generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size].to(pipeline.device, vae.dtype)
        latents = vae.encode(batch).latent_dist.sample(generator=generator)
        out.append((latents * vae.config.scaling_factor).float().cpu())
    return torch.cat(out)


def load_images(paths: list[Path], size: tuple[int, int] | None = None) -> torch.Tensor:
    """PNG/JPEG files -> float N×3×H×W in [-1, 1] (resized when `size` = (height, width) is given)."""
    from erase.data.images import read_images_uint8

    return read_images_uint8(paths, size).float() / 127.5 - 1.0


# --------------------------------------------------------------------------- losses


def training_scheduler(scheduler) -> DDPMScheduler:
    """The forward process the UNet was trained on, from the pipeline's scheduler config (betas,
    prediction type): x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε at any training timestep. Samplers such as SDXL's
    Euler add noise in their own σ scale and only at their inference timesteps; diffusers' training
    scripts use a DDPMScheduler the same way. (For DDIM and PNDM it adds the same noise.)"""
    return DDPMScheduler.from_config(scheduler.config)


def prediction_target(scheduler, latents, noise, timesteps) -> torch.Tensor:
    """What the UNet should output at x_t: ε, or v = √ᾱ_t ε − √(1−ᾱ_t) x₀ for a v-prediction model (SD 2.x 768)."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise UserError(f"the scheduler's prediction_type is {kind!r}; erase sd supports epsilon and v_prediction")


def predict(model, noisy, timesteps, conditioning) -> torch.Tensor:
    """The UNet's output for packed prompt conditionings (encode_prompts), SD or SDXL."""
    unet = getattr(model, "module", model)  # under several processes the model is wrapped
    if sdxl.is_xl(unet):
        return model(noisy, timesteps, **sdxl.unet_inputs(unet, conditioning)).sample
    return model(noisy, timesteps, encoder_hidden_states=conditioning).sample


def epsilon_loss(scheduler):
    """Per-sample denoising loss on (latents, conditionings, ...): the SD training objective, with the
    target of the scheduler's prediction type (ε or v)."""
    scheduler = training_scheduler(scheduler)

    def loss_fn(model, batch):
        latents, embeddings = batch[0], batch[1]
        noisy, noise, timesteps = noised(scheduler, latents)
        target = prediction_target(scheduler, latents, noise, timesteps)
        return per_sample_mse(predict(model, noisy, timesteps, embeddings), target)

    return loss_fn


def mapping_loss(scheduler):
    """Per-sample ‖ε_θ(x_t, c_f) − sg(ε_θ(x_t, c_a))‖² on (latents, forget emb., anchor emb.).

    Minimised: the model learns to answer the forget prompt as it answers the anchor prompt,
    on the forget images, with the same noise and timestep for both predictions.
    """
    scheduler = training_scheduler(scheduler)

    def loss_fn(model, batch):
        latents, forget_embeddings, anchor_embeddings = batch
        noisy, _, timesteps = noised(scheduler, latents)
        with torch.no_grad():
            target = predict(model, noisy, timesteps, anchor_embeddings)
        return per_sample_mse(predict(model, noisy, timesteps, forget_embeddings), target)

    return loss_fn


def esd_loss(scheduler, teacher: UNet2DConditionModel, null_embedding: torch.Tensor, negative_guidance: float = 1.0):
    """ESD: per-sample ‖ε_θ(x_t, c) − [ε*(x_t, ∅) − η(ε*(x_t, c) − ε*(x_t, ∅))]‖², ε* a frozen copy.

    x_t are the forget images' latents noised at a random timestep (ESD proper samples x_t with
    the model from the concept prompt; the cached forget images are such samples).
    """
    scheduler = training_scheduler(scheduler)

    def loss_fn(model, batch):
        latents, forget_embeddings = batch[0], batch[1]
        noisy, _, timesteps = noised(scheduler, latents)
        null = null_embedding.to(forget_embeddings.device, forget_embeddings.dtype).expand_as(forget_embeddings)
        with torch.no_grad():
            eps_null = predict(teacher, noisy, timesteps, null)
            eps_concept = predict(teacher, noisy, timesteps, forget_embeddings)
            target = guided_away(eps_null, eps_concept, negative_guidance)
        return per_sample_mse(predict(model, noisy, timesteps, forget_embeddings), target)

    return loss_fn


# --------------------------------------------------------------------------- generation


def image_name(row: PromptRow, k: int) -> str:
    return f"{row.name}_{k}.png"


def initial_noise(pipeline, seed: int, samples: int, height: int, width: int) -> torch.Tensor:
    """The row's starting latents: `samples` draws from one CPU generator seeded with the row's seed.

    The same convention as the I2P/ESD evaluation scripts (torch.manual_seed(seed), one batch of
    samples per prompt), computed per row so batching and resuming cannot change any image.
    """
    shape = (samples, pipeline.unet.config.in_channels, height // pipeline.vae_scale_factor, width // pipeline.vae_scale_factor)
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


@contextmanager
def frozen(*modules):
    """Within the block no weight of `modules` requires grad (each flag is restored after): generation
    needs no gradients, and autocast keeps a low-precision copy of every weight that requires grad until
    it exits (4.8 GiB for SDXL's UNet in bf16)."""
    flags = [(p, p.requires_grad) for module in modules for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def generate_images(
    pipeline,
    rows: list[PromptRow],
    out_dir,
    samples_per_prompt: int = 1,
    batch_size: int = 4,
    num_inference_steps: int = 50,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    default_guidance: float = 7.5,
    show_progress: bool = True,
    desc: str = "generating",
) -> dict:
    """Write `{name}_{k}.png` for every row and k < samples_per_prompt into out_dir; skip existing ones.

    Deterministic: image k of a row starts from the row seed's noise, and batches are the same on
    every run with the same batch size, so a killed run resumes where it stopped and ends equal to
    an uninterrupted one. Under `accelerate launch` the batches are split across processes.
    Returns {'written', 'skipped', 'total'} (written: by this process).
    """
    from accelerate import PartialState

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    height = height or default_size(pipeline)
    width = width or default_size(pipeline)
    items = [(row, k) for row in rows for k in range(samples_per_prompt)]
    # Batches are fixed by the full list, not by what is left: kernels may round differently for
    # another batch size, so a resumed run regenerates a partly written batch whole and writes
    # only its missing images.
    batches = list(_batches_by_guidance(items, batch_size, guidance, default_guidance))
    missing = [[not (out_dir / image_name(row, k)).exists() for row, k in batch] for batch in batches]
    todo = [(batch, flags) for batch, flags in zip(batches, missing) if any(flags)]
    skipped = len(items) - sum(sum(flags) for flags in missing)
    state = PartialState()
    # Every process takes its list before any writes: a process that lists late would see fewer
    # missing images, split another list, and leave some images to nobody.
    state.wait_for_everyone()
    with state.split_between_processes(todo) as mine:
        mine = list(mine)
    written = 0
    bar = tqdm(total=sum(sum(flags) for _, flags in mine), desc=desc, disable=not show_progress, leave=False)
    with frozen(*[c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)]):
        for batch, flags in mine:
            scale = guidance_of(batch[0][0], guidance, default_guidance)
            noise = {}
            latents = []
            for row, k in batch:
                if row.index not in noise:
                    noise[row.index] = initial_noise(pipeline, row.seed, samples_per_prompt, height, width)
                latents.append(noise[row.index][k])
            images = pipeline(
                prompt=[row.prompt for row, _ in batch], latents=torch.stack(latents).to(pipeline.device, pipeline.unet.dtype),
                guidance_scale=scale, num_inference_steps=num_inference_steps, height=height, width=width, output_type="pil",
            ).images
            for (row, k), image, needed in zip(batch, images, flags):
                if needed:
                    save_png_atomic(image, out_dir / image_name(row, k))
                    written += 1
                    bar.update(1)
    bar.close()
    return {"written": written, "skipped": skipped, "total": len(items)}


def guidance_of(row: PromptRow, guidance: float | None, default: float) -> float:
    """The guidance a row's image is drawn with: the one given, else the row's own, else `default`."""
    if guidance is not None:
        return guidance
    return row.guidance if row.guidance is not None else default


def _batches_by_guidance(items, batch_size: int, guidance, default):
    """Consecutive items in batches of at most batch_size that share one guidance scale."""
    batch = []
    for item in items:
        if batch and (len(batch) == batch_size or guidance_of(item[0], guidance, default) != guidance_of(batch[0][0], guidance, default)):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def save_png_atomic(image, path: Path) -> None:
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG")


# --------------------------------------------------------------------------- export


def stored_unet_dtype(folder: Path) -> torch.dtype:
    """The dtype the base UNet is stored in (exports keep it, so untouched weights stay bit-equal)."""
    files = sorted((folder / "unet").glob("*.safetensors"))
    files = [f for f in files if STANDARD_WEIGHTS.match(f.name)] or files
    if not files:
        return torch.float32
    with safe_open(str(files[0]), framework="pt") as f:
        keys = list(f.keys())
        stored = f.get_slice(keys[0]).get_dtype() if keys else "F32"
    return {"F16": torch.float16, "BF16": torch.bfloat16}.get(stored, torch.float32)


def read_unet_state(folder: Path) -> dict[str, torch.Tensor]:
    """The base UNet's weights as diffusers loads them, in their stored dtype, on the CPU."""
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    return unet_state(unet, stored_unet_dtype(folder))


def unet_state(unet: UNet2DConditionModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu", dtype, copy=True).contiguous() for name, t in unet.state_dict().items()}


def export_pipeline(base_folder: Path, state: dict[str, torch.Tensor], out) -> Path:
    """Write a diffusers folder (safetensors) equal to `base_folder` except for the UNet weights.

    Every other component is copied file by file (byte-identical); a component stored only as
    .bin is re-saved as safetensors. The UNet config is copied; its weights are `state`. The same
    function serves training and `erase patch apply`, so both give byte-identical folders.
    """
    base_folder = Path(base_folder)
    index = check_sd_folder(base_folder)
    with atomic_directory(out) as tmp:
        for entry in sorted(base_folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_file():
                shutil.copyfile(entry, tmp / entry.name)
            elif entry.name == "unet":
                (tmp / "unet").mkdir()
                shutil.copyfile(entry / "config.json", tmp / "unet" / "config.json")
                save_file(state, str(tmp / "unet" / UNET_WEIGHTS), metadata={"format": "pt"})
            elif entry.is_dir() and entry.name in index:
                _copy_component(entry, tmp / entry.name, index[entry.name])
    return Path(out)


def _copy_component(source: Path, target: Path, spec) -> None:
    files = [f for f in sorted(source.iterdir()) if f.is_file()]
    weights = [f for f in files if f.name.endswith(WEIGHT_SUFFIXES)]
    standard = [f for f in weights if STANDARD_WEIGHTS.match(f.name)]
    target.mkdir()
    if weights and not standard:
        library, class_name = spec
        component = getattr(importlib.import_module(library), class_name).from_pretrained(source)
        component.save_pretrained(target, safe_serialization=True)
        return
    for f in files:
        if f.name.endswith(WEIGHT_SUFFIXES) or f.name.endswith(".index.json"):
            if not STANDARD_WEIGHTS.match(f.name):
                continue  # variants (fp16, non_ema) and .bin twins: the folder holds one set of weights
        shutil.copyfile(f, target / f.name)
