"""Score one setting of the demo recipe on every digit, cheaply: the tuning harness behind BENCHMARKS.md.

    OMP_NUM_THREADS=1 python bench/demo_sweep.py [--variant plain|official] [--set key=value ...] [--classes 0 1 ...]

It runs exactly the erase part of `erase demo` (same data, Fisher, mask, loop and seeds), then
generates the evaluation images with the recipe's counts and seeds and scores them with the digit
CNN, FID included, so FA, remaining accuracy and FID equal those of the full run
(`bench/demo_classes.py`). It skips what does not depend on the setting: the "before" evaluation is
computed once per digit and cached, and no grids or exported model are made. One line per digit,
then a summary: how many digits meet the bar of erase.eval.verdict (FA ≤ 0.05, remaining accuracy
within 0.02 of before, the other digits' FID at most 1.25× before). `--variant` sets the Fisher and
label-dropout keys to the toolkit's plain pass or to the official class-DDPM code's (VARIANTS); the
`--set` overrides come after it. Results are appended to runs/demo-sweep/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from erase.commands.demo import RECIPES
from erase.eval.verdict import FID_TOLERANCE, class_forgotten
from erase.families import ddpm
from erase.recipes import apply_overrides, load_recipe, resolve_path
from erase.workflows import ddpm_class



# The Fisher pass and the unlearning steps' labels, as erase does them and as the official class-DDPM code does:
# a full pass, each batch gradient clipped before squaring (its clip 1 on the loss summed over the 64 pixels
# is 1/64 on erase's per-pixel mean: it binds on every batch), the loss on the guided prediction (its
# cond_scale 2 is guidance 3 here), and 10% of the labels dropped to the null class while unlearning.
VARIANTS = {
    "plain": ["fisher.batches=8", "fisher.clip=0", "fisher.guidance=1", "method.label_dropout=0"],
    "official": ["fisher.batches=0", "fisher.clip=0.015625", "fisher.guidance=3", "method.label_dropout=0.1"],
}


def erase_digit(recipe: dict, work_dir: Path):
    """The erase half of ddpm_class.run, step for step (same seeds): returns (pipeline, mask fraction)."""
    settings = ddpm_class.read(recipe)
    config = settings.sfron
    torch.manual_seed(config.seed)
    pipeline = ddpm.load_or_build_pipeline(recipe["model"])
    mask, _, _ = ddpm_class.erase_class(settings, pipeline, settings.method.spec, config, settings.forget.forget_class,
                                        work_dir, show_progress=False)
    kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values()) if mask else 1.0
    return pipeline, kept


def scores(result: dict) -> dict:
    return {"fa": result["fa"], "remaining_accuracy": result["remaining_accuracy"], "fid": result["fid"],
            "per_class_accuracy": result["per_class_accuracy"]}


def cached_before(recipe: dict, cache_path: Path) -> dict:
    """The untouched model's scores for this digit and evaluation (they do not depend on the setting)."""
    cfg = recipe["eval"]
    key = f"{recipe['forget']['class']}/{cfg['forget_samples']}/{cfg['samples_per_class']}/{cfg['inference_steps']}/{cfg['guidance']}/{cfg['seed']}"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if "fid" not in cache.get(key, {}):  # entries from before FID was part of the bar are recomputed
        evaluator = ddpm_class.make_evaluator(ddpm_class.read(recipe), 10, int(recipe["forget"]["class"]))
        cache[key] = scores(evaluator.evaluate(ddpm.load_or_build_pipeline(recipe["model"]), "before"))
        cache_path.write_text(json.dumps(cache, indent=1))
    return cache[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=None,
                        help="the Fisher and label-dropout keys of erase's plain pass or of the official code")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--label", default=None, help="name of the setting in results.jsonl (default: the overrides)")
    parser.add_argument("--out", default="runs/demo-sweep")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = (VARIANTS[args.variant] if args.variant else []) + args.overrides
    label = args.label or " ".join(([args.variant] if args.variant else []) + args.overrides) or "shipped"
    rows, passed = [], 0
    for k in args.classes:
        recipe = apply_overrides(load_recipe(resolve_path(RECIPES["ddpm"])), overrides)
        recipe["forget"]["class"] = k
        recipe["eval"]["fid"] = True
        before = cached_before(recipe, out / "before.json")
        started = time.perf_counter()
        pipeline, kept = erase_digit(recipe, out / "work")
        erase_seconds = time.perf_counter() - started
        after = scores(ddpm_class.make_evaluator(ddpm_class.read(recipe), 10, k).evaluate(pipeline, "after"))
        drop = before["remaining_accuracy"] - after["remaining_accuracy"]
        ok = class_forgotten(after["fa"], after["remaining_accuracy"], before["remaining_accuracy"], after["fid"], before["fid"])
        passed += ok
        row = {"label": label, "overrides": overrides, "digit": k, "mask": kept, "fa": after["fa"],
               "remaining_before": before["remaining_accuracy"], "remaining_after": after["remaining_accuracy"], "drop": drop,
               "fid_before": before["fid"], "fid_after": after["fid"], "ok": ok, "seconds_erase": erase_seconds,
               "after_per_class": after["per_class_accuracy"]}
        rows.append(row)
        print(f"digit {k}: mask {kept:.1%}  FA {after['fa']:.2f}  remaining {before['remaining_accuracy']:.3f} → "
              f"{after['remaining_accuracy']:.3f} ({-drop * 100:+.1f} pt)  FID {before['fid']:.1f} → {after['fid']:.1f} "
              f"({after['fid'] / before['fid']:.2f}×)  {'ok' if ok else '--'}  erase {erase_seconds:.0f} s", flush=True)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    worst_fa = max(r["fa"] for r in rows)
    worst_drop = max(r["drop"] for r in rows)
    worst_fid = max(r["fid_after"] / r["fid_before"] for r in rows)
    print(f"{label}: {passed}/{len(rows)} digits meet the bar; worst FA {worst_fa:.2f}, worst drop {worst_drop * 100:.1f} pt, "
          f"worst FID ratio {worst_fid:.2f} (bar {FID_TOLERANCE}), "
          f"mean erase {sum(r['seconds_erase'] for r in rows) / len(rows):.0f} s")


if __name__ == "__main__":
    main()
