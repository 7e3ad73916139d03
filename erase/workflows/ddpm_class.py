"""Forget one class of a class-conditional DDPM, evaluate before and after, export the erased model.

The recipe (pipelines/digits-ddpm-class.toml, ddpm-cifar10-class.toml) is read into `Settings`, whose
dataclasses list every key it may hold: [model], [forget] class, [data], [method], [sfron]
(SFRonConfig), [fisher], [eval], [output].
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from erase.api import ErasureResult
from erase.core.methods import (
    ESD,
    METHODS,
    FisherCache,
    forget_objective,
    method_mask,
    method_spec,
    weights_fingerprint,
)
from erase.core.saliency import mask_stats, save_mask
from erase.core.sfron import SFRonConfig, unlearn
from erase.data.digits import load_digits_tensors, to_uint8
from erase.data.loader import loader
from erase.errors import UserError
from erase.eval.accuracy import (
    forgetting_accuracy,
    per_class_accuracy,
    remaining_accuracy,
)
from erase.eval.fid import DIGITS_EXTRACTOR, fid_kid
from erase.eval.report import format_table, save_grid
from erase.eval.verdict import verdict
from erase.families import ddpm
from erase.families.classifier import load_classifier, predict
from erase.families.diffusion import cast
from erase.recipes import key, read_settings, resolve_path
from erase.workflows.records import finish_class_run
from erase.workflows.settings import Method, Output
from erase.workflows.timings import PhaseTimer

# The shared METHODS, and ESD: DDPM and DiT have the null class it needs.
CLASS_METHODS = (*METHODS, "esd")


@dataclass
class Model:
    path: str = key("")  # a diffusers folder or hub id
    device: str = key("")  # "auto": the GPU when there is one; empty: the CPU
    random_init: bool = key(False)  # the preset's architecture with random weights (speed runs)
    preset: str = key("cifar10", choices=tuple(ddpm.PRESETS))
    num_classes: int = key(10, low=2)


@dataclass
class Forget:
    forget_class: int | None = key(None, name="class", low=0)


@dataclass
class Data:
    dataset: str = key("digits")  # digits | generated | an image folder | cifar10 on disk
    root: str = key("")
    images_per_class: int = key(1000, low=0)  # real images; 0: all of them
    generated_per_class: int = key(64, low=1)
    guidance: float = key(2.0, low=0)
    inference_steps: int = key(20, low=1)
    seed: int | None = key(None, low=0)  # generated: 1234, real: 0
    batch_size: int = key(64, low=1)


@dataclass
class ClassMethod(Method):
    name: str = key("sfron", choices=CLASS_METHODS)
    # Share of labels replaced by the null class in the ε-loss of the forget and remain steps, as the
    # official code unlearns (0.1); RL, SalUn and ESD's forget losses keep the true label.
    label_dropout: float = key(0.0, low=0, below=1)

    @property
    def spec(self):
        return method_spec(self.name, CLASS_METHODS)


@dataclass
class Fisher:
    """[fisher]: the mask's gradient pass. The official class-DDPM Fisher is batches = 0, guidance = 3 (its
    cond_scale 2) and a clip that binds on every batch (its clip 1 is on the loss summed over pixels, i.e.
    1/(C·H·W) here: 1/64 on digits); the defaults are the plain pass (docs/fidelity.md)."""

    batches: int = key(8, low=0)  # per set; 0: one full pass over the forget and the remain data
    clip: float = key(0.0, low=0)  # clip each batch gradient to this norm before squaring; 0: off
    guidance: float = key(1.0, low=0)  # the loss on ε_∅ + w(ε_c − ε_∅); 1: the plain conditional ε
    reuse: bool = key(False)  # read back diagonals cached in output.dir when their key matches
    salun_fraction: float = key(0.5, above=0, high=1)


@dataclass
class Eval:
    """[eval]; a key left out takes the evaluator's default (the digit CNN's, or a user classifier's)."""

    kind: str = key("digits", choices=("digits", "classifier"))
    classifier: str | None = key()
    arch: str | None = key()
    normalize: str | None = key(choices=("", "half", "imagenet"))
    classifier_image_size: int | None = key(low=0)
    forget_samples: int | None = key(low=1)
    samples_per_class: int | None = key(low=1)
    guidance: float | None = key(low=0)
    inference_steps: int | None = key(low=1)
    batch_size: int | None = key(low=1)
    seed: int | None = key(low=0)
    fid: bool | None = key()
    kid: bool | None = key()
    fid_features: str | None = key(choices=("inception", "classifier"))
    inception_weights: str | None = key()
    fid_reference: str | None = key()
    fid_reference_root: str | None = key()
    fid_reference_split: str | None = key()
    reference_images: int | None = key(low=1)

    def given(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Settings:
    """A class-DDPM recipe, typed: every key it may hold, its type and range."""

    family: str = key("ddpm")
    task: str = key("class")
    model: Model = key(factory=Model)
    forget: Forget = key(factory=Forget)
    data: Data = key(factory=Data)
    method: ClassMethod = key(factory=ClassMethod)
    sfron: SFRonConfig = key(factory=SFRonConfig)
    fisher: Fisher = key(factory=Fisher)
    eval: Eval = key(factory=Eval)
    output: Output = key(factory=Output)


def read(recipe: dict) -> Settings:
    """The recipe as Settings; every user mistake in it is reported here, before any work."""
    return read_settings(Settings, recipe)


def run(recipe: dict, show_progress: bool = True) -> dict:
    """Run a class-forgetting recipe end to end: load the model, forget the class (erase_pipeline, as
    erase.ddpm.forget_class does), export the model, write the records; returns the metrics written to
    metrics.json."""
    started = time.perf_counter()
    timer = PhaseTimer()
    settings = read(recipe)
    if settings.forget.forget_class is None:
        raise UserError("the recipe has no forget.class")
    out_dir = settings.output.folder("runs/ddpm-class")
    torch.manual_seed(settings.sfron.seed)

    pipeline = ddpm.load_or_build_pipeline(asdict(settings.model))  # a folder/hub id, or random_init for speed runs
    result = erase_pipeline(pipeline, settings, out_dir, timer, show_progress)
    title = f"{result.metrics['method']}: forgetting class {result.metrics['forgotten_class']}"
    return finish_class_run(pipeline, result, out_dir, recipe, timer, started, settings.sfron.steps, title)


def erase_pipeline(pipeline, settings: Settings, out_dir: Path, timer: PhaseTimer | None = None,
                   show_progress: bool = True) -> ErasureResult:
    """The forgetting of a run, in place on a loaded pipeline's UNet: the before evaluation, the data, mask
    and loop (erase_class), the after evaluation, with both grids drawn in `out_dir`. `erase ddpm` and
    erase.ddpm.forget_class both run it; the pipeline works on its own device."""
    started = time.perf_counter()
    timer = timer or PhaseTimer()
    forget_class, spec, config = settings.forget.forget_class, settings.method.spec, settings.sfron
    accelerator = process_accelerator(pipeline, config, settings.data.batch_size)
    num_classes = pipeline.num_classes
    if not 0 <= forget_class < num_classes:
        raise UserError(f"forget.class must be in [0, {num_classes - 1}], got {forget_class}")
    evaluator = make_evaluator(settings, num_classes, forget_class)
    main = accelerator.is_main_process  # evaluates and writes; the others share the Fisher pass and the loop
    out_dir.mkdir(parents=True, exist_ok=True)

    with timer("evaluate"):
        before = evaluator.evaluate(pipeline, "before") if main else None
    erase_started = time.perf_counter()
    mask, history, _ = erase_class(settings, pipeline, spec, config, forget_class, out_dir, show_progress=show_progress,
                                   accelerator=accelerator, timer=timer)
    stats = mask_stats(mask) if mask is not None else None
    erase_seconds = time.perf_counter() - erase_started

    with timer("evaluate"):
        after = evaluator.evaluate(pipeline, "after") if main else None
        if main:
            save_grid(before.pop("grid"), out_dir / "grid_before.png", nrow=num_classes)
            save_grid(after.pop("grid"), out_dir / "grid_after.png", nrow=num_classes)
    accelerator.wait_for_everyone()
    metrics = {
        "family": "ddpm",
        "method": spec.name,
        "forgotten_class": forget_class,
        "steps": config.steps,
        "processes": accelerator.num_processes,
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_erase": round(erase_seconds, 2),
        "timings": timer.timings(config.steps),
        "mask_fraction": stats["fraction"] if stats else 1.0,
        "before": before,
        "after": after,
        "history": history,
    }
    return ErasureResult(pipeline, metrics, history, stats, mask)


def training_data(data: Data, pipeline) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images with labels, or images the model generates itself (no data needed)."""
    if data.dataset == "digits":
        return load_digits_tensors("train")
    if data.dataset == "generated":
        labels = torch.arange(pipeline.num_classes).repeat_interleave(data.generated_per_class)
        images = ddpm.sample(
            pipeline, labels, guidance_scale=data.guidance, num_inference_steps=data.inference_steps,
            seed=1234 if data.seed is None else data.seed,
        )
        return images, labels
    # Otherwise an image folder or torchvision-format CIFAR-10 on disk: real images of every class.
    unet_config = pipeline.unet.config
    size = unet_config.sample_size if isinstance(unet_config.sample_size, int) else unet_config.sample_size[0]
    return ddpm.real_class_data(
        data.dataset, pipeline.num_classes, size, unet_config.in_channels, data.images_per_class or None,
        root=data.root or None, seed=data.seed or 0,
    )


def class_batches(data: Data, images, labels, forget_class: int, seed: int):
    """(forget loader, remain loader): the class's images and the others', each with its own seed."""
    (f_images, f_labels), (r_images, r_labels) = ddpm.class_split(images, labels, forget_class)
    return (loader(TensorDataset(f_images, f_labels), data.batch_size, seed),
            loader(TensorDataset(r_images, r_labels), data.batch_size, seed + 1))


def erase_class(settings: Settings, pipeline, spec, config, forget_class: int, work_dir: Path,
                show_progress: bool = True, on_step=None, accelerator=None, timer: PhaseTimer | None = None):
    """The erase half of a run, in place on pipeline.unet: data, the method's mask, the loop.

    Returns (mask or None, the loop's history, seconds spent building the mask). Benchmarks call
    this too, so what they measure is exactly what `erase run` does. With an accelerator of several
    processes, the Fisher pass and the loop are split across them (erase.core.sharding).
    """
    timer = timer or PhaseTimer()
    unet, scheduler = pipeline.unet, pipeline.scheduler
    generated = settings.data.dataset == "generated"  # real data's loading is in no phase (metrics' seconds)
    with timer("generate") if generated else nullcontext():
        images, labels = training_data(settings.data, pipeline)
    forget_batches, remain_batches = class_batches(settings.data, images, labels, forget_class, config.seed)
    loss_fn = ddpm.epsilon_loss(scheduler, settings.method.label_dropout, pipeline.null_class)

    unet.requires_grad_(True)
    dtype = cast(unet, torch.float32)  # a half-precision UNet is trained in float32, given back in its dtype
    started = time.perf_counter()
    with timer("fisher"):
        mask = class_mask(spec, settings.fisher, unet, fisher_loss(settings.fisher, pipeline), forget_batches,
                          remain_batches, config, work_dir,
                          {"forget_class": forget_class, "data": asdict(settings.data)}, show_progress, accelerator)
    mask_seconds = time.perf_counter() - started
    descent = None
    if spec is ESD:
        descent = esd_loss(settings.method.negative_guidance, unet, scheduler)
    elif spec.forget == "descent":
        descent = ddpm.class_mapping_loss(scheduler, pipeline.num_classes)
    objective = forget_objective(spec, loss_fn, config.temperature, descent)
    with timer("loop"):
        history = unlearn(unet, objective, loss_fn, forget_batches, remain_batches, config, mask=mask,
                          accelerator=accelerator, on_step=on_step, show_progress=show_progress)
    cast(unet.requires_grad_(False), dtype)
    return mask, history, mask_seconds


def process_accelerator(pipeline, config: SFRonConfig, batch_size: int):
    """The run's Accelerator, on the pipeline's kind of device (the digits model stays on the CPU); under
    `accelerate launch` each process moves the pipeline to its own device. The batch is the global batch."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=pipeline.device.type == "cpu")
    if batch_size % accelerator.num_processes:
        raise UserError(f"data.batch_size {batch_size} is the global batch: make it a multiple of the "
                        f"{accelerator.num_processes} processes")
    pipeline.to(accelerator.device)
    return accelerator


def class_mask(spec, fisher: Fisher, model, loss_fn, forget_batches, remain_batches, config, out_dir: Path,
               data: dict, show_progress: bool = True, accelerator=None):
    """The method's mask (erase.core.methods), saved in OUT; the Fisher is cached in OUT under a key of
    the trained weights, `data` (the forgotten class and data settings), the [fisher] pass and seed, so
    `fisher.reuse` reads back only diagonals computed for this very run (e.g. by `erase fisher`)."""
    cache = FisherCache(out_dir, fisher_key(model, data, fisher, config.seed), reuse=fisher.reuse)
    mask, _ = method_mask(spec, model, loss_fn, forget_batches, remain_batches, config.gamma,
                          fisher_batches=fisher.batches or None, salun_fraction=fisher.salun_fraction, seed=config.seed,
                          cache=cache, accelerator=accelerator, show_progress=show_progress,
                          fisher_clip=fisher.clip or None)
    if mask is not None and (accelerator is None or accelerator.is_main_process):
        save_mask(mask, out_dir / "mask.safetensors", metadata={"method": spec.name, "gamma": str(config.gamma)})
    return mask


def fisher_key(model, data: dict, fisher: Fisher, seed: int) -> dict:
    """What a class workflow's Fisher diagonals are computed from (`erase fisher` writes the same key)."""
    return {"weights": weights_fingerprint(model), **data, "batches": fisher.batches, "clip": fisher.clip,
            "guidance": fisher.guidance, "seed": seed}


def fisher_loss(fisher: Fisher, pipeline):
    """The mask pass's loss: the ε-MSE, on the guided prediction when fisher.guidance ≠ 1, never with
    label dropout (the official Fisher runs the model in test mode)."""
    return ddpm.epsilon_loss(pipeline.scheduler, null_class=pipeline.null_class, guidance=fisher.guidance)


def esd_loss(negative_guidance: float, unet, scheduler):
    """ESD's loss: towards a frozen copy's negatively guided prediction, the model's null class as ∅."""
    teacher = copy.deepcopy(unet).requires_grad_(False).eval()
    null_class = unet.config.num_class_embeds - 1
    return ddpm.class_esd_loss(scheduler, teacher, null_class, negative_guidance)


def make_evaluator(settings: Settings, num_classes: int, forget_class: int):
    """[eval] kind = "digits" (the bundled digit CNN; the default) or "classifier": a classifier the user
    supplies (eval.classifier), FID of the remaining classes against real images of the dataset."""
    cfg = settings.eval.given()
    if settings.eval.kind == "digits":
        return Evaluator(cfg, num_classes, forget_class)
    from erase.eval.class_forgetting import ClassForgettingEvaluator, load_reference

    data = settings.data
    source = cfg.get("fid_reference") or (data.dataset if data.dataset not in ("digits", "generated") else None)
    reference = None
    if source and cfg.get("fid", True):
        reference = load_reference(source, forget_class, int(cfg.get("reference_images", 10000)), None,
                                   root=cfg.get("fid_reference_root") or data.root or None,
                                   split=cfg.get("fid_reference_split", "train"))
    guidance, steps = float(cfg.get("guidance", 2.0)), int(cfg.get("inference_steps", 100))
    batch_size = int(cfg.get("batch_size", 500))

    def generate(pipeline, labels, seed):
        return ddpm.sample(pipeline, labels, guidance, steps, seed=seed, batch_size=batch_size)

    return ClassForgettingEvaluator(cfg, num_classes, forget_class, generate, reference)


class Evaluator:
    """Generates images of every class with fixed seeds and scores them with the digit classifier."""

    def __init__(self, cfg: dict, num_classes: int, forget_class: int):
        self.num_classes, self.forget_class = num_classes, forget_class
        self.classifier_path = resolve_path(cfg.get("classifier", "assets/digits-classifier.safetensors"))
        if not self.classifier_path.is_file():
            raise UserError(f"no such classifier weights: {self.classifier_path}")
        self.classifier = load_classifier(self.classifier_path)
        self.forget_samples = int(cfg.get("forget_samples", 100))
        self.per_class = int(cfg.get("samples_per_class", 40))
        self.guidance = float(cfg.get("guidance", 2.0))
        self.steps = int(cfg.get("inference_steps", 20))
        self.seed = int(cfg.get("seed", 0))
        self.fid = bool(cfg.get("fid", True))
        real, real_labels = load_digits_tensors("all")
        self.reference = to_uint8(real[real_labels != forget_class])
        counts = [self.forget_samples if k == forget_class else self.per_class for k in range(num_classes)]
        self.labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])

    def evaluate(self, pipeline, name: str) -> dict:
        images = ddpm.sample(pipeline, self.labels, self.guidance, self.steps, seed=self.seed)
        images_u8 = to_uint8(images)
        predictions = predict(self.classifier, images_u8.float() / 127.5 - 1)
        per_class = per_class_accuracy(predictions, self.labels, self.num_classes)
        result = {
            "fa": forgetting_accuracy(predictions, self.labels, self.forget_class),
            "remaining_accuracy": remaining_accuracy(per_class, self.forget_class),
            "per_class_accuracy": {str(k): v for k, v in per_class.items()},
        }
        if self.fid:
            remaining = self.labels != self.forget_class
            scores = fid_kid(images_u8[remaining], self.reference, DIGITS_EXTRACTOR, self.classifier_path, kid=True)
            result.update(fid=scores["fid"], kid=scores["kid"])
        else:
            result["fid"] = None
        result["grid"] = grid_images(images, self.labels, self.num_classes)
        return result


def grid_images(images: torch.Tensor, labels: torch.Tensor, num_classes: int, rows: int = 8) -> torch.Tensor:
    """rows × num_classes images: column k holds class k."""
    picked = []
    for r in range(rows):
        for k in range(num_classes):
            idx = (labels == k).nonzero().flatten()
            picked.append(images[idx[r % len(idx)]])
    return torch.stack(picked)


def summary_table(metrics: dict) -> str:
    b, a = metrics["before"], metrics["after"]
    rows = [
        (f"FA (class {metrics['forgotten_class']})", b["fa"], a["fa"]),
        ("remaining accuracy", b["remaining_accuracy"], a["remaining_accuracy"]),
        (f"FID (remaining, {b.get('fid_features') or 'digit-CNN features'})", b["fid"] if b["fid"] is not None else "-", a["fid"] if a["fid"] is not None else "-"),
    ]
    line = verdict(b, a, metrics["steps"], fisher_mask=metrics.get("method") == "sfron")
    return format_table(rows, ("metric", "before", "after")) + (f"\n{line}" if line else "")
