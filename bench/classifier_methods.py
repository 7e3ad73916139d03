"""SFR-on vs FT, GA, RL and SalUn on digits: random 10% and one class, same step budget, one loop.

Trains the original CNN and the retrained reference once per setting, runs every method from the
same original through `erase.core.sfron.unlearn` with the settings of the digits recipes
(pipelines/classifier-digits-{random,class}.toml, [sfron] + [per_method.NAME]), and prints a
Markdown table per setting: UA, RA, TA, MIA (percent), average gap to the retrained model, seconds.

    python bench/classifier_methods.py                 # the table in BENCHMARKS.md
    python bench/classifier_methods.py --tune          # the per-method grid the recipes' settings come from

--tune runs every method over the same grid (lr × forget_alpha × grad_clip; FT: lr only) at the same step
budget and prints each method's best setting by average gap — every method gets equal tuning.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from erase.core.baselines import METHODS  # noqa: E402
from erase.core.sfron import SFRonConfig  # noqa: E402
from erase.eval.unlearning import gaps  # noqa: E402
from erase.recipes import PIPELINES_DIR, load_recipe  # noqa: E402
from erase.workflows.classifier import method_config, prepare, run_method  # noqa: E402

ORDER = ("ft", "ga", "rl", "salun", "sfron")
NAMES = {"ft": "FT", "ga": "GA", "rl": "RL", "salun": "SalUn", "sfron": "SFR-on"}
GRID = {"lr": (0.01, 0.03), "forget_alpha": (5.0, 25.0, 100.0), "grad_clip": (7.0, 1.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=["random", "class"], default=["random", "class"])
    parser.add_argument("--steps", type=int, default=None, help="step budget for every method (default: the recipe's)")
    parser.add_argument("--tune", action="store_true", help="grid over lr × forget_alpha × grad_clip per method")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = {}
    for task in args.tasks:
        recipe = load_recipe(PIPELINES_DIR / f"classifier-digits-{task}.toml")
        recipe.setdefault("eval", {})["retrain"] = True
        if args.steps:
            recipe["sfron"]["steps"] = args.steps
        started = time.perf_counter()
        setup = prepare(recipe, show_progress=False)
        setup_seconds = time.perf_counter() - started
        rows = tune(setup, recipe) if args.tune else compare(setup, recipe)
        results[task] = {"setup_seconds": setup_seconds, "rows": rows,
                         "original": setup.original_metrics, "retrained": setup.retrained_metrics}
        print(markdown(task, recipe, setup, rows, args.tune, setup_seconds), flush=True)
    print(f"\nMachine: {os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), python {platform.python_version()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


def compare(setup, recipe) -> list[dict]:
    rows = []
    for method in ORDER:
        config = method_config(recipe, method)
        _, metrics, _, _ = run_method(setup, method, config, show_progress=False)
        keys = GRID if METHODS[method].forget is not None else {"lr": None}
        rows.append({"method": method, "config": {k: getattr(config, k) for k in keys}, **pick(metrics)})
    return rows


def tune(setup, recipe) -> list[dict]:
    """Every method over the same grid; the best setting per method (by average gap) first."""
    base = dict(recipe["sfron"])
    rows = []
    for method in ORDER:
        grid = GRID if METHODS[method].forget is not None else {"lr": GRID["lr"]}
        trials = []
        for values in itertools.product(*grid.values()):
            setting = dict(zip(grid, values))
            config = SFRonConfig.from_dict({**base, **setting})
            _, metrics, _, _ = run_method(setup, method, config, show_progress=False)
            trials.append({"method": method, "config": setting, **pick(metrics)})
        trials.sort(key=lambda r: r["avg_gap"])
        rows.extend(trials)
    return rows


def pick(metrics) -> dict:
    return {k: metrics[k] for k in ("ua", "ra", "ta", "mia", "avg_gap", "seconds", "mask_fraction")}


def markdown(task, recipe, setup, rows, tuned, setup_seconds) -> str:
    steps = recipe["sfron"]["steps"]
    what = (f"random {recipe['forget']['fraction']:.0%} ({len(setup.forget_indices)} images)" if task == "random"
            else f"class {recipe['forget']['class']} ({len(setup.forget_indices)} images)")
    lines = [
        f"\n### digits, forget {what}, {steps} steps per method",
        "",
        "| method | settings | UA | RA | TA | MIA | avg gap ↓ | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, reference in (("Original", setup.original_metrics), ("Retrain", setup.retrained_metrics)):
        avg = gaps(reference, setup.retrained_metrics)[1]
        lines.append(f"| {name} | - | {fmt(reference)} | {100 * avg:.2f} | - |")
    best = {}
    for row in rows:
        if tuned and row["method"] in best:
            continue
        best[row["method"]] = row
        settings = ", ".join(f"{k} {v:g}" for k, v in row["config"].items()) or "recipe"
        lines.append(f"| {NAMES[row['method']]} | {settings} | {fmt(row)} | {100 * row['avg_gap']:.2f} | "
                     f"{row['seconds']:.1f} |")
    if tuned:
        lines += ["", "All trials (avg gap):"]
        lines += [f"- {NAMES[r['method']]} " + ", ".join(f"{k} {v:g}" for k, v in r["config"].items())
                  + f": {100 * r['avg_gap']:.2f}" for r in rows]
    lines.append(f"\n(original and retrained models trained in {setup_seconds:.0f} s)")
    return "\n".join(lines)


def fmt(metrics) -> str:
    return " | ".join(f"{100 * metrics[k]:.2f}" for k in ("ua", "ra", "ta", "mia"))


if __name__ == "__main__":
    sys.exit(main())
