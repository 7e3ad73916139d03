"""`erase classifier`: make a classifier forget a random subset of its training set or a whole class.

The settings come from the matching recipe in pipelines/ (digits: tuned for a 2-core CPU; CIFAR-10/100,
SVHN and image folders: the paper's ResNet-18 defaults); the options below override it.
"""

from __future__ import annotations

from pathlib import Path

from erase.commands.common import add_mixed_precision, positive_float, positive_int

TORCHVISION_SETS = ("cifar10", "cifar100", "svhn")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "classifier", help="unlearn a random subset or a class from a classifier; UA/RA/TA/MIA and the gap to retraining"
    )
    parser.add_argument("--dataset", required=True, metavar="digits|cifar10|cifar100|svhn|PATH",
                        help="sklearn digits (always there), a torchvision-format set under --data-root, "
                             "or an image folder with train/ and test/ sub-folders")
    parser.add_argument("--forget", required=True, choices=["random", "class"], help="what to forget")
    parser.add_argument("--fraction", type=positive_float, default=None,
                        help="share of the training set to forget with --forget random (default 0.1)")
    parser.add_argument("--forget-class", type=int, default=None, help="class index to forget with --forget class")
    parser.add_argument("--method", choices=["sfron", "ft", "ga", "rl", "salun"], default="sfron",
                        help="SFR-on or a baseline; they share one loop and differ in loss and mask (default sfron)")
    parser.add_argument("--steps", type=positive_int, default=None, help="unlearning steps (default: the recipe's)")
    parser.add_argument("--retrain", action="store_true",
                        help="also train a model without the forget set and report the gap to it")
    parser.add_argument("--retrained", default=None, metavar="PATH",
                        help="a model already retrained without the forget set (safetensors), instead of --retrain")
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="the trained classifier to unlearn from (safetensors); default: train one first")
    parser.add_argument("--data-root", default=None, help="folder holding the torchvision-format dataset files")
    parser.add_argument("--image-size", type=positive_int, default=None, help="resize + center-crop image folders")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random split and of the loop")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe value, e.g. --set sfron.lr=0.02 (repeatable)")
    parser.add_argument("--out", required=True, help="run folder: metrics.json, model.safetensors, mask, config")
    add_mixed_precision(parser)
    parser.set_defaults(func=run_classifier)


def base_recipe_path(dataset: str, forget: str) -> str:
    """The pipelines/ recipe whose settings a dataset starts from."""
    from erase.recipes import PIPELINES_DIR

    name = dataset.lower() if dataset.lower() in ("digits",) + TORCHVISION_SETS else "cifar10"
    specific = PIPELINES_DIR / f"classifier-{name}-{forget}.toml"
    return str(specific if specific.is_file() else PIPELINES_DIR / f"classifier-{name}-random.toml")


def build_recipe(args) -> dict:
    from erase.errors import UserError
    from erase.recipes import apply_overrides, load_recipe

    dataset = args.dataset
    if dataset.lower() not in ("digits",) + TORCHVISION_SETS and not Path(dataset).is_dir():
        raise UserError(f"--dataset {dataset!r} is neither digits, {', '.join(TORCHVISION_SETS)} nor a folder")
    recipe = load_recipe(base_recipe_path(dataset, args.forget))
    recipe["task"] = args.forget
    data = recipe.setdefault("data", {})
    data["dataset"] = dataset.lower() if dataset.lower() in ("digits",) + TORCHVISION_SETS else dataset
    if args.data_root:
        data["root"] = args.data_root
    if args.image_size:
        data["image_size"] = args.image_size
    forget = recipe.setdefault("forget", {})
    if args.forget == "random":
        if args.forget_class is not None:
            raise UserError("--forget-class goes with --forget class, not --forget random")
        if args.fraction is not None:
            forget["fraction"] = args.fraction
    else:
        if args.fraction is not None:
            raise UserError("--fraction goes with --forget random, not --forget class")
        if args.forget_class is not None:
            forget["class"] = args.forget_class
        elif "class" not in forget:
            raise UserError("--forget class needs --forget-class K")
    recipe.setdefault("method", {})["name"] = args.method
    sfron = recipe.setdefault("sfron", {})
    if args.steps is not None:
        sfron["steps"] = args.steps
    sfron["mixed_precision"] = args.mixed_precision
    if args.seed is not None:
        forget["seed"] = args.seed
        sfron["seed"] = args.seed
    if args.model:
        recipe.setdefault("model", {})["path"] = args.model
    evaluation = recipe.setdefault("eval", {})
    if args.retrain and args.retrained:
        raise UserError("give either --retrain or --retrained PATH, not both")
    if args.retrain:
        evaluation["retrain"] = True
    if args.retrained:
        evaluation["retrained"] = args.retrained
    recipe.setdefault("output", {})["dir"] = args.out
    return apply_overrides(recipe, args.overrides)


def run_classifier(args) -> int:
    from accelerate import PartialState

    from erase.workflows.classifier import run, summary_table
    from erase.workflows.timings import summary_line

    recipe = build_recipe(args)
    metrics = run(recipe)
    if not PartialState().is_main_process:
        return 0  # under accelerate launch the main process reports
    print(summary_table(metrics))
    gap = f", average gap to retraining {100 * metrics['avg_gap']:.2f} points" if "avg_gap" in metrics else ""
    print(f"{metrics['method']}: {metrics['steps']} steps in {metrics['seconds']:.1f} s{gap}; run folder: {args.out}")
    print(summary_line(metrics["timings"]))
    return 0
