"""An erasure as LoRA adapters of several ranks, judged like the demo (BENCHMARKS.md, "Erasures as LoRA adapters").

Takes a finished `erase demo` / `erase sd` run on the bundled text-to-image model (default runs/demo),
exports its UNet change as adapters of the given ranks (erase.lora.export_lora), loads each into the
ORIGINAL pipeline with plain diffusers (`load_lora_weights`, `set_adapters`) and judges it with the
run's own evaluation (DigitJudge on the run's prompt sets, seeds, guidance and steps): FA on the forget
prompts, FA on the held-out paraphrases, remaining accuracy, FID — beside the original and the full
erased model judged the same way. Also reports each adapter's size against the patch and the UNet and
the relative error ‖ΔW − ΔW_r‖/‖ΔW‖ of the LoRA-expressible change.

    .venv/bin/erase demo --out runs/demo
    OMP_NUM_THREADS=1 .venv/bin/python bench/lora_ranks.py --run runs/demo
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from erase.eval.report import format_table
from erase.families import sd
from erase.lora import export_lora, parse_rank
from erase.recipes import load_recipe
from erase.workflows.sd import Settings, cached_images
from erase.workflows.sd_digits import DigitJudge

METRICS = ("fa", "fa_paraphrase", "remaining_accuracy", "fid")


def judge_pipeline(pipeline, settings: Settings, judge: DigitJudge, work: Path, name: str) -> dict:
    """The run's judged figures for one pipeline (images regenerated into work/samples/name)."""

    def generate(rows, folder, samples):
        shutil.rmtree(folder, ignore_errors=True)
        return cached_images(pipeline, settings, rows, folder, False, guidance=settings.eval_guidance,
                             steps=settings.eval_steps, samples=samples)

    result = judge.evaluate(generate, work, name)
    return {key: result[key] for key in METRICS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/demo", help="finished erase demo / erase sd run on assets/digits-sd")
    parser.add_argument("--ranks", default="1,4,16,full", help="comma-separated ranks ('full': the exact change)")
    parser.add_argument("--weights", default="0,0.5,1", help="comma-separated adapter weights")
    parser.add_argument("--work", default=None, help="folder for adapters and images (default RUN/lora-bench)")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not (run / "metrics.json").is_file():
        sys.exit(f"{run} holds no finished run; make one with `erase demo --out {run}`")
    ranks = [parse_rank(r) for r in args.ranks.split(",")]
    weights = [float(w) for w in args.weights.split(",")]
    work = Path(args.work or run / "lora-bench")
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    recipe = load_recipe(run / "config.toml")
    recipe.setdefault("output", {})["dir"] = str(work)
    settings = Settings(recipe)
    if settings.digit_sets is None:
        sys.exit(f"{run} is not a run on the bundled text-to-image model (its recipe has no [digits] section)")
    judge = DigitJudge(settings.digit_sets, settings.eval_samples, settings.eval_remain_samples, settings.eval_seed)
    metrics = json.loads((run / "metrics.json").read_text())
    unet_bytes = metrics["patch"]["unet_bytes"]

    started = time.perf_counter()
    rows, results = [], {"run": str(run), "model": settings.model, "recorded": {k: metrics[k] for k in ("before", "after")}}
    erased, _ = sd.load_pipeline(run / "model")
    settings.resolve_size(erased)
    results["erased"] = judge_pipeline(erased, settings, judge, work, "erased")
    del erased
    pipeline, _ = sd.load_pipeline(settings.model)
    results["original"] = judge_pipeline(pipeline, settings, judge, work, "original")
    patch_bytes = (run / "patch.safetensors").stat().st_size
    rows.append(("original", "", "", "", "", *(results["original"][k] for k in METRICS)))
    rows.append(("erased model", f"{unet_bytes / 2**20:.3f} (UNet)", "", "", "", *(results["erased"][k] for k in METRICS)))
    rows.append(("patch", f"{patch_bytes / 2**20:.3f}", "", "", "", "", "", "", ""))
    results["adapters"] = []
    for rank in ranks:
        label = "full" if rank is None else str(rank)
        stats = export_lora(run, rank, out=work / f"lora-{label}.safetensors")
        pipeline.load_lora_weights(stats["file"], adapter_name=f"r{label}")
        for weight in weights:
            pipeline.set_adapters([f"r{label}"], adapter_weights=[weight])
            judged = judge_pipeline(pipeline, settings, judge, work, f"r{label}-w{weight:g}")
            results["adapters"].append({"rank": label, "weight": weight, **judged,
                                        **{k: stats[k] for k in ("bytes", "parameters", "relative_error", "layers")}})
            rows.append((f"LoRA rank {label}", f"{stats['bytes'] / 2**20:.3f}", f"{stats['parameters']:,}",
                         f"{stats['relative_error']:.4f}", f"{weight:g}", *(judged[k] for k in METRICS)))
        pipeline.delete_adapters([f"r{label}"])
        results["not_expressed"] = stats["not_expressed"]
    left = results["not_expressed"]
    print(format_table(rows, ("model", "MiB", "LoRA params", "‖ΔW−ΔW_r‖/‖ΔW‖", "weight", "FA forget",
                              "FA paraphrase", "remaining acc", "FID")))
    print(f"not in any adapter: {left['tensors']} changed norm/bias tensors, {left['fraction']:.4f} of ‖ΔW‖ over the "
          f"whole UNet; UNet {unet_bytes / 2**20:.3f} MiB, patch {patch_bytes / 2**20:.3f} MiB; "
          f"{time.perf_counter() - started:.0f} s")
    for entry in results["adapters"]:
        if entry["weight"] == 1:
            gap = abs(entry["fa"] - results["erased"]["fa"])
            print(f"rank {entry['rank']}, weight 1: |FA − FA(erased)| = {gap:.3f} ({'within' if gap <= 0.05 else 'NOT within'} 0.05)")
        if entry["weight"] == 0:
            same = entry["fa"] == results["original"]["fa"]
            print(f"rank {entry['rank']}, weight 0: FA {entry['fa']:.3f} vs original {results['original']['fa']:.3f}"
                  f" ({'equal' if same else 'DIFFERENT'})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
