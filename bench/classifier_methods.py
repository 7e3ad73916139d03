"""SFR-on vs FT, GA, RL and SalUn on digits: random 10% and one class, same step budget, one loop, 3 seeds.

Trains the original CNN and the retrained reference, runs every method from the same original through
`erase.core.sfron.unlearn` with the settings of the digits recipes (pipelines/classifier-digits-{random,
class}.toml, [sfron] + [per_method.NAME], [fisher] salun_fraction), and prints a Markdown table per
setting: UA, RA, TA, MIA (percent) and the average gap to the retrained model, each the MEAN over seeds.

Seed s sets the unlearning loop's seed (batch order, RL/SalUn's random labels) and, for the random
subset, the forget split too (so each seed has its own forget set and its own retrained model). The
original/retrained models are always trained with the recipe's [train] seed.

    python bench/classifier_methods.py                 # the table in BENCHMARKS.md
    python bench/classifier_methods.py --tune          # the shared grid the recipes' settings come from

--tune runs every method over the same grid, GRID (FT: lr × lr_schedule only), at the same step
budget and seeds, plus one method-specific knob of equal size for the two masked methods (KNOBS:
SFR-on's γ, SalUn's mask fraction); each method's setting is the one with the lowest mean average gap.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from erase.core.baselines import METHODS  # noqa: E402
from erase.eval.unlearning import METRICS, gaps  # noqa: E402
from erase.recipes import PIPELINES_DIR, load_recipe  # noqa: E402
from erase.workflows.classifier import method_config, prepare, run_method  # noqa: E402

ORDER = ("ft", "ga", "rl", "salun", "sfron")
NAMES = {"ft": "FT", "ga": "GA", "rl": "RL", "salun": "SalUn", "sfron": "SFR-on"}
GRID = {
    "lr": (0.01, 0.03),
    "lr_schedule": ("constant", "cosine"),
    "forget_alpha": (5.0, 25.0, 100.0),
    "grad_clip": (1.0, 7.0),
}
FT_GRID = ("lr", "lr_schedule")  # FT has no forget step: forget_alpha and the clip of it do not apply
KNOBS = {"sfron": ("gamma", (0.3, 1.0, 3.0)), "salun": ("salun_fraction", (0.25, 0.5, 0.75))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=["random", "class"], default=["random", "class"])
    parser.add_argument("--steps", type=int, default=None, help="step budget for every method (default: the recipe's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1; every figure is the mean over them")
    parser.add_argument("--tune", action="store_true", help="every method over the shared grid (see GRID, KNOBS)")
    parser.add_argument("--methods", nargs="+", choices=ORDER, default=list(ORDER),
                        help="methods to run (all by default; e.g. re-tune one whose code path changed)")
    parser.add_argument("--jobs", type=int, default=1, help="run the tasks in this many processes (1 thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    args = parser.parse_args()

    started = time.perf_counter()
    work = [(task, args.steps, args.seeds, args.tune, args.threads, tuple(args.methods)) for task in args.tasks]
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            outcomes = list(pool.map(run_task, work))
    else:
        outcomes = [run_task(item) for item in work]
    results = {}
    for task, (text, result) in zip(args.tasks, outcomes):
        print(text, flush=True)
        results[task] = result
    print(f"\nMachine: {os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__} "
          f"({args.threads} thread(s) per process, {args.jobs} process(es)), python {platform.python_version()}; "
          f"{time.perf_counter() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


def run_task(item) -> tuple[str, dict]:
    task, steps, seeds, tuned, threads, methods = item
    torch.set_num_threads(threads)
    recipe = load_recipe(PIPELINES_DIR / f"classifier-digits-{task}.toml")
    recipe.setdefault("eval", {})["retrain"] = True
    if steps:
        recipe["sfron"]["steps"] = steps
    started = time.perf_counter()
    setups = [prepare(seeded(recipe, task, seed), show_progress=False) for seed in range(seeds)] if task == "random" \
        else [prepare(recipe, show_progress=False)] * seeds  # class: one split, one retrained model
    setup_seconds = time.perf_counter() - started
    rows = tune(setups, recipe, methods) if tuned else compare(setups, recipe, methods)
    result = {"setup_seconds": setup_seconds, "rows": rows,
              "original": [s.original_metrics for s in setups], "retrained": [s.retrained_metrics for s in setups]}
    return markdown(task, recipe, setups, rows, tuned, setup_seconds), result


def seeded(recipe: dict, task: str, seed: int) -> dict:
    """The recipe with seed s: the forget split's seed (random subset only)."""
    recipe = copy.deepcopy(recipe)
    if task == "random":
        recipe["forget"]["seed"] = seed
    return recipe


