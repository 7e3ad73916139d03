"""`erase run RECIPE.toml [--set key=value ...]`: run any recipe in pipelines/."""

from __future__ import annotations

import importlib

from erase.errors import UserError

# recipe `family` (+ `task`) -> workflow module with run(recipe) and summary_table(metrics)
WORKFLOWS = {
    ("ddpm", "class"): "erase.workflows.ddpm_class",
    ("dit", "class"): "erase.workflows.dit_class",
    ("classifier", "random"): "erase.workflows.classifier",
    ("classifier", "class"): "erase.workflows.classifier",
    ("sd", "concept"): "erase.workflows.sd",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run a recipe (pipelines/*.toml)")
    parser.add_argument("recipe", help="path of a recipe TOML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set sfron.lr=1e-3 (repeatable)")
    parser.add_argument("--out", default=None, help="run folder (fills output.dir; --set output.dir=... wins)")
    parser.set_defaults(func=run_command)


def run_command(args) -> int:
    from erase.recipes import apply_overrides, load_recipe

    recipe = load_recipe(args.recipe)
    if args.out:  # flags fill the recipe; --set is applied last and wins
        recipe.setdefault("output", {})["dir"] = args.out
    return run_recipe(apply_overrides(recipe, args.overrides))


def run_recipe(recipe: dict) -> int:
    from accelerate import PartialState

    from erase.workflows.timings import summary_line

    key = (recipe.get("family"), recipe.get("task", "class"))
    if not all(isinstance(part, str) for part in key) or key not in WORKFLOWS:
        known = ", ".join(f"{f}/{t}" for f, t in WORKFLOWS)
        raise UserError(f"recipe names family/task {key[0]}/{key[1]}, which has no workflow (known: {known})")
    workflow = importlib.import_module(WORKFLOWS[key])
    metrics = workflow.run(recipe)
    if not PartialState().is_main_process:
        return 0  # under accelerate launch the main process reports
    print(workflow.summary_table(metrics))
    print(f"steps {metrics['steps']}, {metrics['seconds']:.1f} s; run folder: {recipe.get('output', {}).get('dir')}")
    if "timings" in metrics:
        print(summary_line(metrics["timings"]))
    return 0
