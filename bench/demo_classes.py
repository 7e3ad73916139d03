"""Run the embedded demo recipe once per digit and print a markdown table (FA, remaining accuracy, FID).

    python bench/demo_classes.py [--classes 0 1 2 ...] [--set key=value ...] [--out runs/demo-classes]
"""

from __future__ import annotations

import argparse
import json
import time

from erase.commands.demo import RECIPES
from erase.eval.verdict import class_forgotten
from erase.recipes import apply_overrides, load_recipe, resolve_path
from erase.workflows import ddpm_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="runs/demo-classes")
    args = parser.parse_args()
    rows = []
    for k in args.classes:
        recipe = apply_overrides(load_recipe(resolve_path(RECIPES["ddpm"])), args.overrides)
        recipe["forget"]["class"] = k
        recipe["output"]["dir"] = f"{args.out}/digit-{k}"
        started = time.perf_counter()
        m = ddpm_class.run(recipe, show_progress=False)
        b, a = m["before"], m["after"]
        ok = class_forgotten(a["fa"], a["remaining_accuracy"], b["remaining_accuracy"], a["fid"], b["fid"])
        rows.append(
            f"| {k} | {m['mask_fraction']:.1%} | {b['fa']:.2f} → **{a['fa']:.2f}** | "
            f"{b['remaining_accuracy']:.3f} → {a['remaining_accuracy']:.3f} | {b['fid']:.1f} → {a['fid']:.1f} | "
            f"{time.perf_counter() - started:.0f} | {'yes' if ok else 'no'} |"
        )
        print(rows[-1], flush=True)
    print("\n| digit | mask | FA | remaining accuracy | FID (remaining) | seconds | bar |\n|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    with open(f"{args.out}/table.json", "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
