"""`erase dit --model M --forget-class K|NAME [--data DIR] --steps N --out DIR`: forget an ImageNet class from a DiT.

A shortcut for pipelines/dit-xl-2-imagenet-class.toml (the paper's DiT-XL/2 defaults): real images
from an ImageNet-layout folder when --data is given, the model's own images when not.
"""

from __future__ import annotations

from erase.commands.class_erase import add_model_arguments, add_run_arguments
from erase.dit import RECIPE  # the recipe erase.dit.forget_class starts from too


def register(subparsers) -> None:
    parser = subparsers.add_parser("dit", help="forget one ImageNet class from a DiT (DiT-XL/2 defaults)")
    add_model_arguments(parser, "DiTPipeline folder or hub id (e.g. facebook/DiT-XL-2-256)", "DiT-XL/2")
    parser.add_argument("--forget-class", required=True, help="ImageNet class id (207) or name ('golden retriever')")
    parser.add_argument("--data", default=None,
                        help="ImageNet-layout folder (train/<class>/...); default: self-generated images")
    parser.add_argument("--classifier", default=None, help="ImageNet classifier for FA: torchvision weights file (+ --arch)")
    parser.add_argument("--arch", default=None, help="torchvision architecture of --classifier (e.g. resnet50)")
    parser.add_argument("--fid-reference", default=None, help="real images for FID: ImageNet-layout folder (val/ split)")
    add_run_arguments(parser, RECIPE, "the recipe's", "AdamW learning rate (default 1e-4)",
                      "run folder: model/, metrics.json, grids, loss plot, latents")
    parser.set_defaults(func=run_dit)


def run_dit(args) -> int:
    from erase.commands.class_erase import (
        choose_evaluation,
        class_recipe,
        finish_and_run,
    )

    recipe = class_recipe(args, args.model, "FOLDER|HUB_ID")
    cfg = recipe.setdefault("eval", {})
    choose_evaluation(cfg, args)
    if not cfg.get("fid_reference"):
        cfg["fid"] = False  # DiT's FID needs real ImageNet images of the evaluated classes
    return finish_and_run(recipe, args)
