"""The whole `erase sd` job at SD v1.4 size, timed phase by phase, and extrapolated to the full recipe.

Builds SD v1.4's architecture from its published configs with random weights (no download: the
UNet, VAE and CLIP text encoder configs below are CompVis/stable-diffusion-v1-4's; the tokenizer is
the byte-level offline one of tests/sd_fixtures.py, padded to 77 tokens as CLIP's), saves it as a
diffusers folder, and runs the real workflow (`erase.workflows.sd.run`, the recipe
pipelines/sd-v1-4-nudity.toml) with fewer images and steps. The cost of generation, the Fisher pass
and a step does not depend on the weights. Reported: seconds per phase (metrics.json `timings`),
images/s of the generation, seconds per Fisher batch, steps/s of the loop, peak GPU memory, and the
extrapolation to the full recipe (1,000 + 1,000 images at 50 sampler steps, Fisher on 500 + 500
batches, 1,000 SFR-on steps) and to the same job with 50 SFR-on steps.

    python bench/sd_job_speed.py                   # one GPU, about 10 minutes; --json FILE keeps the figures
    python bench/sd_job_speed.py --smoke           # tiny pipeline on the CPU, seconds (tests/test_bench_sd_job.py)
    accelerate launch --num_processes N bench/sd_job_speed.py   # the same job split over N GPUs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "tests"))

from sd_step_speed import SD_V1_UNET  # noqa: E402  (one place for SD v1.4's UNet config)

SD_V1_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
    norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SD_V1_TEXT = dict(  # CLIP ViT-L/14's text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
)
SD_V1_SCHEDULER = dict(  # PNDM (PLMS) as shipped with SD v1.4: one UNet evaluation per sampler step
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
)
FULL = {"images": 1000, "fisher_batches": 500, "steps": 1000, "eval_images": 32}  # the recipe, per set


def build_sd_v1(folder: Path, device: str) -> Path:
    """SD v1.4's architecture with random weights, saved (fp32 safetensors, as the hub's main branch)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from sd_fixtures import write_byte_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    if (folder / "model_index.json").is_file():
        return folder
    tokenizer = write_byte_tokenizer(folder.parent / "tokenizer-src")
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds, not minutes
        unet = UNet2DConditionModel(**SD_V1_UNET)
        vae = AutoencoderKL(**SD_V1_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **SD_V1_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=PNDMScheduler(**SD_V1_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny(folder: Path) -> Path:
    from sd_fixtures import build_tiny_sd

    if (folder / "pipeline" / "model_index.json").is_file():
        return folder / "pipeline"
    return build_tiny_sd(folder)


def job_recipe(args, model: Path) -> dict:
    """pipelines/sd-v1-4-nudity.toml with the bench's sizes (and the smoke run's tiny ones)."""
    from erase.recipes import load_recipe

    recipe = load_recipe(REPO / "pipelines" / "sd-v1-4-nudity.toml")
    values = {
        "model.path": str(model), "output.dir": str(args.out / "run"), "data.num_images": args.num_images,
        "data.batch_size": args.batch_size, "data.generate_batch_size": args.generate_batch_size,
        "data.inference_steps": args.inference_steps, "eval.inference_steps": args.inference_steps,
        "sfron.steps": args.steps, "fisher.batches": args.fisher_batches, "fisher.reuse": False,
        "eval.samples": args.eval_samples, "eval.nudenet": False, "sfron.mixed_precision": args.mixed_precision,
    }
    if args.smoke:
        values.update({"data.height": 16, "data.width": 16})
    for dotted, value in values.items():
        section, key = dotted.split(".")
        recipe.setdefault(section, {})[key] = value
    return recipe


def extrapolate(metrics: dict, full_steps: int) -> dict[str, float]:
    """Seconds of each phase for the full recipe: per image, per Fisher batch, per step, as measured."""
    t, images = metrics["timings"], metrics["num_images"]
    made = images["forget"] + images["remain"]
    fisher_batches = 2 * metrics["fisher_batches"]
    eval_images = max(metrics["eval_images"], 1)
    return {
        "generate": t["generate"] / made * 2 * FULL["images"],
        "encode": t["encode"] / made * 2 * FULL["images"],
        "fisher": t["fisher"] / fisher_batches * 2 * FULL["fisher_batches"],
        "loop": t["loop"] / metrics["steps"] * full_steps,
        "evaluate": t["evaluate"] / eval_images * FULL["eval_images"] if metrics["eval_images"] else 0.0,
        "export": t["export"],
    }


def report(metrics: dict, peak: dict) -> str:
    t = metrics["timings"]
    made = metrics["num_images"]["forget"] + metrics["num_images"]["remain"]
    full, short = extrapolate(metrics, FULL["steps"]), extrapolate(metrics, 50)
    lines = [f"{'phase':<9} {'measured s':>10}  {'rate':<24} {'full recipe s':>13} {'50-step job s':>13}"]
    rates = {
        "generate": f"{made / t['generate']:.2f} images/s" if t["generate"] else "",
        "encode": f"{made / t['encode']:.1f} images/s" if t["encode"] else "",
        "fisher": f"{t['fisher'] / (2 * metrics['fisher_batches']):.3f} s/batch",
        "loop": f"{t['steps_per_second']:.2f} steps/s" if t["steps_per_second"] else "",
        "evaluate": f"{metrics['eval_images']} images", "export": "",
    }
    for phase in full:
        lines.append(f"{phase:<9} {t[phase]:>10.1f}  {rates[phase]:<24} {full[phase]:>13.0f} {short[phase]:>13.0f}")
    lines.append(f"{'total':<9} {sum(t[p] for p in full):>10.1f}  {'':<24} {sum(full.values()):>13.0f} "
                 f"{sum(short.values()):>13.0f}")
    lines.append(f"whole run {metrics['seconds']:.1f} s (load and set-up included); processes {metrics['processes']}; "
                 f"peak GPU memory {peak.get('allocated_gib', 0):.1f} GiB allocated, {peak.get('reserved_gib', 0):.1f} GiB reserved")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny pipeline, a few images and steps, on the CPU")
    parser.add_argument("--num-images", type=int, default=None, help="forget images, and as many remain (default 256)")
    parser.add_argument("--steps", type=int, default=None, help="SFR-on steps (default 200)")
    parser.add_argument("--fisher-batches", type=int, default=None, help="batches per Fisher diagonal (default 128)")
    parser.add_argument("--batch-size", type=int, default=2, help="global training batch (the recipe's 2)")
    parser.add_argument("--generate-batch-size", type=int, default=8, help="generation batch (the recipe's 8)")
    parser.add_argument("--inference-steps", type=int, default=None, help="sampler steps (the recipe's 50)")
    parser.add_argument("--eval-samples", type=int, default=None, help="images per prompt before/after (the recipe's 8)")
    parser.add_argument("--mixed-precision", default=None, help="the recipe's bf16 (smoke: no)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "sd-job-speed", help="model and run folder")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    defaults = (dict(num_images=4, steps=2, fisher_batches=2, inference_steps=3, eval_samples=1, mixed_precision="no")
                if args.smoke else
                dict(num_images=256, steps=200, fisher_batches=128, inference_steps=50, eval_samples=8,
                     mixed_precision="bf16"))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    import torch
    from accelerate import PartialState

    from erase.workflows import sd

    state = PartialState(cpu=not torch.cuda.is_available())  # under accelerate launch: one process per GPU (or CPU)
    started = time.perf_counter()
    model = args.out / ("tiny-sd" if args.smoke else "sd-v1-4-random")
    if state.is_main_process:  # the others wait for the folder
        build_tiny(model) if args.smoke else build_sd_v1(model, "cuda" if torch.cuda.is_available() else "cpu")
    state.wait_for_everyone()
    model = model / "pipeline" if args.smoke else model
    build_seconds = time.perf_counter() - started
    cuda = torch.cuda.is_available() and not args.smoke
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    metrics = sd.run(job_recipe(args, model), show_progress=False)
    if not state.is_main_process:
        return {}
    peak = {}
    if cuda:
        peak = {"allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                "reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "device": torch.cuda.get_device_name()}
    metrics = {**metrics, "fisher_batches": min(args.fisher_batches, args.num_images // args.batch_size),
               "eval_images": 4 * args.eval_samples}  # forget and remain prompt, before and after
    result = {
        "command": "python bench/sd_job_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": peak.get("device", "cpu"), "build_seconds": round(build_seconds, 1),
        "num_images": metrics["num_images"], "steps": metrics["steps"], "fisher_batches": metrics["fisher_batches"],
        "inference_steps": args.inference_steps, "batch_size": args.batch_size, "processes": metrics["processes"],
        "seconds": metrics["seconds"], "timings": metrics["timings"], "peak": peak,
        "full_recipe": {k: round(v, 1) for k, v in extrapolate(metrics, FULL["steps"]).items()},
        "fifty_steps": {k: round(v, 1) for k, v in extrapolate(metrics, 50).items()},
    }
    print(f"device: {result['device']}; model built/found in {build_seconds:.0f} s; {metrics['num_images']} images at "
          f"{args.inference_steps} sampler steps, Fisher {metrics['fisher_batches']}+{metrics['fisher_batches']} "
          f"batches, {metrics['steps']} steps at batch {args.batch_size}")
    print(report(metrics, peak))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
