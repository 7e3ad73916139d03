"""What the Python entry points on loaded pipelines (erase.sd, erase.ddpm, erase.dit) share: the result
they return, the recipe their options fill, the work folder, and a pipeline's copy."""

from __future__ import annotations

import copy
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from erase.recipes import load_recipe, resolve_path

if TYPE_CHECKING:
    import torch

# Sections an entry point fills itself: the model is the pipeline it is handed, the run folder `out_dir`.
GIVEN = ("model", "output", "family", "task")


@dataclass
class ErasureResult:
    """What an erasure on a loaded pipeline returns; the pipeline itself is erased (or its copy)."""

    pipeline: object  # the erased pipeline: the one given, or with inplace=False its copy
    metrics: dict  # before/after figures, what was erased and how, timings (as a run's metrics.json)
    history: list[dict]  # one record per loop step (losses, α_f, lr, ...)
    mask_stats: dict | None = None  # share of weights the mask lets change, per layer (None: no mask)
    mask: dict[str, torch.Tensor] | None = None
    patch: dict[str, torch.Tensor] = field(default_factory=dict)  # the changed weights (erase.patch format)
    patch_metadata: dict[str, str] = field(default_factory=dict)
    out_dir: Path | None = None  # the work folder kept (out_dir=), None when it was a temporary one

    def save_patch(self, path) -> Path:
        """Write the patch file that `erase patch apply BASE PATCH OUT` applies to the base model."""
        from erase.patch import write_patch

        return write_patch(self.patch, self.patch_metadata, path)


def base_recipe(pipe, bundled: dict, recipe=None, default=None) -> dict:
    """The recipe a call starts from: `recipe` (a dict or a TOML file), else the pipeline's own when it is a
    bundled model (`bundled`: folder -> recipe), else `default` (none: the settings' defaults); its model is
    the pipeline."""
    if recipe is None:
        recipe = next((path for folder, path in bundled.items() if same_path(pipeline_name(pipe), folder)), default or {})
    table = load_recipe(resolve_path(recipe)) if isinstance(recipe, (str, Path)) else copy.deepcopy(recipe)
    for section in GIVEN:
        table.pop(section, None)
    return table | {"model": {"path": pipeline_name(pipe)}}


def pipeline_name(pipe) -> str:
    """Where the pipeline was loaded from (`from_pretrained`'s argument), or what it is when built in memory."""
    return str(pipe.name_or_path or f"(a {type(pipe).__name__} built in memory)")


def same_path(a: str, b: str) -> bool:
    return resolve_path(a).resolve() == resolve_path(b).resolve()


@contextmanager
def work_folder(out_dir):
    """`out_dir` (kept), or a temporary folder removed afterwards; yields (folder, the kept one or None)."""
    if out_dir is not None:
        yield Path(out_dir), Path(out_dir)
        return
    with tempfile.TemporaryDirectory(prefix="erase-") as folder:
        yield Path(folder), None


@contextmanager
def paused(pipe):
    """Within the block the pipeline draws its training and evaluation images as `erase` loads pipelines:
    no safety checker (it blacks out images of the very concept being erased), no invisible watermark
    (SDXL), no progress bars."""
    checker, entry = getattr(pipe, "safety_checker", None), pipe.config.get("safety_checker")
    watermark = getattr(pipe, "watermark", None)
    bars = dict(getattr(pipe, "_progress_bar_config", {}))
    if checker is not None:
        pipe.safety_checker = None
    if watermark is not None:
        pipe.watermark = None
    pipe.set_progress_bar_config(disable=True)
    try:
        yield pipe
    finally:
        if checker is not None:
            pipe.safety_checker = checker
            pipe.register_to_config(safety_checker=entry)  # what save_pretrained writes
        if watermark is not None:
            pipe.watermark = watermark
        pipe._progress_bar_config = bars


def copy_pipeline(pipe, trained: str):
    """A pipeline that shares the frozen components of `pipe` and owns copies of `trained` and the scheduler."""
    memo = {id(module): module for name, module in pipe.components.items()
            if name not in (trained, "scheduler") and module is not None}
    return copy.deepcopy(pipe, memo)


def erase_class_pipeline(workflow, trained: str, pipe, recipes: tuple[dict, str], recipe, given: dict, options: dict,
                         inplace: bool, out_dir, show_progress: bool) -> ErasureResult:
    """What erase.ddpm.forget_class and erase.dit.forget_class share: the call's recipe, checked before any
    work; the pipeline or its copy; the work folder; the workflow's erase_pipeline; the patch of `trained`.
    `recipes`: (the bundled models' own recipes, the command's recipe for any other model)."""
    import torch

    from erase.patch import patch_of
    from erase.recipes import apply_options, read_settings

    forget = {"forget.class": given.pop("forget.class")}  # None is refused by the recipe check, not dropped
    bundled, default = recipes
    table = apply_options(workflow.Settings, base_recipe(pipe, bundled, recipe, default),
                          {k: v for k, v in given.items() if v is not None} | forget | options, given=GIVEN)
    settings = read_settings(workflow.Settings, table)
    target = pipe if inplace else copy_pipeline(pipe, trained)
    base = weights(getattr(target, trained))
    torch.manual_seed(settings.sfron.seed)  # as a run seeds before it loads the model
    with work_folder(out_dir) as (folder, kept), paused(target):
        result = workflow.erase_pipeline(target, settings, folder, show_progress=show_progress)
    result.patch, result.patch_metadata, _ = patch_of(base, weights(getattr(target, trained)), pipeline_name(pipe),
                                                      component=trained)
    result.out_dir = kept
    return result


def weights(module) -> dict:
    """A module's weights, copied to the CPU in their dtype."""
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in module.state_dict().items()}
