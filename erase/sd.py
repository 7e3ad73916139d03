"""Erase a concept from a loaded Stable Diffusion pipeline, in Python:

    pipe = StableDiffusionPipeline.from_pretrained("assets/digits-sd")
    result = erase.sd.erase_concept(pipe, forget=["a handwritten seven"], anchor=["a handwritten one"],
                                    remain=["a handwritten three"])
    pipe.save_pretrained("erased")  # a plain diffusers folder

The same erasure as `erase sd` (erase.workflows.sd.erase_pipeline), with the same recipe keys.
"""

from __future__ import annotations

from erase.api import GIVEN, ErasureResult, base_recipe, copy_pipeline, paused, work_folder
from erase.recipes import apply_options

# Pipelines that bring their own recipe (settings for their size), as `erase sd --model` uses them.
BUNDLED_RECIPES = {"assets/digits-sd": "pipelines/digits-sd-concept.toml"}
SDXL_RECIPE = "pipelines/sdxl-nudity.toml"  # SDXL's size, guidance and memory settings


def erase_concept(pipe, forget=None, anchor=None, remain=None, method: str | None = None, steps: int | None = None,
                  num_images: int | None = None, *, recipe=None, inplace: bool = True, out_dir=None,
                  show_progress: bool = False, on_step=None, **options) -> ErasureResult:
    """Erase the concept the `forget` prompts name from `pipe`'s UNet, mapped to the `anchor` prompts,
    keeping what the `remain` prompts draw; returns the before/after metrics, the mask statistics, the
    loss history and the patch of the changed weights.

    pipe: a StableDiffusionPipeline (or StableDiffusionXLPipeline) on any device, in its own dtype; it is
        erased in place, or a copy is (inplace=False; the copy shares the frozen components).
    method: sfron (default), ga, rl, salun or esd; steps: loop steps (sfron.steps); num_images: forget
        images, and as many remain images, the model generates (data.num_images).
    recipe: the recipe the call starts from, a dict or a TOML file; by default the pipeline's own when it
        is a bundled model (assets/digits-sd), pipelines/sdxl-nudity.toml for an SDXL pipeline (as
        `erase sd`), else the paper's SD settings (erase.workflows.sd.Recipe).
    options: any other recipe key, by its name where one section alone has it (lr=3e-4, gamma=2.0), as a
        section (data={"seed": 1}) or dotted (**{"eval.samples": 0}); checked as a recipe is.
    out_dir: keeps the generated sets, samples, Fisher diagonals and mask (default: a temporary folder).
    on_step(step, unet, record): called after each loop step.
    """
    from diffusers import StableDiffusionXLPipeline

    from erase.workflows.sd import Recipe, Settings, erase_pipeline

    default = SDXL_RECIPE if isinstance(pipe, StableDiffusionXLPipeline) else None
    table = base_recipe(pipe, BUNDLED_RECIPES, recipe, default=default)
    if method not in (None, "sfron"):
        table.get("method", {}).pop("forget_loss", None)  # each method's own, as with `erase sd --method`
    for section, prompts in (("forget", forget), ("remain", remain)):
        if prompts is not None:
            table.get(section, {}).pop("prompts_file", None)
    given = {"forget.prompts": forget, "forget.anchor": anchor, "remain.prompts": remain, "method.name": method,
             "sfron.steps": steps, "data.num_images": num_images}
    table = apply_options(Recipe, table, {k: v for k, v in given.items() if v is not None} | options, given=GIVEN)
    with work_folder(out_dir) as (folder, kept):
        settings = Settings(table | {"output": {"dir": str(folder)}})  # every mistake is reported here
        target = pipe if inplace else copy_pipeline(pipe, "unet")
        with paused(target):
            result = erase_pipeline(target, settings, show_progress=show_progress, on_step=on_step)
    result.out_dir = kept
    return result
