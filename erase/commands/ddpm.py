"""`erase ddpm --model M --forget-class K [--data DIR] --steps N --out DIR`: forget a class from a DDPM.

A shortcut for pipelines/ddpm-cifar10-class.toml (the paper's CIFAR-10 defaults): real images of
every class when --data is given, the model's own images (guidance 2.0) when not.
"""

from __future__ import annotations

from pathlib import Path

from erase.commands.common import add_mixed_precision, positive_float, positive_int

RECIPE = "pipelines/ddpm-cifar10-class.toml"


def register(subparsers) -> None:
    parser = subparsers.add_parser("ddpm", help="forget one class from a class-conditional DDPM (CIFAR-10 defaults)")
    parser.add_argument("--model", default=None, help="diffusers folder (or an `erase pretrain ddpm` run folder)")
    parser.add_argument("--random-init", action="store_true",
                        help="no checkpoint: the CIFAR-10 architecture with random weights (speed and memory runs)")
    parser.add_argument("--forget-class", type=int, required=True, help="class id to forget")
    parser.add_argument("--data", default=None,
                        help="real images: an image folder or 'cifar10' on disk; default: self-generated images")
    parser.add_argument("--data-root", default=None, help="where torchvision-format cifar10 lives (default data/cifar10)")
    parser.add_argument("--steps", type=positive_int, default=None, help="SFR-on steps (default 50)")
    parser.add_argument("--method", default=None, choices=["sfron", "ga", "rl", "salun", "ft"])
    parser.add_argument("--lr", type=positive_float, default=None, help="learning rate (default 1e-4)")
    parser.add_argument("--gamma", type=positive_float, default=None, help="saliency threshold γ (default 1)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="batch size (default 128)")
    parser.add_argument("--classifier", default=None,
                        help="FA classifier: `erase pretrain classifier` output, or torchvision weights with --arch")
    parser.add_argument("--arch", default=None, help="torchvision architecture of a plain --classifier weights file")
    parser.add_argument("--inception-weights", default=None, help="local Inception weights for FID (nothing is downloaded)")
    parser.add_argument("--fid-reference", default=None, help="real images for FID (default: --data)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID")
    parser.add_argument("--recipe", default=RECIPE, help=f"recipe to start from (default {RECIPE})")
    parser.add_argument("--seed", type=int, default=None)
    add_mixed_precision(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe value (repeatable)")
    parser.add_argument("--out", required=True, help="run folder: model/, metrics.json, grids, loss plot")
    parser.set_defaults(func=run_ddpm)


def run_ddpm(args) -> int:
    from erase.commands.run import run_recipe
    from erase.errors import UserError
    from erase.recipes import apply_overrides, load_recipe, resolve_path

    recipe = load_recipe(resolve_path(args.recipe))
    model = recipe.setdefault("model", {})
    if args.random_init:
        model["random_init"] = True
    elif args.model:
        model["path"] = str(model_folder(args.model))
        model["random_init"] = False
    else:
        raise UserError("say which model to erase from: --model FOLDER (or --random-init for a speed run)")
    recipe.setdefault("forget", {})["class"] = args.forget_class
    data = recipe.setdefault("data", {})
    data["dataset"] = args.data or "generated"
    check_data_source(args.data)
    if args.data_root:
        data["root"] = args.data_root
    sfron = recipe.setdefault("sfron", {})
    for key, value in (("steps", args.steps), ("lr", args.lr), ("gamma", args.gamma), ("seed", args.seed)):
        if value is not None:
            sfron[key] = value
    sfron["mixed_precision"] = args.mixed_precision
    if args.batch_size:
        data["batch_size"] = args.batch_size
    if args.method:
        recipe.setdefault("method", {})["name"] = args.method
    choose_evaluation(recipe.setdefault("eval", {}), args, resolve_path)
    recipe.setdefault("output", {})["dir"] = args.out
    recipe = apply_overrides(recipe, args.overrides)
    return run_recipe(recipe)


def model_folder(path) -> Path:
    """A diffusers folder, or a run folder of `erase pretrain ddpm` holding one in model/."""
    path = Path(path)
    if not (path / "model_index.json").exists() and (path / "model" / "model_index.json").exists():
        return path / "model"
    return path


def choose_evaluation(cfg: dict, args, resolve_path) -> None:
    """FA when a classifier is at hand; FID with Inception when its weights are, else on the classifier's
    features, else none (said on the terminal, so nothing is silently missing)."""
    from erase.errors import UserError
    from erase.eval.fid import find_inception_weights

    if args.classifier:
        cfg["classifier"], cfg["arch"] = args.classifier, args.arch or cfg.get("arch", "")
    elif cfg.get("classifier") and not resolve_path(cfg["classifier"]).is_file():
        print(f"note: no FA classifier ({cfg['classifier']} is missing; pass --classifier): FA is not measured")
        cfg["classifier"] = ""
    if args.fid_reference:
        cfg["fid_reference"] = args.fid_reference
    if args.inception_weights:
        cfg["inception_weights"], cfg["fid_features"] = args.inception_weights, "inception"
    if args.no_fid:
        cfg["fid"] = False
        return
    if cfg.get("fid_features", "inception") == "inception" and not cfg.get("inception_weights"):
        try:
            find_inception_weights(None)
        except UserError:
            if cfg.get("classifier"):
                cfg["fid_features"] = "classifier"
                print("note: no Inception weights (--inception-weights): FID uses the classifier's features")
            else:
                cfg["fid"] = False
                print("note: no Inception weights and no classifier: FID is not measured")


def check_data_source(source) -> None:
    """A missing dataset fails at once, not after the first evaluation."""
    from erase.data.images import TORCHVISION_SETS
    from erase.errors import UserError

    if source and str(source).lower() not in TORCHVISION_SETS and not Path(source).is_dir():
        raise UserError(f"no such dataset folder: {source} (or name one of {', '.join(TORCHVISION_SETS)})")
