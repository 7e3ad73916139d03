"""SFR-on vs FT, GA, RL and SalUn on digits: a random 10% and one class, same step budget, one loop.

Trains the original CNN and the retrained reference, runs every method from the same original through
`erase.core.sfron.unlearn` with the settings of the digits recipes (pipelines/classifier-digits-{random,
class}.toml, [sfron] + [per_method.NAME], [fisher] salun_fraction), and prints a Markdown table per
setting: UA, RA, TA, MIA (percent) and the average gap to the retrained model, each a MEAN over runs.

Random subset: --seeds forget splits from --first-split (split seed s), each with its own retrained
model; the grid is tuned on splits 0-2 and the tables reported on splits 3-32 and, as a replication
decided before it ran, 43-142 (BENCHMARKS.md has both commands). One class: every class
in turn (0-9 by default), each with its own retrained model. A single class decides nothing on
digits: the gaps are one or two test images, and which method lands nearest the retrained model
changes from class to class. Split/class i runs with unlearning-loop seeds (batch order, RL/SalUn's
random labels) OFFSET + i + 100·r for r < REPEATS. The original/retrained models are always trained
with the recipe's [train] seed.

    python bench/classifier_methods.py --tasks random --seeds 30 --first-split 3 --seed-offset 1000 --repeats 3 \
        --retrain-seeds 1                                                           # the tables
    python bench/classifier_methods.py --tasks class --seed-offset 1000 --repeats 3 --retrain-seeds 1
    python bench/classifier_methods.py ... --methods ga --json a.json; ... --methods sfron --json b.json
    python bench/classifier_methods.py --merge a.json b.json                    # one table from both
    python bench/classifier_methods.py --tune --jobs 2 --tasks random --repeats 2  # the grid behind the recipes'
    python bench/classifier_methods.py --tune --jobs 2 --tasks class               #   settings (random / class)
    python bench/classifier_methods.py --tune --tasks random --repeats 2 --methods ga --grid lr=0.003,0.01 ...
                                          # extend the grid past an edge a pick sits on (the --tune table names them)

The table runs on unlearning-loop seeds (--seed-offset) and random splits (--first-split) the tune
never saw: picking the best of up to 72 cells on the same runs it is then reported on flatters the
pick (a lucky batch order, a split whose retrained model it happens to match).

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
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from erase.core.methods import METHODS  # noqa: E402
from erase.eval.unlearning import METRICS, gaps  # noqa: E402
from erase.families.classifier import save_classifier  # noqa: E402
from erase.recipes import PIPELINES_DIR, apply_overrides, load_recipe  # noqa: E402
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
# The paper's CIFAR-10 classifier setting (DESIGN.md §2) with the official code's cosine rate, for every
# method alike: what a user gets without a retrained model to tune against.
PAPER_DEFAULTS = {"lr": 0.01, "lr_schedule": "cosine", "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
                  "forget_every": 5, "forget_alpha": 25.0, "decay_forget_alpha": True, "temperature": 0.5,
                  "gamma": 1.0, "grad_clip": 7.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=["random", "class"], default=["random", "class"])
    parser.add_argument("--steps", type=int, default=None, help="step budget for every method (default: the recipe's)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="random subset: N forget splits, split seeds FIRST..FIRST+N-1 (figures are their mean)")
    parser.add_argument("--first-split", type=int, default=0,
                        help="random subset: the first split seed (report on splits --tune never saw)")
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)),
                        help="one class: the classes forgotten in turn (figures are their mean)")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="add this to every unlearning-loop seed (the splits stay): report on other seeds than --tune saw")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each split/class this many times, loop seeds OFFSET + i + 100·r (figures are the mean)")
    parser.add_argument("--tune", action="store_true", help="every method over the shared grid (see GRID, KNOBS)")
    parser.add_argument("--methods", nargs="+", choices=ORDER, default=list(ORDER),
                        help="methods to run (all by default; e.g. re-tune one whose code path changed)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="run the tasks and methods in this many processes (1 thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value for both tasks (e.g. sfron.temperature=0.25; repeatable)")
    parser.add_argument("--paper-defaults", action="store_true",
                        help="every method at the paper's classifier setting (PAPER_DEFAULTS, SalUn mask 0.5) "
                             "instead of its tuned one")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="--tune: replace one dimension of the grid (a GRID key, gamma or salun_fraction), e.g. "
                             "to extend it past an edge the best setting sits on (repeatable)")
    parser.add_argument("--retrain-seeds", type=int, default=0, metavar="N",
                        help="also retrain each split/class with N other training seeds and score those models "
                             "against the reference: how near an independent retrain lands (a scale for the gap)")
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="run nothing: print the tables of earlier --json results as one (methods run by separate "
                             "commands on the same splits/classes and loop seeds)")
    args = parser.parse_args()
    try:
        grid = parse_grid(args.grid)
    except ValueError as error:
        parser.error(str(error))
    if args.merge:
        try:
            merged = merge_results([json.loads(path.read_text()) for path in args.merge])
        except (OSError, ValueError) as error:
            parser.error(f"--merge: {error}")
        for task, result in merged.items():
            print(markdown(task, result, tuned=False), flush=True)
        return 0

    started = time.perf_counter()
    methods = [m for m in ORDER if m in args.methods]
    work = work_items(args, methods, grid)
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            outcomes = list(pool.map(run_task, work))
    else:
        outcomes = [run_task(item) for item in work]
    results = merge_results([{item[0]: outcome} for item, outcome in zip(work, outcomes)], tuned=args.tune)
    for task, result in results.items():
        print(markdown(task, result, args.tune), flush=True)
    print(f"\nMachine: {os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__} "
          f"({args.threads} thread(s) per process, {args.jobs} process(es)), python {platform.python_version()}; "
          f"{time.perf_counter() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


def merge_results(parts: list[dict], tuned: bool = False) -> dict:
    """Several results of the same comparison (same task, splits/classes, loop seeds, settings) with
    different methods, as one result per task: the rows side by side, paired split by split. Merges the
    work items of one run as well as --json files of separate runs (--merge)."""
    merged = {}
    for task in dict.fromkeys(task for part in parts for task in part):
        results = [part[task] for part in parts if task in part]
        first = results[0]
        for other in results[1:]:
            for key in ("variants", "loop_seeds", "overrides"):
                if other.get(key) != first.get(key):
                    raise ValueError(f"{task}: the results differ in {key} ({brief(first.get(key))} vs "
                                     f"{brief(other.get(key))})")
            if other["recipe"]["sfron"]["steps"] != first["recipe"]["sfron"]["steps"]:
                raise ValueError(f"{task}: the results differ in the step budget")
            if [s["retrained"] for s in other["setups"]] != [s["retrained"] for s in first["setups"]]:
                raise ValueError(f"{task}: the results were compared with different retrained models")
        methods = [[row["method"] for row in result["rows"]] for result in results]
        every = [m for per_result in methods for m in set(per_result)]
        if len(set(every)) < len(every):
            raise ValueError(f"{task}: a method appears in more than one result")
        if not tuned and any(len(set(m)) < len(m) for m in methods):
            raise ValueError(f"{task}: a --tune result (several settings per method) cannot be merged into a table")
        # The setups of the result that retrained with other seeds, if any: they carry that scale of the gap.
        scale = next((r for r in results if all(s.get("retrained_other_seeds") for s in r["setups"])), first)
        rows = sorted((row for result in results for row in result["rows"]), key=lambda row: ORDER.index(row["method"]))
        merged[task] = {**first, "setups": scale["setups"], "rows": rows,
                        "setup_seconds": max(r["setup_seconds"] for r in results)}
    return merged


def brief(values) -> str:
    """A long list as its ends and length (for error messages)."""
    if isinstance(values, list) and len(values) > 6:
        return f"[{values[0]}, ..., {values[-1]}] ({len(values)})"
    return str(values)


def work_items(args, methods: list[str], grid: tuple) -> list[tuple]:
    """run_task's items: one per task or, with --jobs > 1, one per (task, method), the longest grids first
    so processes stay busy. Each item trains its own original and retrained models; only a task's first
    item retrains with other seeds."""
    split = args.jobs > 1
    groups = [[m] for m in sorted(methods, key=lambda m: grid_size(m, grid), reverse=True)] if split else [methods]
    loop_seeds = (args.seed_offset, args.repeats)
    splits = tuple(range(args.first_split, args.first_split + args.seeds))
    overrides = (paper_overrides() if args.paper_defaults else ()) + tuple(args.overrides)
    return [(task, args.steps, splits, tuple(args.classes), args.tune, args.threads, tuple(group), loop_seeds,
             overrides, grid, args.retrain_seeds if index == 0 else 0)
            for task in args.tasks for index, group in enumerate(groups)]


def parse_grid(items) -> tuple:
    """--grid KEY=V1,V2 items as ((key, (values...)), ...): numbers where they parse, else strings."""
    knobs = {name for name, _ in KNOBS.values()}
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values or (key not in GRID and key not in knobs):
            raise ValueError(f"--grid wants KEY=V1,V2,... with KEY one of {', '.join([*GRID, *sorted(knobs)])}: {item!r}")
        grid[key] = tuple(_number_or_text(v) for v in values.split(","))
    return tuple(grid.items())


def _number_or_text(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def grid_for(method: str, replaced: tuple = ()) -> dict:
    """The --tune grid of one method: GRID (FT: lr × lr_schedule), its knob, then --grid's replacements."""
    grid = {k: GRID[k] for k in FT_GRID} if METHODS[method].forget is None else dict(GRID)
    if method in KNOBS:
        name, values = KNOBS[method]
        grid[name] = values
    grid.update((k, v) for k, v in replaced if k in grid)
    return grid


