"""SFR-on step speed, FLOP utilisation and peak memory at Stable Diffusion v1.4 size.

The UNet is SD v1.4's architecture (UNet2DConditionModel, 859.5M parameters) with random weights,
trained on random 4×64×64 latents (512×512 images) and random 77×768 prompt embeddings: one step's
cost does not depend on the weights. The step is the recipe's (pipelines/sd-v1-4-nudity.toml):
full UNet, Adam lr 1e-5, the concept-mapping forget loss (a no-grad forward on the anchor prompt, a
forward and backward on the forget prompt, mask, clip) then a remain step (forward, backward, clip),
bf16 autocast through Accelerate, the shared loop `erase.core.sfron.unlearn`.

Each setting runs in its own process (peak memory per setting). A setting is a name such as
`b2`, `b8-ckpt`, `b4-ckpt0-cl`: b<N> the batch, ckpt gradient checkpointing of every UNet block,
ckpt0 only of the outermost (64×64) blocks, cl channels-last weights, compile `nn.Module.compile`.

Utilisation = model FLOPs per step (counted by torch's FlopCounterMode at batch 1 and scaled by the
batch; recomputation under checkpointing is not counted) / seconds per step / the card's dense
bf16 peak. The driver also times a plain 8192³ bf16 matmul, the achievable reference.

    python bench/sd_step_speed.py                                   # on the GPU (a few minutes)
    python bench/sd_step_speed.py --tiny --device cpu --settings b2,b2-ckpt   # CPU smoke check
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
DEFAULT_SETTINGS = "b2,b16-ckpt,b8-compile,b2-ckpt,b4-ckpt0,b8,b8-ckpt"
# Dense bf16 peaks (TFLOP/s) from the vendors' data sheets, matched on torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4), ("A100", 312.0),
                    ("L40S", 362.1), ("RTX 4090", 165.2), ("A10G", 70.0), ("L4", 121.0)]

SD_V1_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu",
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
)
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
)


def parse_setting(name: str) -> dict:
    parts = name.split("-")
    if not parts[0].startswith("b") or not parts[0][1:].isdigit():
        raise SystemExit(f"a setting starts with b<batch>, got {name!r}")
    options = set(parts[1:])
    unknown = options - {"ckpt", "ckpt0", "cl", "compile"}
    if unknown:
        raise SystemExit(f"unknown option(s) {sorted(unknown)} in {name!r}")
    return {"batch": int(parts[0][1:]), **{o: o in options for o in ("ckpt", "ckpt0", "cl", "compile")}}


def bf16_peak(device_name: str) -> float | None:
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in device_name:
            return tflops * 1e12
    return None


def step_flops(unet, forget_objective, remain_loss, forget_batch, remain_batch, accelerator) -> float:
    """FLOPs of one SFR-on step's model work (forward/backward of both steps) on these batches."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with accelerator.autocast():
            objective, _ = forget_objective(unet, forget_batch)
        objective.backward()
        with accelerator.autocast():
            loss = remain_loss(unet, remain_batch).mean()
        loss.backward()
    unet.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    return float(counter.get_total_flops())


def enable_checkpointing(unet, outermost_only: bool) -> None:
    """Recompute block activations in the backward pass: all blocks, or only the 64×64 ones."""
    unet.enable_gradient_checkpointing()
    if outermost_only:
        outer = {unet.down_blocks[0], unet.up_blocks[-1]}
        for block in list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks):
            if block not in outer:
                block.gradient_checkpointing = False


