"""`erase demo`: the embedded default — forget one digit from the bundled DDPM, evaluate, report."""

from __future__ import annotations

from erase.commands.common import positive_int

DEMO_RECIPE = "pipelines/digits-ddpm-class.toml"


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="forget one digit from the bundled digits DDPM (CPU, about a minute)")
    parser.add_argument("--forget-class", type=int, default=None, help="digit to forget, 0-9 (default: the recipe's)")
    parser.add_argument("--steps", type=positive_int, default=None, help="SFR-on steps (default: the recipe's)")
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the loop (default: the recipe's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe value (repeatable)")
    parser.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from erase.commands.run import run_recipe
    from erase.errors import UserError
    from erase.recipes import apply_overrides, load_recipe, resolve_path

    recipe = apply_overrides(load_recipe(resolve_path(DEMO_RECIPE)), args.overrides)
    if args.forget_class is not None:
        if not 0 <= args.forget_class <= 9:
            raise UserError(f"--forget-class must be a digit 0-9, got {args.forget_class}")
        recipe["forget"]["class"] = args.forget_class
    if args.steps is not None:
        recipe["sfron"]["steps"] = args.steps
    if args.seed is not None:
        recipe["sfron"]["seed"] = args.seed
    recipe.setdefault("output", {})["dir"] = args.out
    if not resolve_path(recipe["model"]["path"]).exists():
        raise UserError(f"the bundled model {recipe['model']['path']} is missing; run `erase pretrain digits`")
    return run_recipe(recipe)
