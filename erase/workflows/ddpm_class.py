"""Forget one class of a class-conditional DDPM, evaluate before and after, export the erased model.

Recipe sections used: [model] path; [forget] class; [data] dataset ("digits" or "generated"),
batch_size, generated_per_class; [method] name; [sfron] (SFRonConfig fields); [fisher] batches;
[eval] classifier, forget_samples, samples_per_class, guidance, inference_steps; [output] dir.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from erase.core.io import atomic_directory
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
from erase.errors import UserError
from erase.eval.accuracy import (
    forgetting_accuracy,
    per_class_accuracy,
    remaining_accuracy,
)
from erase.eval.fid import DIGITS_EXTRACTOR, fid_kid
from erase.eval.report import format_table, save_grid, save_loss_plot
from erase.eval.verdict import verdict
from erase.families import ddpm
from erase.families.classifier import load_classifier, predict
from erase.recipes import resolve_path
from erase.workflows.records import write_run_records


def run(recipe: dict, show_progress: bool = True) -> dict:
    """Run a class-forgetting recipe end to end; returns the metrics written to metrics.json."""
    started = time.perf_counter()
    forget_class = int(recipe["forget"]["class"])
    spec = user_method(recipe)
    config = sfron_config(recipe)
    out_dir = resolve_output(recipe)
    torch.manual_seed(config.seed)

    pipeline = ddpm.load_or_build_pipeline(recipe["model"])  # a folder/hub id, or random_init for speed runs
    num_classes = pipeline.num_classes
    if not 0 <= forget_class < num_classes:
        raise UserError(f"--forget-class must be in [0, {num_classes - 1}], got {forget_class}")
    evaluator = make_evaluator(recipe, num_classes, forget_class)

    before = evaluator.evaluate(pipeline, "before")
    erase_started = time.perf_counter()
    mask, history, _ = erase_class(recipe, pipeline, spec, config, forget_class, out_dir, show_progress=show_progress)
    stats = mask_stats(mask) if mask is not None else None
    erase_seconds = time.perf_counter() - erase_started

    after = evaluator.evaluate(pipeline, "after")
    with atomic_directory(out_dir / "model") as model_dir:
        pipeline.save_pretrained(model_dir)
    save_grid(before.pop("grid"), out_dir / "grid_before.png", nrow=num_classes)
    save_grid(after.pop("grid"), out_dir / "grid_after.png", nrow=num_classes)
    save_loss_plot(history, out_dir / "loss.png", title=f"{spec.name}: forgetting class {forget_class}")
    metrics = {
        "family": "ddpm",
        "method": spec.name,
        "forgotten_class": forget_class,
        "steps": config.steps,
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_erase": round(erase_seconds, 2),
        "mask_fraction": stats["fraction"] if stats else 1.0,
        "before": before,
        "after": after,
        "history": history,
    }
    write_run_records(out_dir, metrics, stats, recipe)
    return metrics


def resolve_output(recipe: dict) -> Path:
    out_dir = Path(recipe.get("output", {}).get("dir", "runs/ddpm-class"))
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


# The shared METHODS, and ESD: DDPM and DiT have the null class it needs.
CLASS_METHODS = (*METHODS, "esd")


def user_method(recipe: dict):
    """The recipe's method.name as a spec; a bad name or ESD setting stops the run before any work."""
    try:
        spec = method_spec(recipe.get("method", {}).get("name", "sfron"), CLASS_METHODS)
    except ValueError as error:
        raise UserError(f"method.name: {error}") from None
    if spec is ESD:
        negative_guidance(recipe)
    return spec


def sfron_config(recipe: dict) -> SFRonConfig:
    try:
        config = SFRonConfig.from_dict(dict(recipe.get("sfron", {})))
        config.validate()
    except (TypeError, ValueError) as error:
        raise UserError(str(error)) from None
    return config