def edges(grid: dict, setting: dict) -> list[str]:
    """The numeric dimensions in which `setting` sits on the grid's edge ("lr lowest"): extend the grid there."""
    found = []
    for key, values in grid.items():
        numbers = [v for v in values if not isinstance(v, str)]
        if len(numbers) > 1 and setting.get(key) in (min(numbers), max(numbers)):
            found.append(f"{key} {'lowest' if setting[key] == min(numbers) else 'highest'}")
    return found


def paper_overrides() -> tuple[str, ...]:
    """--set overrides that put every method at PAPER_DEFAULTS (the recipes' per-method picks removed)."""
    values = [f"sfron.{k}={json.dumps(v)}" for k, v in PAPER_DEFAULTS.items()]
    return (*values, "fisher.salun_fraction=0.5", "per_method={}")


def grid_size(method: str, replaced: tuple = ()) -> int:
    """Cells `--tune` runs for this method (to start the longest first)."""
    return math.prod(len(values) for values in grid_for(method, replaced).values())


def run_task(item) -> dict:
    task, steps, splits, classes, tuned, threads, methods, loop_seeds, overrides, *rest = item
    grid, retrain_seeds = rest if rest else ((), 0)
    torch.set_num_threads(threads)
    recipe = apply_overrides(load_recipe(PIPELINES_DIR / f"classifier-digits-{task}.toml"), list(overrides))
    recipe.setdefault("eval", {})["retrain"] = True
    if steps:
        recipe["sfron"]["steps"] = steps
    started = time.perf_counter()
    variants = splits if task == "random" else classes
    setups = [prepare(variant_recipe(recipe, task, variants[0]), show_progress=False)]
    with tempfile.TemporaryDirectory() as tmp:  # every variant starts from the same original: train it once
        original = Path(tmp) / "original.safetensors"
        save_classifier(setups[0].original, original)
        for variant in variants[1:]:
            variant_config = variant_recipe(recipe, task, variant)
            variant_config["model"]["path"] = str(original)
            setups.append(prepare(variant_config, show_progress=False))
        other_retrains = [[other_retrain(recipe, task, variant, original, seed) for seed in range(1, retrain_seeds + 1)]
                          for variant in variants]
    setup_seconds = time.perf_counter() - started
    rows = tune(setups, recipe, methods, loop_seeds, grid) if tuned else compare(setups, recipe, methods, loop_seeds)
    summary = [{"original": s.original_metrics, "retrained": s.retrained_metrics, "forget_size": len(s.forget_indices),
                "retrained_other_seeds": others} for s, others in zip(setups, other_retrains)]
    return {"recipe": recipe, "variants": list(variants), "setup_seconds": setup_seconds, "rows": rows,
            "setups": summary, "loop_seeds": list(loop_seeds), "overrides": list(overrides), "grid": [list(g) for g in grid]}


