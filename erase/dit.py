"""Forget an ImageNet class of a loaded DiT, in Python:

    pipe = DiTPipeline.from_pretrained("facebook/DiT-XL-2-256")
    result = erase.dit.forget_class(pipe, "golden retriever")
    pipe.save_pretrained("erased")

The same forgetting as `erase dit` (erase.workflows.dit_class.erase_pipeline), with the same recipe keys.
"""

from __future__ import annotations

from erase.api import ErasureResult, erase_class_pipeline

RECIPE = "pipelines/dit-xl-2-imagenet-class.toml"  # `erase dit`'s: the official DiT-XL/2 settings


def forget_class(pipe, class_id_or_name: int | str, method: str | None = None, steps: int | None = None, *,
                 recipe=None, inplace: bool = True, out_dir=None, show_progress: bool = False,
                 **options) -> ErasureResult:
    """Make `pipe`'s transformer forget an ImageNet class, by id (207) or by a name of the pipeline's
    id2label ("golden retriever", as DiTPipeline.get_label_ids takes it); returns the before/after
    metrics, the mask statistics, the loss history and the patch of the changed weights.

    pipe: a DiTPipeline on any device; erased in place, or a copy is (inplace=False).
    method: sfron (default), ga, rl, salun, ft or esd; steps: loop steps (sfron.steps).
    recipe, out_dir, options: as erase.sd.erase_concept; the recipe is by default `erase dit`'s (RECIPE: the
        model generates its own forget and remain images), e.g. eval={"classifier": "resnet50-imagenet.pth"}.
    """
    from erase.workflows import dit_class

    given = {"forget.class": class_id_or_name, "method.name": method, "sfron.steps": steps}
    return erase_class_pipeline(dit_class, "transformer", pipe, ({}, RECIPE), recipe, given, options, inplace, out_dir,
                                show_progress)