def training_data(recipe: dict, pipeline) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images with labels, or images the model generates itself (no data needed)."""
    data = recipe.get("data", {})
    dataset = data.get("dataset", "digits")
    if dataset == "digits":
        return load_digits_tensors("train")
    if dataset == "generated":
        per_class = int(data.get("generated_per_class", 64))
        labels = torch.arange(pipeline.num_classes).repeat_interleave(per_class)
        images = ddpm.sample(
            pipeline, labels, guidance_scale=float(data.get("guidance", 2.0)),
            num_inference_steps=int(data.get("inference_steps", 20)), seed=int(data.get("seed", 1234)),
        )
        return images, labels
    # Otherwise an image folder or torchvision-format CIFAR-10 on disk: real images of every class.
    unet_config = pipeline.unet.config
    size = unet_config.sample_size if isinstance(unet_config.sample_size, int) else unet_config.sample_size[0]
    per_class = data.get("images_per_class", 1000)
    return ddpm.real_class_data(
        dataset, pipeline.num_classes, size, unet_config.in_channels, int(per_class) if per_class else None,
        root=data.get("root") or None, seed=int(data.get("seed", 0)),
    )


def erase_class(recipe, pipeline, spec, config, forget_class: int, work_dir: Path, show_progress: bool = True,
                on_step=None):
    """The erase half of a run, in place on pipeline.unet: data, the method's mask, the loop.

    Returns (mask or None, the loop's history, seconds spent building the mask). Benchmarks call
    this too, so what they measure is exactly what `erase run` does.
    """
    unet, scheduler = pipeline.unet, pipeline.scheduler
    images, labels = training_data(recipe, pipeline)
    (f_images, f_labels), (r_images, r_labels) = ddpm.class_split(images, labels, forget_class)
    batch_size = int(recipe.get("data", {}).get("batch_size", 64))
    forget_batches = ddpm.batches(f_images, f_labels, batch_size, config.seed)
    remain_batches = ddpm.batches(r_images, r_labels, batch_size, config.seed + 1)
    loss_fn = ddpm.epsilon_loss(scheduler)

    unet.requires_grad_(True)
    started = time.perf_counter()
    mask = class_mask(spec, recipe, unet, loss_fn, forget_batches, remain_batches, config, work_dir,
                      {"forget_class": forget_class, "data": recipe.get("data", {})}, show_progress)
    mask_seconds = time.perf_counter() - started
    descent = None
    if spec is ESD:
        descent = esd_loss(recipe, unet, scheduler)
    elif spec.forget == "descent":
        descent = ddpm.class_mapping_loss(scheduler, pipeline.num_classes)
    objective = forget_objective(spec, loss_fn, config.temperature, descent)
    history = unlearn(unet, objective, loss_fn, forget_batches, remain_batches, config, mask=mask,
                      on_step=on_step, show_progress=show_progress)
    unet.requires_grad_(False)
    return mask, history, mask_seconds


def class_mask(spec, recipe, model, loss_fn, forget_batches, remain_batches, config, out_dir: Path, data: dict,
               show_progress: bool = True):
    """The method's mask (erase.core.methods), saved in OUT; the Fisher is cached in OUT under a key of
    the trained weights, `data` (the forgotten class and data settings), batches and seed, so
    `fisher.reuse` reads back only diagonals computed for this very run (e.g. by `erase fisher`)."""
    fisher_cfg = recipe.get("fisher", {})
    cache = FisherCache(out_dir, fisher_key(model, data, int(fisher_cfg.get("batches", 8)), config.seed),
                        reuse=bool(fisher_cfg.get("reuse", False)))
    mask, _ = method_mask(spec, model, loss_fn, forget_batches, remain_batches, config.gamma,
                          fisher_batches=int(fisher_cfg.get("batches", 8)),
                          salun_fraction=float(fisher_cfg.get("salun_fraction", 0.5)), seed=config.seed, cache=cache,
                          show_progress=show_progress)
    if mask is not None:
        save_mask(mask, out_dir / "mask.safetensors", metadata={"method": spec.name, "gamma": str(config.gamma)})
    return mask


def fisher_key(model, data: dict, batches: int, seed: int) -> dict:
    """What a class workflow's Fisher diagonals are computed from (`erase fisher` writes the same key)."""
    return {"weights": weights_fingerprint(model), **data, "batches": batches, "seed": seed}


def negative_guidance(recipe: dict) -> float:
    """ESD's η: method.negative_guidance, 1 by default (as in ESD)."""
    value = recipe.get("method", {}).get("negative_guidance", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"method.negative_guidance must be a number > 0, got {value!r}")
    return float(value)


def esd_loss(recipe: dict, unet, scheduler):
    """ESD's loss: towards a frozen copy's negatively guided prediction, the model's null class as ∅."""
    teacher = copy.deepcopy(unet).requires_grad_(False).eval()
    null_class = unet.config.num_class_embeds - 1
    return ddpm.class_esd_loss(scheduler, teacher, null_class, negative_guidance(recipe))


def make_evaluator(recipe: dict, num_classes: int, forget_class: int):
    """[eval] kind = "digits" (the bundled digit CNN; the default) or "classifier": a classifier the user
    supplies (eval.classifier), FID of the remaining classes against real images of the dataset."""
    cfg = recipe.get("eval", {})
    if cfg.get("kind", "digits") == "digits":
        return Evaluator(recipe, num_classes, forget_class)
    if cfg["kind"] != "classifier":
        raise UserError(f"eval.kind must be digits or classifier, got {cfg['kind']!r}")
    from erase.eval.class_forgetting import ClassForgettingEvaluator, load_reference

    data = recipe.get("data", {})
    source = cfg.get("fid_reference") or (data.get("dataset") if data.get("dataset") not in ("digits", "generated") else None)
    reference = None
    if source and cfg.get("fid", True):
        reference = load_reference(source, forget_class, int(cfg.get("reference_images", 10000)), None,
                                   root=cfg.get("fid_reference_root") or data.get("root") or None,
                                   split=cfg.get("fid_reference_split", "train"))
    guidance, steps = float(cfg.get("guidance", 2.0)), int(cfg.get("inference_steps", 100))
    batch_size = int(cfg.get("batch_size", 500))

    def generate(pipeline, labels, seed):
        return ddpm.sample(pipeline, labels, guidance, steps, seed=seed, batch_size=batch_size)

    return ClassForgettingEvaluator(cfg, num_classes, forget_class, generate, reference)


class Evaluator:
    """Generates images of every class with fixed seeds and scores them with the digit classifier."""

    def __init__(self, recipe: dict, num_classes: int, forget_class: int):
        cfg = recipe.get("eval", {})
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
