"""`erase demo`: the embedded default of the main job — erase a concept from the bundled text-to-image
Stable Diffusion pipeline (assets/digits-sd), evaluate, export a plain diffusers folder.

`--family ddpm` runs the earlier demo: forget one class of the bundled class-conditional digits DDPM.
Flags fill in the recipe; `--set key=value` is applied last, so it wins over a flag (as in `erase sd`).
"""

from __future__ import annotations

from erase.commands.common import positive_int

RECIPES = {"sd": "pipelines/digits-sd-concept.toml", "ddpm": "pipelines/digits-ddpm-class.toml"}
PRETRAIN = {"sd": "erase pretrain digits-sd --out assets/digits-sd", "ddpm": "erase pretrain digits"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="erase a digit concept from the bundled text-to-image SD pipeline (CPU, under a minute)"
    )
    parser.add_argument("--family", choices=sorted(RECIPES), default="sd",
                        help="sd: concept erasure from the text-to-image pipeline (default); ddpm: class forgetting")
    parser.add_argument("--forget-digit", "--forget-class", dest="forget", type=int, action="append", default=None,
                        metavar="K", help="digit to erase, 0-9 (sd: repeatable, several concepts in one run; "
                                          "default: the recipe's)")
    parser.add_argument("--method", choices=["sfron", "ga", "rl", "salun", "esd"], default=None,
                        help="erasure method (default sfron)")
    parser.add_argument("--steps", type=positive_int, default=None, help="erasure steps (default: the recipe's)")
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the loop (default: the recipe's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe value (repeatable; wins over the flags)")
    parser.set_defaults(func=run_demo)


def build_recipe(args) -> dict:
    from erase.errors import UserError
    from erase.recipes import apply_overrides, load_recipe, resolve_path

    recipe = load_recipe(resolve_path(RECIPES[args.family]))
    if args.forget is not None:
        if any(not 0 <= k <= 9 for k in args.forget):
            raise UserError(f"--forget-digit must be a digit 0-9, got {args.forget}")
        if args.family == "sd":
            recipe["digits"]["forget"] = sorted(set(args.forget))
        elif len(args.forget) > 1:
            raise UserError("the ddpm demo forgets one class; give --forget-digit once")
        else:
            recipe["forget"]["class"] = args.forget[0]
    if args.method is not None:
        recipe["method"]["name"] = args.method
        recipe["method"].pop("forget_loss", None)  # each method's own default
    if args.steps is not None:
        recipe["sfron"]["steps"] = args.steps
    if args.seed is not None:
        recipe["sfron"]["seed"] = args.seed
    recipe.setdefault("output", {})["dir"] = args.out
    recipe = apply_overrides(recipe, args.overrides)
    model = recipe.get("model")
    path = model.get("path") if isinstance(model, dict) else None
    if isinstance(path, str) and not resolve_path(path).exists():  # other mistakes: the workflow's settings say
        raise UserError(f"the bundled model {path} is missing; run `{PRETRAIN[args.family]}`")
    return recipe


def run_demo(args) -> int:
    from erase.commands.run import run_recipe

    return run_recipe(build_recipe(args))
