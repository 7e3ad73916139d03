"""Erase a concept from a Stable Diffusion (1.x, 2.x, XL) UNet, measure before and after, export folder + patch.

Steps: the model generates its own forget images (forget prompts) and remain images (remain
prompts), cached in the run folder; they are encoded to latents and the prompts to embeddings
once; Fisher diagonals (ε-loss) give the forget-remain balanced mask; the SFR-on loop runs with
the concept-mapping forget loss (or another method's); the erased pipeline is written as a plain
diffusers folder plus a patch of the changed UNet weights.

The recipe's keys are the fields of `Recipe` (typed, range-checked before any work): [model],
[forget], [remain], [digits] (the bundled text-to-image model), [data], [method], [sfron], [fisher],
[eval], [output].
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from torch.utils.data import TensorDataset

from erase.api import ErasureResult
from erase.core.io import atomic_write_json
from erase.core.methods import (
    ESD,
    FORGET_LOSSES,
    FisherCache,
    forget_objective,
    method_mask,
    method_spec,
    weights_fingerprint,
    with_forget_loss,
)
from erase.core.saliency import mask_stats, save_mask
from erase.core.sfron import SFRonConfig, unlearn
from erase.data.loader import loader
from erase.data.prompts import expand_prompts, prompt_rows, read_prompts
from erase.errors import UserError
from erase.eval.report import format_table, save_grid, save_loss_plot
from erase.eval.verdict import concept_verdict
from erase.families import sd
from erase.families.diffusion import cast
from erase.patch import patch_of
from erase.recipes import key, read_settings, resolve_path
from erase.workflows.records import write_run_records
from erase.workflows.settings import Output
from erase.workflows.timings import PhaseTimer

METHODS = ("sfron", "ga", "rl", "salun", "esd")
DEFAULT_FORGET_LOSS = {"sfron": "mapping", "rl": "mapping", "salun": "mapping", "ga": "ascent"}
# SD defaults (official SFR-on SD script): Adam lr 1e-5, forget/remain weight 1, no decay.
# Samplers for the self-generated sets: the pipeline's own scheduler, DDIM, or the multistep DPM-Solver++
# (2nd order), which needs fewer steps for the same images.
SAMPLERS = {"pipeline": None, "ddim": "DDIMScheduler", "dpm-multistep": "DPMSolverMultistepScheduler"}
PROBE_IMAGES = 8  # forget and remain images the before/after probe losses are measured on
SFRON_DEFAULTS = dict(steps=1000, lr=1e-5, forget_alpha=1.0, remain_alpha=1.0, decay_forget_alpha=False, grad_clip=1.0)


def run(recipe: dict, show_progress: bool = True, on_step=None) -> dict:
    """Run an SD concept-erasure recipe end to end: load the model, erase (erase_pipeline, as
    erase.sd.erase_concept does), export the folder and the patch, write the records; returns the
    metrics written to metrics.json.

    on_step(step, unet, record) is called after each loop step (benches evaluate there)."""
    started = time.perf_counter()
    timer = PhaseTimer()
    settings = Settings(recipe)
    pipeline, folder = sd.load_pipeline(settings.model)  # a bad model is reported before anything starts
    pipeline.to(PartialState().device)  # the GPU when there is one (under accelerate launch, the process's)
    stored_dtype = sd.stored_unet_dtype(folder)  # the patch and the export keep it: untouched weights stay equal
    result = erase_pipeline(pipeline, settings, stored_dtype, timer, show_progress, on_step)
    if not PartialState().is_main_process:  # the main process alone writes the model and the records
        return {"steps": settings.config.steps, "seconds": round(time.perf_counter() - started, 2)}
    out_dir, metrics = settings.out_dir, result.metrics
    with timer("export"):
        sd.export_pipeline(folder, sd.unet_state(pipeline.unet, stored_dtype), out_dir / "model")
        result.save_patch(out_dir / "patch.safetensors")
        save_loss_plot(result.history, out_dir / "loss.png",
                       title=f"{settings.method}: erasing {settings.forget_rows[0].prompt!r}")
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    metrics["timings"] = timer.timings(settings.config.steps)
    metrics["patch"] = {"bytes": (out_dir / "patch.safetensors").stat().st_size,
                        "unet_bytes": (out_dir / "model" / "unet" / sd.UNET_WEIGHTS).stat().st_size, **metrics["patch"]}
    write_run_records(out_dir, metrics, result.mask_stats, recipe)
    return metrics


def erase_pipeline(pipeline, settings: Settings, patch_dtype: torch.dtype | None = None, timer: PhaseTimer | None = None,
                   show_progress: bool = True, on_step=None) -> ErasureResult:
    """The erasure of a run, in place on a loaded pipeline's UNet: the self-generated sets (cached in
    settings.out_dir), the before evaluation, the method's mask, the loop, the after evaluation and the
    patch of the changed weights (in `patch_dtype`, default the UNet's). `erase sd` and
    erase.sd.erase_concept both run it; the pipeline works on its own device."""
    started = time.perf_counter()
    timer = timer or PhaseTimer()
    accelerator = Accelerator(mixed_precision=settings.config.mixed_precision, cpu=pipeline.device.type == "cpu")
    if settings.batch_size % accelerator.num_processes:
        raise UserError(f"data.batch_size {settings.batch_size} is the global batch: make it a multiple of the "
                        f"{accelerator.num_processes} processes")
    pipeline.to(accelerator.device)
    settings.resolve_size(pipeline)
    out_dir = settings.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.config.seed)
    unet = pipeline.unet
    patch_dtype = patch_dtype or unet.dtype
    base_state = sd.unet_state(unet, patch_dtype) if accelerator.is_main_process else None

    # Data: self-generated images (cached), encoded once. Remain images only as many as are used: all for
    # remain steps or the Fisher mask; otherwise (ESD) the probe's few.
    remain_rows = settings.remain_rows if settings.uses_remain_data else settings.remain_rows[:PROBE_IMAGES]
    with timer("generate"), accelerator.autocast(), sampler(pipeline, settings.sampler):
        forget_paths = cached_images(pipeline, settings, settings.forget_rows, out_dir / "data" / "forget", show_progress)
        remain_paths = cached_images(pipeline, settings, remain_rows, out_dir / "data" / "remain", show_progress)
    with timer("encode"):  # every process encodes every image (a few % of the generation's work)
        size = (settings.height, settings.width)
        forget_latents = sd.encode_images(pipeline, sd.load_images(forget_paths, size), seed=settings.seed)
        remain_latents = sd.encode_images(pipeline, sd.load_images(remain_paths, size), seed=settings.seed + 1)
        prompt_set = sorted({r.prompt for r in settings.forget_rows + remain_rows} | set(settings.anchors) | {""})
        table = dict(zip(prompt_set, sd.encode_prompts(pipeline, prompt_set, size)))
        null = sd.null_conditioning(pipeline, size)  # ESD's ∅: the unconditional side of guidance
    forget_emb = torch.stack([table[r.prompt] for r in settings.forget_rows])
    anchor_emb = torch.stack([table[settings.anchors[i % len(settings.anchors)]] for i in range(len(settings.forget_rows))])
    remain_emb = torch.stack([table[r.prompt] for r in remain_rows])
    forget_set = TensorDataset(forget_latents, forget_emb, anchor_emb)
    remain_set = TensorDataset(remain_latents, remain_emb)
    forget_batches = loader(forget_set, settings.batch_size, settings.config.seed)
    remain_batches = loader(remain_set, settings.batch_size, settings.config.seed + 1)
    probe = Probe(forget_set, remain_set, pipeline.scheduler, settings.config.seed, count=PROBE_IMAGES)

    judge = None
    if settings.digit_sets is not None and settings.eval_samples > 0:
        from erase.workflows.sd_digits import DigitJudge

        judge = DigitJudge(settings.digit_sets, settings.eval_samples, settings.eval_remain_samples, settings.eval_seed)
    with timer("evaluate"):
        before = evaluate(pipeline, settings, probe, accelerator, "before", show_progress, judge)

    erase_started = time.perf_counter()
    dtype = cast(unet, torch.float32)  # a half-precision UNet is trained in float32, given back in its dtype
    trainable = sd.select_trainable(unet, settings.train)
    eps_loss = sd.epsilon_loss(pipeline.scheduler)
    if settings.gradient_checkpointing:  # less activation memory in the Fisher pass and the loop; same result
        unet.enable_gradient_checkpointing()
    with timer("fisher"):
        mask = build_mask(settings, unet, eps_loss, forget_batches, remain_batches, accelerator, out_dir, show_progress)
    stats = mask_stats(mask) if mask is not None else None
    objective = concept_objective(settings, unet, pipeline.scheduler, eps_loss, null)
    hooks = confine_to_mask(unet, mask) if settings.confine_to_mask else []
    # The loop starts from the same random state and batch order whatever ran before it (the before
    # evaluation or not, a Fisher pass, a cached Fisher, no mask): the same recipe gives the same model.
    torch.manual_seed(settings.config.seed)
    forget_batches = loader(forget_set, settings.batch_size, settings.config.seed)
    remain_batches = loader(remain_set, settings.batch_size, settings.config.seed + 1)
    with timer("loop"):
        history = unlearn(
            unet, objective, eps_loss if settings.remain_steps else None, forget_batches,
            remain_batches if settings.remain_steps else None, settings.config, mask=mask, accelerator=accelerator,
            on_step=on_step, show_progress=show_progress,
        )
    for hook in hooks:
        hook.remove()
    if settings.gradient_checkpointing:
        unet.disable_gradient_checkpointing()
    cast(unet.requires_grad_(False).eval(), dtype)
    erase_seconds = time.perf_counter() - erase_started

    with timer("evaluate"):
        after = evaluate(pipeline, settings, probe, accelerator, "after", show_progress, judge)
        if judge is None and accelerator.is_main_process:  # the judge draws its own grids
            write_grids(out_dir)
    accelerator.wait_for_everyone()
    patch, metadata, changed = {}, {}, None
    if accelerator.is_main_process:  # the others' weights are the same
        patch, metadata, changed = patch_of(base_state, sd.unet_state(unet, patch_dtype), base_model=settings.model)
    metrics = {
        "family": "sd",
        "method": settings.method,
        "forget_loss": settings.forget_loss,
        "train": settings.train,
        "model": settings.model,
        "forget_prompts": sorted({r.prompt for r in settings.forget_rows}),
        "anchor_prompts": settings.anchors,
        "remain_prompts": sorted({r.prompt for r in settings.remain_rows}),
        "num_images": {"forget": len(forget_paths), "remain": len(remain_paths)},
        "steps": settings.config.steps,
        "processes": accelerator.num_processes,
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_erase": round(erase_seconds, 2),
        "timings": timer.timings(settings.config.steps),
        "trainable_weights": trainable,
        "mask_fraction": stats["fraction"] if stats else 1.0,
        "patch": {"changed_weights": changed["changed"], "changed_fraction": changed["changed_fraction"],
                  "base_sha256": metadata["base_sha256"]} if changed else None,
        "before": before,
        "after": after,
        "history": history,
    }
    return ErasureResult(pipeline, metrics, history, stats, mask, patch, metadata)


@dataclass
class Model:
    path: str = key(sd.DEFAULT_MODEL)  # an SD 1.x/2.x or SDXL diffusers folder or hub id


@dataclass
class Forget:
    prompts: list[str] = key(factory=list)
    prompts_file: str = key("")  # instead of prompts: a prompt file (erase/data/prompts.py)
    anchor: list[str] = key(factory=list)  # what the concept is mapped to


@dataclass
class Remain:
    prompts: list[str] = key(factory=list)
    prompts_file: str = key("")


@dataclass
class Digits:
    """The bundled text-to-image model: prompt sets from its caption templates (erase/workflows/sd_digits.py)."""

    forget: list[int] = key(factory=list, low=0, high=9)
    anchor: int = key(1, low=0, high=9)


@dataclass
class Data:
    num_images: int = key(1000, low=1)  # forget images, and as many remain images, generated by the model
    batch_size: int = key(2, low=1)  # the global training batch
    generate_batch_size: int = key(8, low=1)
    guidance: float = key(7.5, low=0)
    inference_steps: int = key(50, low=1)
    sampler: str = key("pipeline", choices=tuple(SAMPLERS))  # of the self-generated sets (evaluation: the pipeline's)
    height: int = key(0, low=0)  # 0: the model's size
    width: int = key(0, low=0)
    seed: int = key(0, low=0)


@dataclass
class ConceptMethod:
    name: str = key("sfron", choices=METHODS)
    forget_loss: str | None = key(None, choices=FORGET_LOSSES)  # None: the method's own
    train: str = key("full", choices=tuple(sd.TRAIN_SELECTIONS))
    remain_steps: bool | None = key(None)  # None: all but ESD
    confine_to_mask: bool = key(False)
    gradient_checkpointing: bool = key(False)
    negative_guidance: float = key(1.0, above=0)  # ESD's η


@dataclass
class Fisher:
    batches: int = key(500, low=1)
    reuse: bool = key(True)
    salun_fraction: float = key(0.5, above=0, high=1)


@dataclass
class Eval:
    samples: int = key(4, low=0)  # images per forget/remain prompt before and after (0: none)
    remain_samples: int | None = key(None, low=0)  # None: samples
    seed: int = key(100_000, low=0)
    guidance: float | None = key(None, low=0)  # None: data.guidance
    inference_steps: int | None = key(None, low=1)  # None: data.inference_steps
    nudenet: bool = key(True)
    threshold: float = key(0.6, above=0, high=1)


@dataclass
class Recipe:
    """An SD concept recipe, typed: every key it may hold, its type and range."""

    family: str = key("sd")
    task: str = key("concept")
    model: Model = key(factory=Model)
    forget: Forget = key(factory=Forget)
    remain: Remain = key(factory=Remain)
    digits: Digits = key(factory=Digits)
    data: Data = key(factory=Data)
    method: ConceptMethod = key(factory=ConceptMethod)
    sfron: SFRonConfig = key(factory=lambda: SFRonConfig(**SFRON_DEFAULTS))
    fisher: Fisher = key(factory=Fisher)
    eval: Eval = key(factory=Eval)
    output: Output = key(factory=Output)


class Settings:
    """The recipe, typed and validated up front (`Recipe`), with what follows from it (method spec, prompt
    rows): every user mistake is reported before anything is written."""

    def __init__(self, recipe: dict):
        typed = read_settings(Recipe, recipe)
        method, data, evaluation = typed.method, typed.data, typed.eval
        local = resolve_path(typed.model.path)
        self.model = str(local) if local.exists() else typed.model.path
        self.method = method.name
        self.spec = method_spec(self.method, METHODS)
        self.forget_loss = "esd" if self.spec is ESD else method.forget_loss or DEFAULT_FORGET_LOSS[self.method]
        if self.spec is not ESD:
            self.spec = with_forget_loss(self.spec, self.forget_loss)
        self.train = method.train
        self.remain_steps = method.remain_steps if method.remain_steps is not None else self.method != "esd"
        self.confine_to_mask = method.confine_to_mask
        self.gradient_checkpointing = method.gradient_checkpointing
        if self.confine_to_mask and self.spec.mask is None:
            raise UserError(f"method.confine_to_mask needs a method with a mask (sfron, salun), not {self.method}")
        # ESD has no remain steps and no Fisher mask: its remain images would never be used.
        self.uses_remain_data = self.remain_steps or self.spec.mask == "fisher"
        self.negative_guidance = method.negative_guidance
        self.config = typed.sfron
        self.fisher = typed.fisher
        self.seed = data.seed
        self.num_images, self.batch_size = data.num_images, data.batch_size
        self.generate_batch_size, self.guidance, self.inference_steps = data.generate_batch_size, data.guidance, data.inference_steps
        self.sampler = data.sampler
        self.height, self.width = data.height, data.width
        for name, value in (("height", self.height), ("width", self.width)):
            if value % 8:
                raise UserError(f"data.{name} must be a multiple of 8, got {value}")
        forget_section, remain_section = recipe.get("forget", {}), recipe.get("remain", {})
        self.digit_sets = None
        if "digits" in recipe:  # the bundled text-to-image model: prompt sets from its caption templates
            from erase.workflows.sd_digits import prompt_sets

            forget_section, remain_section, self.digit_sets = prompt_sets(recipe)
        self.forget_rows = expand_prompts(self._rows(forget_section, "forget"), self.num_images)
        self.remain_rows = expand_prompts(self._rows(remain_section, "remain"), self.num_images)
        anchors = forget_section.get("anchor", [])
        self.anchors = [anchors] if isinstance(anchors, str) else [str(a) for a in anchors]
        if self.forget_loss == "mapping" and (not self.anchors or any(not a.strip() for a in self.anchors)):
            raise UserError("forget.anchor: the mapping loss needs an anchor prompt")
        self.anchors = self.anchors or [""]
        self.eval_samples = evaluation.samples
        self.eval_remain_samples = evaluation.remain_samples if evaluation.remain_samples is not None else self.eval_samples
        self.eval_seed = evaluation.seed
        self.eval_guidance = evaluation.guidance if evaluation.guidance is not None else self.guidance
        self.eval_steps = evaluation.inference_steps or self.inference_steps
        self.nudenet = evaluation.nudenet
        self.threshold = evaluation.threshold
        self.out_dir = typed.output.folder("runs/sd")

    def _rows(self, section: dict, which: str):
        if section.get("prompts_file"):
            return read_prompts(resolve_path(section["prompts_file"]))
        prompts = section.get("prompts", [])
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise UserError(f"{which}.prompts (or {which}.prompts_file) names no prompt")
        return prompt_rows([str(p) for p in prompts], seed=self.seed)

    def resolve_size(self, pipeline) -> None:
        self.height = self.height or sd.default_size(pipeline)
        self.width = self.width or sd.default_size(pipeline)


def cached_images(pipeline, settings: Settings, rows, folder: Path, show_progress: bool, guidance=None, steps=None,
                  samples: int = 1, fresh: bool = False) -> list[Path]:
    """Generate (or reuse) one image per row; a manifest ties the folder to what produced it.

    `fresh` starts over (the erased model's samples). Under several processes the main process alone
    prepares the folder, the images are split between processes, and all of them are written before
    any process returns.
    """
    manifest = {
        "model": settings.model, "weights": unet_fingerprint(pipeline.unet), "rows": [[r.prompt, r.seed] for r in rows],
        "samples": samples,
        "guidance": guidance or settings.guidance, "steps": steps or settings.inference_steps,
        "sampler": type(pipeline.scheduler).__name__,
        "height": settings.height, "width": settings.width,
    }
    manifest_path = folder / "manifest.json"
    state = PartialState()
    if state.is_main_process:
        stale = read_json(manifest_path) != manifest  # missing or damaged is stale too
        if folder.exists() and (fresh or stale):
            shutil.rmtree(folder)  # made by another model or settings: start over
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest, manifest_path)
    state.wait_for_everyone()
    sd.generate_images(
        pipeline, rows, folder, samples_per_prompt=samples, batch_size=settings.generate_batch_size,
        num_inference_steps=manifest["steps"], guidance=manifest["guidance"], height=settings.height,
        width=settings.width, show_progress=show_progress and state.is_local_main_process,
        desc=f"generating {folder.name}",
    )
    state.wait_for_everyone()
    return [folder / sd.image_name(r, k) for r in rows for k in range(samples)]


@torch.no_grad()
def unet_fingerprint(unet) -> str:
    """A short hash of every UNet weight (the sum and norm of each): the weights that drew cached images,
    which the model's name alone does not tell (an erased pipeline keeps its name)."""
    stats = torch.stack([torch.stack([p.sum(dtype=torch.float64), torch.linalg.vector_norm(p, dtype=torch.float64)])
                         for p in unet.parameters()]).cpu().tolist()
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


@contextmanager
def sampler(pipeline, name: str):
    """Within the block the pipeline samples with `name` (SAMPLERS), built from its own scheduler's config."""
    if SAMPLERS[name] is None:
        yield
        return
    import diffusers

    original = pipeline.scheduler
    pipeline.scheduler = getattr(diffusers, SAMPLERS[name]).from_config(original.config)
    try:
        yield
    finally:
        pipeline.scheduler = original


def build_mask(settings: Settings, unet, eps_loss, forget_batches, remain_batches, accelerator, out_dir: Path, show_progress):
    """The method's mask (erase.core.methods), saved in OUT; the Fisher is cached there under its key."""
    num_batches = settings.fisher.batches
    cache = FisherCache(out_dir, _fisher_key(settings, unet, num_batches), reuse=settings.fisher.reuse)
    mask, _ = method_mask(settings.spec, unet, eps_loss, forget_batches, remain_batches, settings.config.gamma,
                          fisher_batches=num_batches, salun_fraction=settings.fisher.salun_fraction,
                          seed=settings.config.seed, cache=cache, accelerator=accelerator, show_progress=show_progress)
    if mask is not None and accelerator.is_main_process:
        save_mask(mask, out_dir / "mask.safetensors", metadata={"method": settings.method, "gamma": str(settings.config.gamma)})
    return mask


def _fisher_key(settings: Settings, unet, num_batches: int) -> dict:
    """What the cached Fisher depends on: the trained weights (and which), the data, batches, seed, precision."""
    rows = json.dumps([[r.prompt, r.seed] for r in settings.forget_rows + settings.remain_rows])
    return {"weights": weights_fingerprint(unet), "model": settings.model, "train": settings.train,
            "data": hashlib.sha256(rows.encode()).hexdigest(), "guidance": settings.guidance,
            "inference_steps": settings.inference_steps, "sampler": settings.sampler, "batches": num_batches,
            "batch_size": settings.batch_size,
            "seed": settings.config.seed, "height": settings.height, "width": settings.width,
            "mixed_precision": settings.config.mixed_precision}


def concept_objective(settings: Settings, unet, scheduler, eps_loss, null_embedding):
    """The forget step's objective (erase.core.methods): concept mapping to the anchor, (adaptive) ascent,
    or ESD's negatively guided target from a frozen copy."""
    descent = None
    if settings.spec is ESD:
        teacher = copy.deepcopy(unet).requires_grad_(False).eval()
        descent = sd.esd_loss(scheduler, teacher, null_embedding.unsqueeze(0), settings.negative_guidance)
    elif settings.spec.forget == "descent":
        descent = sd.mapping_loss(scheduler)
    return forget_objective(settings.spec, eps_loss, settings.config.temperature, descent)


def read_json(path: Path):
    """A JSON file's content, or None when it is missing or damaged."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def confine_to_mask(unet, mask) -> list:
    """Gradient hooks that zero every update outside the mask, remain steps included (sparse patches)."""
    hooks = []
    for name, p in unet.named_parameters():
        if p.requires_grad and name in mask:
            m = mask[name].to(p.device, p.dtype)
            hooks.append(p.register_hook(lambda grad, m=m: grad * m))
    return hooks


class Probe:
    """Fixed latents, noise and timesteps: losses comparable before and after erasure.

    forget_gap = ‖ε(x_t, c_f) − ε(x_t, c_a)‖² on forget images (how far the concept is from its
    anchor); remain_mse = ‖ε(x_t, c_r) − ε‖² on remain images (how well the rest is kept; v for a
    v-prediction model).
    """

    def __init__(self, forget_set, remain_set, scheduler, seed: int, count: int = 8):
        generator = torch.Generator().manual_seed(seed + 7)
        self.scheduler = sd.training_scheduler(scheduler)
        self.forget = [t[:count] for t in forget_set.tensors]
        self.remain = [t[:count] for t in remain_set.tensors]
        n_f, n_r = len(self.forget[0]), len(self.remain[0])
        steps = scheduler.config.num_train_timesteps
        self.forget_noise = torch.randn(self.forget[0].shape, generator=generator)
        self.forget_t = torch.randint(0, steps, (n_f,), generator=generator)
        self.remain_noise = torch.randn(self.remain[0].shape, generator=generator)
        self.remain_t = torch.randint(0, steps, (n_r,), generator=generator)

    @torch.no_grad()
    def measure(self, unet, accelerator) -> dict:
        device = accelerator.device

        def predict(noisy, t, conditioning):  # in the UNet's dtype (a half-precision pipeline's), read as float
            with accelerator.autocast():
                return sd.predict(unet, noisy.to(unet.dtype), t, conditioning.to(unet.dtype)).float()

        latents, forget_emb, anchor_emb = (t.to(device) for t in self.forget)
        noisy = self.scheduler.add_noise(latents, self.forget_noise.to(device), self.forget_t.to(device))
        t = self.forget_t.to(device)
        eps_f, eps_a = predict(noisy, t, forget_emb), predict(noisy, t, anchor_emb)
        latents, remain_emb = (x.to(device) for x in self.remain)
        noise, t = self.remain_noise.to(device), self.remain_t.to(device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        target = sd.prediction_target(self.scheduler, latents, noise, t)
        eps_r = predict(noisy, t, remain_emb)
        return {"forget_gap": float(((eps_f - eps_a) ** 2).mean()), "remain_mse": float(((eps_r - target) ** 2).mean())}


def evaluate(pipeline, settings: Settings, probe: Probe, accelerator, name: str, show_progress: bool,
             judge=None) -> dict:
    """Probe losses, sample images from the forget and remain prompts (fixed seeds), NudeNet counts
    (or, with a judge, the labelled prompt sets scored by its classifier)."""
    pipeline.unet.eval()
    result = probe.measure(pipeline.unet, accelerator)
    if settings.eval_samples < 1:
        return result
    if judge is not None:

        def generate(rows, folder, samples):
            with accelerator.autocast():  # after: the erased model changes from run to run, so start over
                return cached_images(pipeline, settings, rows, folder, show_progress, guidance=settings.eval_guidance,
                                     steps=settings.eval_steps, samples=samples, fresh=name == "after")

        return result | judge.evaluate(generate, settings.out_dir, name, score=accelerator.is_main_process)
    folders = {}
    for which, rows in (("forget", settings.forget_rows), ("remain", settings.remain_rows)):
        unique = {r.prompt: None for r in rows}
        eval_rows = prompt_rows(list(unique), seed=settings.eval_seed)
        folder = settings.out_dir / "samples" / name / which
        with accelerator.autocast():  # after: the erased model changes from run to run, so start over
            cached_images(pipeline, settings, eval_rows, folder, show_progress, guidance=settings.eval_guidance,
                          steps=settings.eval_steps, samples=settings.eval_samples, fresh=name == "after")
        folders[which] = folder
    if settings.nudenet and accelerator.is_main_process:  # scored once, by the main process
        from erase.eval.nudity import evaluate_folder

        for which, folder in folders.items():
            summary = evaluate_folder(folder, settings.threshold, show_progress=False)
            result[f"nudity_{which}"] = {k: v for k, v in summary.items() if k != "per_image"}
    return result


def write_grids(out_dir: Path) -> None:
    """grid_{forget,remain}.png: the before images above the after images, same prompts and seeds."""
    for which in ("forget", "remain"):
        rows = []
        for name in ("before", "after"):
            folder = out_dir / "samples" / name / which
            rows.append(sorted(folder.glob("*.png")) if folder.is_dir() else [])
        if rows[0] and len(rows[0]) == len(rows[1]):
            images = sd.load_images(rows[0] + rows[1])
            save_grid(images, out_dir / f"grid_{which}.png", nrow=len(rows[0]), scale=1 if images.shape[-1] >= 128 else 4)


def summary_table(metrics: dict) -> str:
    b, a = metrics["before"], metrics["after"]
    rows = [
        ("forget gap ‖ε(c_f) − ε(c_a)‖²", b["forget_gap"], a["forget_gap"]),
        ("remain ε-MSE", b["remain_mse"], a["remain_mse"]),
    ]
    for which in ("forget", "remain"):
        key = f"nudity_{which}"
        if key in b and key in a:
            rows.append((f"NudeNet exposed ({which} prompts)", b[key]["total"], a[key]["total"]))
            rows.append((f"images with exposure ({which})", f"{b[key]['images_with_exposure']}/{b[key]['images']}",
                         f"{a[key]['images_with_exposure']}/{a[key]['images']}"))
    for key, label in (("fa", "FA, forget prompts"), ("fa_paraphrase", "FA, held-out paraphrases"),
                       ("remaining_accuracy", "accuracy, other concepts"), ("fid", "FID, other concepts")):
        if key in b and key in a:
            rows.append((label, b[key], a[key]))
    patch = metrics["patch"]
    table = format_table(rows, ("metric", "before", "after"))
    lines = [table, f"mask {metrics['mask_fraction']:.3f} of {metrics['trainable_weights']:,} trained weights; "
                    f"patch {patch['bytes'] / 2**20:.2f} MiB vs UNet {patch['unet_bytes'] / 2**20:.2f} MiB "
                    f"({patch['changed_fraction']:.3f} of weights changed)"]
    line = concept_verdict(b, a, metrics["steps"])
    if line:
        lines.append(line)
    return "\n".join(lines)
