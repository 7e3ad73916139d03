"""How much self-generated data the concept erasure needs: the demo recipe on the bundled text-to-image
model (pipelines/digits-sd-concept.toml, assets/digits-sd) against the number of self-generated images
and the sampler and steps that generate them.

Each row is one `erase run` of the recipe with `data.num_images`, `data.sampler` and
`data.inference_steps` set (and `data.seed` = `sfron.seed` = the seed); the evaluation is the recipe's
(the pipeline's own sampler, fixed seeds), so rows compare. Reported: after.fa, after.fa_paraphrase,
after.remaining_accuracy, after.fid, and the generate / whole-run seconds from metrics.json.

    OMP_NUM_THREADS=1 python bench/sd_data_levers.py --images 8,16,32,64,128 --seeds 0,1
    OMP_NUM_THREADS=1 python bench/sd_data_levers.py --images 64 --samplers pipeline:20,ddim:10,dpm-multistep:10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_one(images: int, sampler: str, steps: int, seed: int, out: Path, sets: list[str]) -> dict:
    from erase.recipes import apply_overrides, load_recipe
    from erase.workflows import sd

    recipe = load_recipe(REPO / "pipelines" / "digits-sd-concept.toml")
    overrides = [f"data.num_images={images}", f'data.sampler="{sampler}"', f"data.inference_steps={steps}",
                 f"data.seed={seed}", f"sfron.seed={seed}", f'output.dir="{out}"', *sets]
    metrics = sd.run(apply_overrides(recipe, overrides), show_progress=False)
    after = metrics["after"]
    return {"images": images, "sampler": sampler, "steps": steps, "seed": seed, "fa": after["fa"],
            "fa_paraphrase": after["fa_paraphrase"], "remaining_accuracy": after["remaining_accuracy"],
            "fid": after["fid"], "fid_before": metrics["before"]["fid"], "generate_s": metrics["timings"]["generate"],
            "seconds": metrics["seconds"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="8,16,32,64,128", help="data.num_images values (comma-separated)")
    parser.add_argument("--samplers", default="pipeline:20", help="SAMPLER:STEPS pairs (data.sampler, data.inference_steps)")
    parser.add_argument("--seeds", default="0", help="data.seed = sfron.seed values")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "sd-data-levers",
                        help="run folder, shared by the rows (the 'before' images are generated once)")
    parser.add_argument("--json", type=Path, default=None, help="append each row here as a JSON line")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'images':>6} {'sampler':<14} {'steps':>5} {'seed':>4} {'FA':>5} {'FA para':>7} {'remain acc':>10} "
          f"{'FID':>6} {'gen s':>6} {'run s':>6}", flush=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for pair in args.samplers.split(","):
            sampler, steps = pair.split(":")
            for images in [int(n) for n in args.images.split(",")]:
                row = run_one(images, sampler, int(steps), seed, args.out, args.sets)
                rows.append(row)
                print(f"{images:>6} {sampler:<14} {steps:>5} {seed:>4} {row['fa']:>5.2f} {row['fa_paraphrase']:>7.2f} "
                      f"{row['remaining_accuracy']:>10.3f} {row['fid']:>6.1f} {row['generate_s']:>6.1f} "
                      f"{row['seconds']:>6.1f}", flush=True)
                if args.json:
                    with args.json.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