def other_retrain(recipe: dict, task: str, variant: int, original: Path, seed: int) -> dict:
    """UA/RA/TA/MIA of a model retrained on the same remain set with another training seed.

    The splits depend on the forget seed/class only, so its setup's metrics are on the reference's splits."""
    config = variant_recipe(recipe, task, variant)
    config["model"]["path"] = str(original)
    config["train"]["seed"] = seed
    return prepare(config, show_progress=False).retrained_metrics


def variant_recipe(recipe: dict, task: str, variant: int) -> dict:
    """Random subset: the recipe with forget-split seed `variant`; one class: forgetting class `variant`."""
    recipe = copy.deepcopy(recipe)
    recipe["forget"]["seed" if task == "random" else "class"] = variant
    return recipe


def trial(setups, method: str, config, salun_fraction: float | None = None, loop_seeds=(0, 1)) -> dict:
    """One setting of one method on every setup: the per-setup metrics (mean over repeats) and their mean.

    Setup i runs with unlearning-loop seeds offset + i + 100·r for r < repeats."""
    offset, repeats = loop_seeds
    runs = []
    for index, setup in enumerate(setups):
        if salun_fraction is not None:
            setup = dataclasses.replace(setup, salun_fraction=salun_fraction)
        repeated = []
        for repeat in range(repeats):
            seed = offset + index + 100 * repeat
            _, metrics, _, _ = run_method(setup, method, dataclasses.replace(config, seed=seed), show_progress=False)
            repeated.append({k: metrics[k] for k in (*METRICS, "avg_gap", "seconds", "mask_fraction")})
        runs.append({k: statistics.fmean(run[k] for run in repeated) for k in repeated[0]})
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


