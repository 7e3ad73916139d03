"""Forget a class of a loaded class-conditional DDPM, in Python:

    pipe = DiffusionPipeline.from_pretrained("assets/digits-ddpm", trust_remote_code=True)
    result = erase.ddpm.forget_class(pipe, 3)
    pipe.save_pretrained("erased")

The same forgetting as `erase ddpm` (erase.workflows.ddpm_class.erase_pipeline), with the same recipe keys.
"""

from __future__ import annotations

from erase.api import ErasureResult, erase_class_pipeline

# Pipelines that bring their own recipe (settings for their size), as `erase demo --family ddpm` uses them;
# any other model starts from `erase ddpm`'s recipe.
BUNDLED_RECIPES = {"assets/digits-ddpm": "pipelines/digits-ddpm-class.toml"}
RECIPE = "pipelines/ddpm-cifar10-class.toml"


def forget_class(pipe, class_id: int, method: str | None = None, steps: int | None = None, *, recipe=None,
                 inplace: bool = True, out_dir=None, show_progress: bool = False, **options) -> ErasureResult:
    """Make `pipe`'s UNet forget class `class_id` while it keeps the others; returns the before/after
    metrics (FA, remaining accuracy, FID), the mask statistics, the loss history and the patch of the
    changed weights.

    pipe: a class-conditional DDPM pipeline (erase's ClassConditionalDDPMPipeline) on any device; erased in
        place, or a copy is (inplace=False).
    method: sfron (default), ga, rl, salun, ft or esd; steps: loop steps (sfron.steps).
    recipe, out_dir, options: as erase.sd.erase_concept; the recipe is by default the bundled model's own
        for assets/digits-ddpm, else `erase ddpm`'s (pipelines/ddpm-cifar10-class.toml: CIFAR-10 on disk, a
        CIFAR-10 classifier), e.g. dataset="generated", eval={"classifier": "my-classifier.safetensors"}.
    """
    from erase.workflows import ddpm_class

    given = {"forget.class": class_id, "method.name": method, "sfron.steps": steps}
    return erase_class_pipeline(ddpm_class, "unet", pipe, (BUNDLED_RECIPES, RECIPE), recipe, given, options, inplace, out_dir,
                                show_progress)
