"""SFR-on speed and memory at full size: DDPM CIFAR-10 (35.7M-parameter UNet, 32×32 images) and
DiT-XL/2 (750M-parameter transformer on cached 32×32×4 latents), fp32 vs bf16.

Architectures come with random weights from the presets (`--random-init` in the CLI), data are
random tensors of the right shapes: the cost of one SFR-on step does not depend on the weights.
Per setting: the Fisher pass (fp32, as the workflows run it) per batch, SFR-on steps per second
after a warm-up, and peak memory. Each setting runs in its own process (Accelerate fixes the mixed
precision once per process, and peak memory is then per setting).

    python bench/full_size_speed.py                          # full size on the GPU (a few minutes)
    python bench/full_size_speed.py --tiny --device cpu      # smoke check: tiny models on the CPU
    python bench/full_size_speed.py --out bench/full_size_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# batch sizes: DDPM the paper's 128; DiT 4 latents per batch (the recipe; the official script uses 1)
FULL = {"ddpm": dict(preset="cifar10", batch=128, optimizer="adam"), "dit": dict(preset="DiT-XL/2", batch=4, optimizer="adamw")}
TINY = {"ddpm": dict(preset="tiny", batch=8, optimizer="adam"), "dit": dict(preset="tiny", batch=4, optimizer="adamw")}


def measure(model_name: str, precision: str, tiny: bool, device: str, steps: int, warmup: int, fisher_batches: int) -> dict:
    """One setting, in this process."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, TensorDataset

    from erase.core.fisher import fisher_diagonal
    from erase.core.losses import ascent_objective
    from erase.core.saliency import mask_stats, saliency_mask
    from erase.core.sfron import SFRonConfig, unlearn
    from erase.families import ddpm, dit

    setting = (TINY if tiny else FULL)[model_name]
    torch.manual_seed(0)
    if model_name == "ddpm":
        model = ddpm.build_unet(setting["preset"], num_classes=10)
        shape = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
        num_classes, loss_fn = 10, ddpm.epsilon_loss(ddpm.build_scheduler())
    else:
        from diffusers import DiTTransformer2DModel

        model = DiTTransformer2DModel(**dit.PRESETS[setting["preset"]]["transformer"])
        shape = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
        num_classes, loss_fn = 1000, dit.epsilon_loss(dit.build_scheduler())
        dit.set_label_dropout(model, 0.0)
    batch = setting["batch"]
    n = batch * 4
    data = torch.randn(n, *shape).clamp(-1, 1)
    forget = DataLoader(TensorDataset(data, torch.zeros(n, dtype=torch.long)), batch_size=batch, shuffle=True)
    remain = DataLoader(TensorDataset(data, torch.randint(1, num_classes, (n,))), batch_size=batch, shuffle=True)

    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=device == "cpu")
    model.to(accelerator.device).requires_grad_(True)
    cuda = accelerator.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    started = time.perf_counter()
    fisher_f = fisher_diagonal(model, loss_fn, forget, num_batches=fisher_batches, show_progress=False)
    fisher_r = fisher_diagonal(model, loss_fn, remain, num_batches=fisher_batches, show_progress=False)
    if cuda:
        torch.cuda.synchronize()
    fisher_seconds = (time.perf_counter() - started) / (2 * fisher_batches)
    mask = saliency_mask(fisher_f, fisher_r, 1.0)
    del fisher_f, fisher_r

    stamps = []

    def on_step(step, _model, _record):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    config = SFRonConfig(steps=warmup + steps, lr=1e-4, optimizer=setting["optimizer"],
                         forget_alpha=10.0 if model_name == "ddpm" else 1e-3,
                         mixed_precision="bf16" if precision == "bf16" else "no")
    unlearn(model, ascent_objective(loss_fn, 0.5), loss_fn, forget, remain, config, mask=mask,
            accelerator=accelerator, on_step=on_step, show_progress=False)
    timed = stamps[warmup:]
    seconds_per_step = (timed[-1] - stamps[warmup - 1]) / len(timed) if warmup else (timed[-1] - started) / len(timed)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        device_name = torch.cuda.get_device_name()
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process
        device_name = f"CPU ({torch.get_num_threads()} threads)"
    return {
        "model": f"{'DDPM' if model_name == 'ddpm' else 'DiT'} {setting['preset']}",
        "precision": precision,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "mask_fraction": round(mask_stats(mask)["fraction"], 4),
        "fisher_seconds_per_batch": round(fisher_seconds, 4),
        "sfron_steps_per_second": round(1.0 / seconds_per_step, 3),
        "sfron_seconds_per_step": round(seconds_per_step, 4),
        "peak_memory_gib": round(peak, 3),
        "peak_memory_kind": "GPU max_memory_allocated" if cuda else "process max RSS",
        "device": device_name,
        "steps_timed": len(timed),
    }


def table(results: list[dict]) -> str:
    lines = ["| model | precision | params | batch | Fisher s/batch | SFR-on steps/s | peak memory (GiB) | device |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['precision']} | {r['parameters']:,} | {r['batch']} | "
                     f"{r['fisher_seconds_per_batch']:.3f} | {r['sfron_steps_per_second']:.2f} | "
                     f"{r['peak_memory_gib']:.2f} ({'GPU' if 'GPU' in r['peak_memory_kind'] else 'RSS'}) | {r['device']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models of the same classes (CPU smoke check)")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument("--models", default="ddpm,dit")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=None, help="timed SFR-on steps (full 20, tiny 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--fisher-batches", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # model:precision, run in this process
    args = parser.parse_args(argv)
    steps = args.steps or (10 if args.tiny else 20)
    if args.one:
        model_name, precision = args.one.split(":")
        result = measure(model_name, precision, args.tiny, args.device, steps, args.warmup, args.fisher_batches)
        print("RESULT " + json.dumps(result))
        return 0
    results = []
    for model_name in args.models.split(","):
        for precision in args.precisions.split(","):
            command = [sys.executable, __file__, "--one", f"{model_name}:{precision}", "--device", args.device,
                       "--steps", str(steps), "--warmup", str(args.warmup), "--fisher-batches", str(args.fisher_batches)]
            if args.tiny:
                command.append("--tiny")
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode != 0 or not line:
                print(f"{model_name} {precision} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            results.append(json.loads(line[-1][len("RESULT "):]))
            print(json.dumps(results[-1]), flush=True)
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
