"""`erase ddpm --model M --forget-class K [--data DIR] --steps N --out DIR`: forget a class from a DDPM.

A shortcut for pipelines/ddpm-cifar10-class.toml (the paper's CIFAR-10 defaults): real images of
every class when --data is given, the model's own images (guidance 3.0: the official cond_scale 2) when not.
"""

from __future__ import annotations

from pathlib import Path

from erase.commands.class_erase import add_model_arguments, add_run_arguments
from erase.ddpm import RECIPE  # the recipe erase.ddpm.forget_class starts from too


def register(subparsers) -> None:
    parser = subparsers.add_parser("ddpm", help="forget one class from a class-conditional DDPM (CIFAR-10 defaults)")
    add_model_arguments(parser, "diffusers folder (or an `erase pretrain ddpm` run folder)", "CIFAR-10")
    parser.add_argument("--forget-class", type=int, required=True, help="class id to forget")
    parser.add_argument("--data", default=None,
                        help="real images: an image folder or 'cifar10' on disk; default: self-generated images")
    parser.add_argument("--data-root", default=None, help="where torchvision-format cifar10 lives (default data/cifar10)")
    parser.add_argument("--classifier", default=None,
                        help="FA classifier: `erase pretrain classifier` output, or torchvision weights with --arch")
    parser.add_argument("--arch", default=None, help="torchvision architecture of a plain --classifier weights file")
    parser.add_argument("--fid-reference", default=None, help="real images for FID (default: --data)")
    add_run_arguments(parser, RECIPE, "50", "Adam learning rate (default 1e-4)",
                      "run folder: model/, metrics.json, grids, loss plot")
    parser.set_defaults(func=run_ddpm)


def run_ddpm(args) -> int:
    from erase.commands.class_erase import (
        choose_evaluation,
        class_recipe,
        finish_and_run,
    )

    check_data_source(args.data)
    recipe = class_recipe(args, str(model_folder(args.model)) if args.model else None, "FOLDER")
    if args.data_root:
        recipe["data"]["root"] = args.data_root
    choose_evaluation(recipe.setdefault("eval", {}), args)
    return finish_and_run(recipe, args)


def model_folder(path) -> Path:
    """A diffusers folder, or a run folder of `erase pretrain ddpm` holding one in model/."""
    path = Path(path)
    if not (path / "model_index.json").exists() and (path / "model" / "model_index.json").exists():
        return path / "model"
    return path


def check_data_source(source) -> None:
    """A missing dataset fails at once, not after the first evaluation."""
    from erase.data.images import TORCHVISION_SETS
    from erase.errors import UserError

    if source and str(source).lower() not in TORCHVISION_SETS and not Path(source).is_dir():
        raise UserError(f"no such dataset folder: {source} (or name one of {', '.join(TORCHVISION_SETS)})")
