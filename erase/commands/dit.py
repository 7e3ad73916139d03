"""`erase dit --model M --forget-class K|NAME [--data DIR] --steps N --out DIR`: forget an ImageNet class from a DiT.

A shortcut for pipelines/dit-xl-2-imagenet-class.toml (the paper's DiT-XL/2 defaults): real images
from an ImageNet-layout folder when --data is given, the model's own images when not.
"""

from __future__ import annotations

from erase.commands.common import add_mixed_precision, positive_float, positive_int

RECIPE = "pipelines/dit-xl-2-imagenet-class.toml"


def register(subparsers) -> None:
    parser = subparsers.add_parser("dit", help="forget one ImageNet class from a DiT (DiT-XL/2 defaults)")
    parser.add_argument("--model", default=None, help="DiTPipeline folder or hub id (e.g. facebook/DiT-XL-2-256)")
    parser.add_argument("--random-init", action="store_true",
                        help="no checkpoint: the DiT-XL/2 architecture with random weights (speed and memory runs)")
    parser.add_argument("--forget-class", required=True, help="ImageNet class id (207) or name ('golden retriever')")
    parser.add_argument("--data", default=None,
                        help="ImageNet-layout folder (train/<class>/...); default: self-generated images")
    parser.add_argument("--steps", type=positive_int, default=None, help="SFR-on steps (default: the recipe's)")
    parser.add_argument("--method", default=None, choices=["sfron", "ga", "rl", "salun", "ft"])
    parser.add_argument("--lr", type=positive_float, default=None, help="AdamW learning rate (default 1e-4)")
    parser.add_argument("--gamma", type=positive_float, default=None, help="saliency threshold γ (default 1)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="latents per batch")
    parser.add_argument("--classifier", default=None, help="ImageNet classifier for FA: torchvision weights file (+ --arch)")
    parser.add_argument("--arch", default=None, help="torchvision architecture of --classifier (e.g. resnet50)")
    parser.add_argument("--inception-weights", default=None, help="local Inception weights for FID (nothing is downloaded)")
    parser.add_argument("--fid-reference", default=None, help="real images for FID: ImageNet-layout folder (val/ split)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID")
    parser.add_argument("--recipe", default=RECIPE, help=f"recipe to start from (default {RECIPE})")
    parser.add_argument("--seed", type=int, default=None)
    add_mixed_precision(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe value (repeatable)")
    parser.add_argument("--out", required=True, help="run folder: model/, metrics.json, grids, loss plot, latents")
    parser.set_defaults(func=run_dit)


def run_dit(args) -> int:
    from erase.commands.ddpm import choose_evaluation
    from erase.commands.run import run_recipe
    from erase.errors import UserError
    from erase.recipes import apply_overrides, load_recipe, resolve_path

    recipe = load_recipe(resolve_path(args.recipe))
    model = recipe.setdefault("model", {})
    if args.random_init:
        model["random_init"] = True
    elif args.model:
        model["path"], model["random_init"] = args.model, False
    else:
        raise UserError("say which model to erase from: --model FOLDER|HUB_ID (or --random-init for a speed run)")
    recipe.setdefault("forget", {})["class"] = args.forget_class
    data = recipe.setdefault("data", {})
    data["dataset"] = args.data or "generated"
    sfron = recipe.setdefault("sfron", {})
    for key, value in (("steps", args.steps), ("lr", args.lr), ("gamma", args.gamma), ("seed", args.seed)):
        if value is not None:
            sfron[key] = value
    sfron["mixed_precision"] = args.mixed_precision
    if args.batch_size:
        data["batch_size"] = args.batch_size
    if args.method:
        recipe.setdefault("method", {})["name"] = args.method
    cfg = recipe.setdefault("eval", {})
    choose_evaluation(cfg, args, resolve_path)
    if not cfg.get("fid_reference"):
        cfg["fid"] = False  # DiT's FID needs real ImageNet images of the evaluated classes
    recipe.setdefault("output", {})["dir"] = args.out
    recipe = apply_overrides(recipe, args.overrides)
    return run_recipe(recipe)
