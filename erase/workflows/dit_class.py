"""Forget one ImageNet class of a DiT (DiTPipeline), evaluate before and after, export the erased pipeline.

Same shape as the DDPM class workflow (and its settings sections and mask helper): only the
transformer is unlearned; the VAE stays frozen and encodes the forget/remain images once into cached
latents. The recipe (pipelines/dit-xl-2-imagenet-class.toml) is read into `Settings`: [model],
[forget] class (id or name), [data], [method], [sfron], [fisher], [eval] (+ classes), [output].
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from torch.utils.data import TensorDataset

from erase.api import ErasureResult
from erase.core.io import atomic_save_tensors, read_tensors
from erase.core.methods import ESD, forget_objective
from erase.core.sharding import draw_rows
from erase.core.saliency import mask_stats
from erase.core.sfron import SFRonConfig, unlearn
from erase.data.loader import loader
from erase.errors import UserError
from erase.eval.report import format_table, save_grid
from erase.eval.verdict import verdict
from erase.families import ddpm, dit
from erase.families.diffusion import cast
from erase.recipes import key, read_settings
from erase.workflows.ddpm_class import ClassMethod, Eval, Fisher, class_mask, process_accelerator
from erase.workflows.records import finish_class_run
from erase.workflows.settings import Output
from erase.workflows.timings import PhaseTimer

# Classes shown and scored besides the forgotten one (the official visualisation classes).
DEFAULT_EVAL_CLASSES = [207, 360, 387, 972, 89, 979, 417, 279, 270, 980]


@dataclass
class Model:
    path: str = key("")  # a DiTPipeline folder or hub id
    device: str = key("")  # "auto": the GPU when there is one; empty: the CPU
    random_init: bool = key(False)
    preset: str = key("DiT-XL/2", choices=tuple(dit.PRESETS))


@dataclass
class Forget:
    forget_class: int | str | None = key(None, name="class")  # an ImageNet id or a class name


@dataclass
class Data:
    dataset: str = key("generated")  # or an ImageNet-layout folder
    forget_images: int = key(1300, low=1)
    remain_images: int = key(5000, low=1)
    generated_forget: int = key(256, low=1)
    generated_remain: int = key(1024, low=1)
    generated_remain_classes: int = key(100, low=1)
    remain_classes: list[int] = key(factory=list, low=0, high=dit.NULL_CLASS - 1)
    guidance: float = key(4.0, low=0)
    inference_steps: int = key(50, low=1)
    sample_batch_size: int = key(32, low=1)
    batch_size: int = key(1, low=1)
    reuse_latents: bool = key(False)
    seed: int = key(0, low=0)


@dataclass
class DiTEval(Eval):
    classes: list[int] | None = key(low=0, high=dit.NULL_CLASS - 1)


@dataclass
class Settings:
    """A DiT class recipe, typed: every key it may hold, its type and range."""

    family: str = key("dit")
    task: str = key("class")
    model: Model = key(factory=Model)
    forget: Forget = key(factory=Forget)
    data: Data = key(factory=Data)
    method: ClassMethod = key(factory=ClassMethod)
    sfron: SFRonConfig = key(factory=SFRonConfig)
    fisher: Fisher = key(factory=Fisher)
    eval: DiTEval = key(factory=DiTEval)
    output: Output = key(factory=Output)


def run(recipe: dict, show_progress: bool = True) -> dict:
    """Run a DiT class-forgetting recipe end to end: load the model, forget the class (erase_pipeline, as
    erase.dit.forget_class does), export the pipeline, write the records; returns the metrics written to
    metrics.json."""
    started = time.perf_counter()
    timer = PhaseTimer()
    settings = read_settings(Settings, recipe)
    out_dir = settings.output.folder("runs/dit-class")
    if settings.forget.forget_class is None:
        raise UserError("the recipe has no forget.class")
    torch.manual_seed(settings.sfron.seed)

    pipeline = dit.load_or_build_pipeline(asdict(settings.model))
    result = erase_pipeline(pipeline, settings, out_dir, timer, show_progress)
    title = f"{result.metrics['method']}: forgetting ImageNet class {result.metrics['forgotten_class']}"
    return finish_class_run(pipeline, result, out_dir, recipe, timer, started, settings.sfron.steps, title)


def erase_pipeline(pipeline, settings: Settings, out_dir: Path, timer: PhaseTimer | None = None,
                   show_progress: bool = True) -> ErasureResult:
    """The forgetting of a run, in place on a loaded DiTPipeline's transformer: the before evaluation, the
    cached latents, the mask, the loop, the after evaluation, with both grids drawn in `out_dir`.
    `erase dit` and erase.dit.forget_class both run it; the pipeline works on its own device."""
    started = time.perf_counter()
    timer = timer or PhaseTimer()
    spec, config = settings.method.spec, settings.sfron
    accelerator = process_accelerator(pipeline, config, settings.data.batch_size)
    main = accelerator.is_main_process  # evaluates and writes; the others share generation, Fisher and loop
    forget_class = dit.class_id(pipeline, settings.forget.forget_class)
    transformer = pipeline.transformer
    data = asdict(settings.data)
    dataset = open_training_folder(settings.data.dataset, pipeline, forget_class)  # bad data fails before any work
    evaluator = make_evaluator(settings.eval, pipeline, forget_class)
    out_dir.mkdir(parents=True, exist_ok=True)

    with timer("evaluate"):
        before = evaluator.evaluate(pipeline, "before") if main else None
    erase_started = time.perf_counter()
    with timer("generate" if dataset is None else "encode"):  # generated chunks are encoded as they come
        (f_latents, f_labels), (r_latents, r_labels) = cached_latents(data, pipeline, forget_class, out_dir, dataset)
    forget_batches = loader(TensorDataset(f_latents, f_labels), settings.data.batch_size, config.seed)
    remain_batches = loader(TensorDataset(r_latents, r_labels), settings.data.batch_size, config.seed + 1)
    loss_fn = dit.epsilon_loss(pipeline.scheduler)

    transformer.requires_grad_(True)
    dropout = dit.set_label_dropout(transformer, 0.0)  # always condition on the real class
    dtype = cast(transformer, torch.float32)  # half precision: trained in float32, given back in its dtype
    try:
        key_data = {k: v for k, v in data.items() if k != "reuse_latents"}
        with timer("fisher"):
            mask = class_mask(spec, settings.fisher, transformer, loss_fn, forget_batches, remain_batches, config,
                              out_dir, {"forget_class": forget_class, "data": key_data}, show_progress, accelerator)
        stats = mask_stats(mask) if mask is not None else None
        descent = None
        if spec is ESD:  # the frozen copy is taken now: the original weights, label dropout off
            teacher = copy.deepcopy(transformer).requires_grad_(False).eval()
            descent = dit.class_esd_loss(pipeline.scheduler, teacher, settings.method.negative_guidance)
        objective = forget_objective(spec, loss_fn, config.temperature, descent, relabel=other_classes)
        with timer("loop"):
            history = unlearn(transformer, objective, loss_fn, forget_batches, remain_batches, config, mask=mask,
                              accelerator=accelerator, show_progress=show_progress)
    finally:
        dit.restore_label_dropout(transformer, dropout)
        cast(transformer.requires_grad_(False), dtype)
    transformer.eval()
    erase_seconds = time.perf_counter() - erase_started

    with timer("evaluate"):
        after = evaluator.evaluate(pipeline, "after") if main else None
        if main:
            save_grid(before.pop("grid"), out_dir / "grid_before.png", nrow=evaluator.grid_columns, scale=1)
            save_grid(after.pop("grid"), out_dir / "grid_after.png", nrow=evaluator.grid_columns, scale=1)
    accelerator.wait_for_everyone()
    metrics = {
        "family": "dit",
        "method": spec.name,
        "forgotten_class": forget_class,
        "forgotten_class_name": dit.class_name(pipeline, forget_class),
        "steps": config.steps,
        "processes": accelerator.num_processes,
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_erase": round(erase_seconds, 2),
        "timings": timer.timings(config.steps),
        "mask_fraction": stats["fraction"] if stats else 1.0,
        "forget_latents": len(f_labels),
        "remain_latents": len(r_labels),
        "before": before,
        "after": after,
        "history": history,
    }
    return ErasureResult(pipeline, metrics, history, stats, mask)


def other_classes(batch):
    """RL/SalUn on DiT (no class-mapping loss): train the forget latents under uniformly drawn other labels."""
    latents, labels = batch
    shift = draw_rows(lambda n: torch.randint(1, dit.NULL_CLASS, (n,), device=labels.device), len(labels))
    return latents, (labels + shift) % dit.NULL_CLASS


def make_evaluator(settings: DiTEval, pipeline, forget_class: int):
    """FA/accuracy with the user's ImageNet classifier on generated images of the forgotten class and of
    `eval.classes`; FID of those classes against real images (eval.fid_reference, an ImageNet-layout folder)."""
    from erase.eval.class_forgetting import ClassForgettingEvaluator, load_reference

    cfg = settings.given()
    eval_classes = [int(k) for k in cfg.get("classes", DEFAULT_EVAL_CLASSES)]
    size = dit.image_size(pipeline)
    reference = None
    if cfg.get("fid_reference") and cfg.get("fid", True):
        dataset = dit.imagenet_folder(cfg["fid_reference"], split=cfg.get("fid_reference_split", "val"), size=size)
        reference = load_reference(dataset, forget_class, int(cfg.get("reference_images", 5000)), size,
                                   classes=[k for k in eval_classes if k != forget_class])
    guidance, steps = float(cfg.get("guidance", 4.0)), int(cfg.get("inference_steps", 50))
    batch_size = int(cfg.get("batch_size", 32))

    def generate(pipe, labels, seed):
        return dit.sample(pipe, labels, guidance, steps, seed=seed, batch_size=batch_size)

    return ClassForgettingEvaluator(cfg, dit.NULL_CLASS, forget_class, generate, reference, eval_classes)


def open_training_folder(source: str, pipeline, forget_class: int):
    """The ImageNet-layout folder of real forget/remain images (None: self-generated), checked early."""
    if source == "generated":
        return None
    dataset = dit.imagenet_folder(source, split="train", size=dit.image_size(pipeline))
    targets = torch.as_tensor(dataset.targets)
    if not (targets == forget_class).any():
        raise UserError(f"{source} has no images of class {forget_class}")
    if (targets == forget_class).all():
        raise UserError(f"{source} has no images of other classes than {forget_class} (the remain set)")
    return dataset


def cached_latents(data: dict, pipeline, forget_class: int, out_dir: Path, dataset=None):
    """((forget latents, labels), (remain latents, labels)), encoded once by the VAE and kept in
    OUT/latents.safetensors; `data.reuse_latents = true` reads them back when they match the recipe."""
    path = out_dir / "latents.safetensors"
    settings = {k: v for k, v in data.items() if k not in ("reuse_latents", "batch_size")}
    key = json.dumps({"forget_class": forget_class, "size": dit.image_size(pipeline), **settings}, sort_keys=True)
    if data.get("reuse_latents", False) and path.exists():
        try:
            t, metadata = read_tensors(path, "cached latents")
        except UserError:  # damaged: encoded again below
            t, metadata = {}, {}
        if metadata.get("key") == key:
            return (t["forget_latents"], t["forget_labels"]), (t["remain_latents"], t["remain_labels"])
    (f_latents, f_labels), (r_latents, r_labels) = training_latents(data, pipeline, forget_class, dataset)
    tensors = {"forget_latents": f_latents, "forget_labels": f_labels, "remain_latents": r_latents,
               "remain_labels": r_labels}
    if PartialState().is_main_process:
        atomic_save_tensors({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"key": key})
    return (f_latents, f_labels), (r_latents, r_labels)


def training_latents(data: dict, pipeline, forget_class: int, dataset=None):
    """Latents of forget images (the class) and remain images (other classes): real ones from an
    ImageNet-layout folder, or the model's own guided samples. Images are made and encoded chunk by
    chunk, so thousands of 256×256 images never sit in memory at once."""
    seed = int(data.get("seed", 0))
    generator = torch.Generator().manual_seed(seed)
    chunk = int(data.get("sample_batch_size", 32))
    source = str(data.get("dataset", "generated"))
    if source == "generated":
        classes = data.get("remain_classes") or None
        if classes is None:
            others = torch.tensor([k for k in range(dit.NULL_CLASS) if k != forget_class])
            count = int(data.get("generated_remain_classes", 100))
            classes = others[torch.randperm(len(others), generator=generator)[:count]].tolist()
        classes = torch.as_tensor([int(k) for k in classes if int(k) != forget_class])
        n_forget, n_remain = int(data.get("generated_forget", 256)), int(data.get("generated_remain", 1024))
        f_labels = torch.full((n_forget,), forget_class)
        r_labels = classes[torch.arange(n_remain) % len(classes)]
        guidance, steps = float(data.get("guidance", 4.0)), int(data.get("inference_steps", 50))

        def images_for(labels, offset):
            return lambda i, part: dit.sample(pipeline, labels[part], guidance, steps, seed=seed + offset + i,
                                              batch_size=chunk)

        return ((encode_in_chunks(pipeline, images_for(f_labels, 100), len(f_labels), chunk, seed), f_labels),
                (encode_in_chunks(pipeline, images_for(r_labels, 100_000), len(r_labels), chunk, seed + 1), r_labels))
    from erase.data.images import dataset_labels, load_class_tensors

    dataset = dataset or open_training_folder(str(data.get("dataset", "generated")), pipeline, forget_class)
    labels = dataset_labels(dataset)
    forget_idx = ddpm.pick_per_class(labels, int(data.get("forget_images", 1300)), seed, classes=[forget_class])
    other = (labels != forget_class).nonzero().flatten()
    remain_idx = other[torch.randperm(len(other), generator=generator)[: int(data.get("remain_images", 5000))]]
    remain_idx = remain_idx.sort().values

    def images_at(indices):
        return lambda i, part: load_class_tensors(dataset, indices[part])[0]

    return ((encode_in_chunks(pipeline, images_at(forget_idx), len(forget_idx), chunk, seed), labels[forget_idx]),
            (encode_in_chunks(pipeline, images_at(remain_idx), len(remain_idx), chunk, seed + 1), labels[remain_idx]))


def encode_in_chunks(pipeline, make_images, count: int, chunk: int, seed: int) -> torch.Tensor:
    """Latents of `count` images; make_images(i, slice) gives chunk i as [-1, 1] images. Each chunk is
    seeded by its index, so under several processes the chunks are split between them and gathered."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = PartialState()
    out = []
    with state.split_between_processes(list(enumerate(range(0, count, chunk)))) as mine:
        for i, start in tqdm(mine, desc="encoding latents", leave=False, disable=not state.is_local_main_process):
            images = make_images(i, slice(start, start + chunk))
            out.append(dit.encode(pipeline.vae, images, batch_size=chunk, seed=seed * 1_000_003 + i))
    return torch.cat(gather_object(out) if state.num_processes > 1 else out)


def summary_table(metrics: dict) -> str:
    b, a = metrics["before"], metrics["after"]
    name = f" {metrics['forgotten_class_name']}" if metrics.get("forgotten_class_name") else ""

    def cell(value):
        return "-" if value is None else value

    rows = [
        (f"FA (class {metrics['forgotten_class']}{name})", cell(b["fa"]), cell(a["fa"])),
        ("remaining accuracy", cell(b["remaining_accuracy"]), cell(a["remaining_accuracy"])),
        (f"FID (remaining, {b.get('fid_features') or 'none'})", cell(b["fid"]), cell(a["fid"])),
    ]
    line = verdict(b, a, metrics["steps"], fisher_mask=metrics.get("method") == "sfron")
    return format_table(rows, ("metric", "before", "after")) + (f"\n{line}" if line else "")