def trial(setups, method: str, config, salun_fraction: float | None = None) -> dict:
    """One setting of one method over every seed: the per-seed metrics and their mean."""
    runs = []
    for seed, setup in enumerate(setups):
        if salun_fraction is not None:
            setup = dataclasses.replace(setup, salun_fraction=salun_fraction)
        _, metrics, _, _ = run_method(setup, method, dataclasses.replace(config, seed=seed), show_progress=False)
        runs.append({k: metrics[k] for k in (*METRICS, "avg_gap", "seconds", "mask_fraction")})
    mean = {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}
    spread = statistics.pstdev(r["avg_gap"] for r in runs)
    return {"method": method, **mean, "avg_gap_std": spread, "runs": runs}


def settings_of(method: str, config, salun_fraction: float) -> dict:
    keys = FT_GRID if METHODS[method].forget is None else tuple(GRID)
    setting = {k: getattr(config, k) for k in keys}
    if method == "sfron":
        setting["gamma"] = config.gamma
    if method == "salun":
        setting["salun_fraction"] = salun_fraction
    return setting


def compare(setups, recipe, methods=ORDER) -> list[dict]:
    rows = []
    for method in (m for m in ORDER if m in methods):
        config = method_config(recipe, method)
        fraction = setups[0].salun_fraction
        rows.append({**trial(setups, method, config), "config": settings_of(method, config, fraction)})
    return rows


def tune(setups, recipe, methods=ORDER) -> list[dict]:
    """Every method over the same grid (+ its own knob, if any); the best setting per method first."""
    rows = []
    for method in (m for m in ORDER if m in methods):
        grid = {k: GRID[k] for k in FT_GRID} if METHODS[method].forget is None else dict(GRID)
        if method in KNOBS:
            name, values = KNOBS[method]
            grid[name] = values
        trials = []
        for values in itertools.product(*grid.values()):
            setting = dict(zip(grid, values))
            fraction = setting.get("salun_fraction")
            fields = {k: v for k, v in setting.items() if k != "salun_fraction"}
            config = dataclasses.replace(method_config(recipe, "sfron"), **fields)
            trials.append({**trial(setups, method, config, fraction), "config": setting})
        trials.sort(key=lambda r: r["avg_gap"])
        rows.extend(trials)
    return rows


def markdown(task, recipe, setups, rows, tuned, setup_seconds) -> str:
    steps = recipe["sfron"]["steps"]
    sizes = sorted({len(s.forget_indices) for s in setups})
    count = "/".join(str(n) for n in sizes)
    what = (f"random {recipe['forget']['fraction']:.0%} ({count} images)" if task == "random"
            else f"class {recipe['forget']['class']} ({count} images)")
    lines = [
        f"\n### digits, forget {what}, {steps} steps per method, mean of {len(setups)} seeds",
        "",
        "| method | settings | UA | RA | TA | MIA | avg gap ↓ | gap per seed | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (("Original", "original_metrics"), ("Retrain", "retrained_metrics")):
        seed_gaps = [gaps(getattr(s, key), s.retrained_metrics)[1] for s in setups]
        mean = {k: statistics.fmean(getattr(s, key)[k] for s in setups) for k in METRICS}
        lines.append(f"| {name} | - | {fmt(mean)} | {100 * statistics.fmean(seed_gaps):.2f} | "
                     f"{per_seed(seed_gaps)} | - |")
    best = {}
    for row in rows:
        if tuned and row["method"] in best:
            continue
        best[row["method"]] = row
        lines.append(f"| {NAMES[row['method']]} | {describe(row['config'])} | {fmt(row)} | {100 * row['avg_gap']:.2f} | "
                     f"{per_seed(r['avg_gap'] for r in row['runs'])} | {row['seconds']:.1f} |")
    if tuned:
        lines += ["", f"All trials (mean avg gap over {len(setups)} seeds):"]
        lines += [f"- {NAMES[r['method']]} {describe(r['config'])}: {100 * r['avg_gap']:.2f}" for r in rows]
    lines.append(f"\n(original and retrained models trained in {setup_seconds:.0f} s)")
    return "\n".join(lines)


def per_seed(values) -> str:
    return " / ".join(f"{100 * v:.2f}" for v in values)


def describe(setting: dict) -> str:
    short = {"lr_schedule": "sched", "forget_alpha": "α_f", "grad_clip": "clip", "gamma": "γ",
             "salun_fraction": "mask"}
    return ", ".join(f"{short.get(k, k)} {v:g}" if not isinstance(v, str) else f"{short.get(k, k)} {v}"
                     for k, v in setting.items())


def fmt(metrics) -> str:
    return " | ".join(f"{100 * metrics[k]:.2f}" for k in METRICS)


if __name__ == "__main__":
    sys.exit(main())
