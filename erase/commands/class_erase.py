"""What `erase ddpm` and `erase dit` share: the options of a one-class erase and how they fill a recipe.

Both commands are shortcuts for a class-forgetting recipe; only the model, the data and the defaults
named in the help differ, so the options and the recipe filling live here once.
"""

from __future__ import annotations

import argparse

from erase.commands.common import add_mixed_precision, positive_float, positive_int
from erase.errors import UserError


def add_model_arguments(parser: argparse.ArgumentParser, model_help: str, architecture: str) -> None:
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument("--random-init", action="store_true",
                        help=f"no checkpoint: the {architecture} architecture with random weights (speed and memory runs)")


def add_run_arguments(parser: argparse.ArgumentParser, recipe: str, steps_default: str, lr_help: str,
                      out_help: str) -> None:
    """The loop, evaluation and output options (after the command's own model/data options)."""
    parser.add_argument("--steps", type=positive_int, default=None, help=f"SFR-on steps (default {steps_default})")
    parser.add_argument("--method", default=None, choices=["sfron", "ga", "rl", "salun", "esd", "ft"],
                        help="default sfron")
    parser.add_argument("--lr", type=positive_float, default=None, help=lr_help)
    parser.add_argument("--gamma", type=positive_float, default=None, help="saliency threshold γ (default 1)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="training batch, global: under accelerate launch each of N processes takes batch/N of "
                             "every batch (a multiple of N; default: the recipe's)")
    parser.add_argument("--inception-weights", default=None, help="local Inception weights for FID (nothing is downloaded)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID")
    parser.add_argument("--recipe", default=recipe, help=f"recipe to start from (default {recipe})")
    parser.add_argument("--seed", type=int, default=None)
    add_mixed_precision(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe value (repeatable)")
    parser.add_argument("--out", required=True, help=out_help)


def class_recipe(args, model_path: str | None, model_hint: str) -> dict:
    """The command's recipe with the options applied (not yet `--set`, evaluation or output)."""
    from erase.recipes import load_recipe, resolve_path

    recipe = load_recipe(resolve_path(args.recipe))
    model = recipe.setdefault("model", {})
    if args.random_init:
        model["random_init"] = True
    elif model_path:
        model["path"], model["random_init"] = model_path, False
    else:
        raise UserError(f"say which model to erase from: --model {model_hint} (or --random-init for a speed run)")
    recipe.setdefault("forget", {})["class"] = args.forget_class
    data = recipe.setdefault("data", {})
    data["dataset"] = args.data or "generated"
    if args.batch_size:
        data["batch_size"] = args.batch_size
    sfron = recipe.setdefault("sfron", {})
    for key, value in (("steps", args.steps), ("lr", args.lr), ("gamma", args.gamma), ("seed", args.seed)):
        if value is not None:
            sfron[key] = value
    sfron["mixed_precision"] = args.mixed_precision
    if args.method:
        recipe.setdefault("method", {})["name"] = args.method
    return recipe


def finish_and_run(recipe: dict, args) -> int:
    """Output folder, then `--set` overrides (they win over everything), then the run."""
    from erase.commands.run import run_recipe
    from erase.recipes import apply_overrides

    recipe.setdefault("output", {})["dir"] = args.out
    return run_recipe(apply_overrides(recipe, args.overrides))


def choose_evaluation(cfg: dict, args) -> None:
    """FA when a classifier is at hand; FID with Inception when its weights are, else on the classifier's
    features, else none (said on the terminal, so nothing is silently missing)."""
    from erase.eval.fid import find_inception_weights
    from erase.recipes import resolve_path

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