def compare(setups, recipe, methods=ORDER, loop_seeds=(0, 1)) -> list[dict]:
    rows = []
    for method in (m for m in ORDER if m in methods):
        config = method_config(recipe, method)
        fraction = setups[0].salun_fraction
        rows.append({**trial(setups, method, config, loop_seeds=loop_seeds),
                     "config": settings_of(method, config, fraction)})
    return rows


def tune(setups, recipe, methods=ORDER, loop_seeds=(0, 1), replaced: tuple = ()) -> list[dict]:
    """Every method over the same grid (+ its own knob, if any); the best setting per method first."""
    rows = []
    for method in (m for m in ORDER if m in methods):
        grid = grid_for(method, replaced)
        trials = []
        for values in itertools.product(*grid.values()):
            setting = dict(zip(grid, values))
            fraction = setting.get("salun_fraction")
            fields = {k: v for k, v in setting.items() if k != "salun_fraction"}
            config = dataclasses.replace(method_config(recipe, "sfron"), **fields)
            trials.append({**trial(setups, method, config, fraction, loop_seeds), "config": setting})
        trials.sort(key=lambda r: r["avg_gap"])
        rows.extend(trials)
    return rows


def markdown(task, result, tuned) -> str:
    recipe, setups, rows, variants = result["recipe"], result["setups"], result["rows"], result["variants"]
    steps = recipe["sfron"]["steps"]
    sizes = sorted({s["forget_size"] for s in setups})
    count = f"{min(sizes)}-{max(sizes)}" if len(sizes) > 1 else str(sizes[0])
    offset, repeats = result["loop_seeds"]
    if task == "random":
        plural = "s" if len(setups) > 1 else ""
        what, unit = f"random {recipe['forget']['fraction']:.0%} ({count} images)", "split"
        runs = f"{len(setups)} split{plural} (split seeds {variants[0]}-{variants[-1]})"
    else:
        classes = ", ".join(str(v) for v in variants)
        what, runs, unit = f"one class ({count} images)", f"classes {classes} forgotten in turn", "class"
    runs += f", {repeats} loop seeds each" if repeats > 1 else ""
    runs += f" (loop seeds from {offset})" if offset else ""
    overrides, paper = result.get("overrides", []), list(paper_overrides())
    if overrides[:len(paper)] == paper:
        runs, overrides = runs + "; every method at the paper's defaults", overrides[len(paper):]
    runs += f"; --set {' '.join(overrides)}" if overrides else ""
    lines = [
        f"\n### digits, forget {what}, {steps} steps per method, mean of {runs}",
        "",
        f"| method | settings | UA | RA | TA | MIA | avg gap ↓ | gap per {unit} | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (("Original", "original"), ("Retrain", "retrained")):
        seed_gaps = [gaps(s[key], s["retrained"])[1] for s in setups]
        mean = {k: statistics.fmean(s[key][k] for s in setups) for k in METRICS}
        lines.append(f"| {name} | - | {fmt(mean)} | {100 * statistics.fmean(seed_gaps):.2f} | "
                     f"{per_seed(seed_gaps)} | - |")
    others = [s.get("retrained_other_seeds") or [] for s in setups]
    if all(others):
        seed_gaps = [statistics.fmean(gaps(m, s["retrained"])[1] for m in models) for s, models in zip(setups, others)]
        mean = {k: statistics.fmean(m[k] for models in others for m in models) for k in METRICS}
        lines.append(f"| Retrain, {len(others[0])} other training seed(s) | - | {fmt(mean)} | "
                     f"{100 * statistics.fmean(seed_gaps):.2f} | {per_seed(seed_gaps)} | - |")
    best = {}
    for row in rows:
        if tuned and row["method"] in best:
            continue
        best[row["method"]] = row
        lines.append(f"| {NAMES[row['method']]} | {describe(row['config'])} | {fmt(row)} | {100 * row['avg_gap']:.2f} | "
                     f"{per_seed(r['avg_gap'] for r in row['runs'])} | {row['seconds']:.1f} |")
    if tuned:
        lines += ["", "How much the setting matters (avg gap over the grid's cells; a user without a retrained model",
                  "to tune against gets something between the best and the worst), and where the best cell sits",
                  "on the grid's edge (extend the grid there with --grid):", "",
                  "| method | cells | best | median | worst | best on the edge |", "|---|---|---|---|---|---|"]
        replaced = tuple(tuple(g) for g in result.get("grid", ()))
        for method in best:
            cells = [100 * r["avg_gap"] for r in rows if r["method"] == method]
            edge = ", ".join(edges(grid_for(method, replaced), best[method]["config"])) or "-"
            lines.append(f"| {NAMES[method]} | {len(cells)} | {min(cells):.2f} | {statistics.median(cells):.2f} | "
                         f"{max(cells):.2f} | {edge} |")
        lines += ["", f"All trials (mean avg gap over {runs}):"]
        lines += [f"- {NAMES[r['method']]} {describe(r['config'])}: {100 * r['avg_gap']:.2f}" for r in rows]
    if not tuned:
        lines += paired_differences(best, unit)
    lines.append(f"\n(original and retrained models trained in {result['setup_seconds']:.0f} s)")
    return "\n".join(lines)


def paired_differences(rows: dict, unit: str) -> list[str]:
    """SFR-on's avg gap minus each other method's, paired by split/class: mean ± standard error, and who is nearer."""
    if "sfron" not in rows or len(rows["sfron"]["runs"]) < 2:
        return []
    ours = [r["avg_gap"] for r in rows["sfron"]["runs"]]
    lines = ["", f"Paired by {unit} (avg gap, SFR-on − method; negative: SFR-on nearer the retrained model):"]
    for method, row in rows.items():
        if method == "sfron":
            continue
        diffs = [100 * (a - b["avg_gap"]) for a, b in zip(ours, row["runs"])]
        error = statistics.stdev(diffs) / math.sqrt(len(diffs))
        nearer, farther = sum(d < 0 for d in diffs), sum(d > 0 for d in diffs)
        lines.append(f"- SFR-on − {NAMES[method]}: {statistics.fmean(diffs):+.2f} ± {error:.2f}; SFR-on nearer on "
                     f"{nearer}, {NAMES[method]} on {farther} of {len(diffs)} {unit}{'es' if unit == 'class' else 's'}")
    return lines


def per_seed(values) -> str:
    """Each split's/class's gap; past 30 of them, their median and range (a column of 100 numbers reads as noise)."""
    values = [100 * v for v in values]
    if len(values) > 30:
        return f"median {statistics.median(values):.2f}, {min(values):.2f}–{max(values):.2f}"
    return " / ".join(f"{v:.2f}" for v in values)


def describe(setting: dict) -> str:
    short = {"lr_schedule": "sched", "forget_alpha": "α_f", "grad_clip": "clip", "gamma": "γ",
             "salun_fraction": "mask"}
    return ", ".join(f"{short.get(k, k)} {v:g}" if not isinstance(v, str) else f"{short.get(k, k)} {v}"
                     for k, v in setting.items())


def fmt(metrics) -> str:
    return " | ".join(f"{100 * metrics[k]:.2f}" for k in METRICS)


if __name__ == "__main__":
    sys.exit(main())