def measure(name: str, tiny: bool, device: str, steps: int, warmup: int) -> dict:
    """One setting, in this process."""
    import torch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from torch.utils.data import DataLoader, TensorDataset

    from erase.core.fisher import fisher_diagonal
    from erase.core.losses import descent_objective
    from erase.core.saliency import mask_stats, saliency_mask
    from erase.core.sfron import SFRonConfig, unlearn
    from erase.families import sd

    setting = parse_setting(name)
    batch = setting["batch"]
    accelerator = Accelerator(mixed_precision="bf16", cpu=device == "cpu")
    cuda = accelerator.device.type == "cuda"
    torch.manual_seed(0)
    with torch.device(accelerator.device):  # random init on the GPU: seconds, not a minute
        unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD_V1_UNET))
    unet.requires_grad_(True)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    side, channels, text_dim = unet.config.sample_size, unet.config.in_channels, unet.config.cross_attention_dim
    n = batch * 4
    forget_set = TensorDataset(torch.randn(n, channels, side, side), torch.randn(n, 77, text_dim), torch.randn(n, 77, text_dim))
    remain_set = TensorDataset(torch.randn(n, channels, side, side), torch.randn(n, 77, text_dim))
    forget = DataLoader(forget_set, batch_size=batch, shuffle=True, drop_last=True, pin_memory=cuda)
    remain = DataLoader(remain_set, batch_size=batch, shuffle=True, drop_last=True, pin_memory=cuda)
    forget_objective = descent_objective(sd.mapping_loss(scheduler))
    remain_loss = sd.epsilon_loss(scheduler)

    one_forget = [t[:1].to(accelerator.device) for t in forget_set.tensors]
    one_remain = [t[:1].to(accelerator.device) for t in remain_set.tensors]
    flops_per_sample = step_flops(unet, forget_objective, remain_loss, one_forget, one_remain, accelerator)

    def on_device(batches):
        for b in batches:
            yield [t.to(accelerator.device) for t in b]

    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    fisher_f = fisher_diagonal(unet, remain_loss, on_device(forget), accelerator=accelerator, num_batches=2, show_progress=False)
    fisher_r = fisher_diagonal(unet, remain_loss, on_device(remain), accelerator=accelerator, num_batches=2, show_progress=False)
    if cuda:
        torch.cuda.synchronize()
    fisher_seconds = (time.perf_counter() - started) / 4
    mask = saliency_mask(fisher_f, fisher_r, 1.0)
    del fisher_f, fisher_r
    fisher_peak = None
    if cuda:
        fisher_peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    if setting["ckpt"] or setting["ckpt0"]:
        enable_checkpointing(unet, outermost_only=setting["ckpt0"] and not setting["ckpt"])
    if setting["cl"]:
        unet.to(memory_format=torch.channels_last)
    if setting["compile"]:
        unet.compile()

    stamps = []

    def on_step(step, _model, _record):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    config = SFRonConfig(steps=warmup + steps, lr=1e-5, optimizer="adam", forget_alpha=1.0, decay_forget_alpha=False,
                         grad_clip=1.0, mixed_precision="bf16")
    loop_started = time.perf_counter()
    unlearn(unet, forget_objective, remain_loss, forget, remain, config, mask=mask, accelerator=accelerator,
            on_step=on_step, show_progress=False)
    seconds_per_step = (stamps[-1] - stamps[warmup - 1]) / steps if warmup else (stamps[-1] - loop_started) / steps
    flops_per_step = flops_per_sample * batch
    result = {
        "setting": name, "batch": batch, "gradient_checkpointing": "all" if setting["ckpt"] else "64x64" if setting["ckpt0"] else "none",
        "channels_last": setting["cl"], "compile": setting["compile"],
        "parameters": sum(p.numel() for p in unet.parameters()),
        "mask_fraction": round(mask_stats(mask)["fraction"], 4),
        "fisher_seconds_per_batch": round(fisher_seconds, 4),
        "seconds_per_step": round(seconds_per_step, 4),
        "samples_per_second": round(batch / seconds_per_step, 2),
        "model_tflop_per_step": round(flops_per_step / 1e12, 3),
        "achieved_tflops": round(flops_per_step / seconds_per_step / 1e12, 1),
        "steps_timed": steps,
    }
    if cuda:
        name_ = torch.cuda.get_device_name()
        peak = bf16_peak(name_)
        result.update(
            device=name_,
            bf16_peak_tflops=peak / 1e12 if peak else None,
            utilisation=round(flops_per_step / seconds_per_step / peak, 4) if peak else None,
            peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
            peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2),
            fisher_peak_allocated_gib=round(fisher_peak, 2),
            torch=torch.__version__,
        )
    else:
        result.update(device=f"CPU ({torch.get_num_threads()} threads)", torch=torch.__version__)
    return result


def matmul_tflops() -> float | None:
    """The achievable bf16 rate: an 8192³ matmul, mean of 10 after 3 warm-ups."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.perf_counter() - started) / 1e12


def table(results: list[dict]) -> str:
    lines = ["| setting | batch | checkpointing | s/step | samples/s | TFLOP/s | utilisation | peak alloc. / reserved (GiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        util = f"{100 * r['utilisation']:.1f}%" if r.get("utilisation") else "-"
        memory = f"{r['peak_allocated_gib']:.1f} / {r['peak_reserved_gib']:.1f}" if "peak_allocated_gib" in r else "-"
        lines.append(f"| {r['setting']} | {r['batch']} | {r['gradient_checkpointing']} | {r['seconds_per_step']:.3f} | "
                     f"{r['samples_per_second']:.1f} | {r['achieved_tflops']:.0f} | {util} | {memory} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny UNet of the same class (CPU smoke check)")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=None, help="start no setting after this many seconds")
    parser.add_argument("--setting-timeout-s", type=float, default=180)
    parser.add_argument("--out", default=None, help="append each result here as a JSON line")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a setting, run in this process
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.tiny, args.device, args.steps, args.warmup)), flush=True)
        return 0
    for name in args.settings.split(","):
        parse_setting(name)  # a typo fails now, not after minutes
    started = time.perf_counter()
    reference = matmul_tflops() if args.device == "auto" else None
    if reference:
        print(f"8192^3 bf16 matmul: {reference:.0f} TFLOP/s", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    results = []
    for name in args.settings.split(","):
        if args.budget_s and time.perf_counter() - started > args.budget_s:
            print(f"{name}: skipped (time budget spent)", flush=True)
            continue
        command = [sys.executable, __file__, "--one", name, "--device", args.device, "--steps", str(args.steps),
                   "--warmup", str(args.warmup)] + (["--tiny"] if args.tiny else [])
        try:
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=args.setting_timeout_s)
        except subprocess.TimeoutExpired:
            print(f"{name}: timed out after {args.setting_timeout_s:.0f} s", flush=True)
            continue
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode != 0 or not line:
            error = done.stderr.strip().splitlines()[-1:] or ["no output"]
            print(f"{name}: failed: {error[0][:300]}", flush=True)
            continue
        result = json.loads(line[-1][len("RESULT "):])
        result["matmul_reference_tflops"] = round(reference, 1) if reference else None
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps(result) + "\n")
    print(table(results))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
