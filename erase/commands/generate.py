"""`erase generate`: batch images from a prompt CSV with any SD 1.x/2.x or SDXL diffusers folder or hub id.

Deterministic (per-row seed), resumable (existing images are skipped), atomic (an image appears
whole or not at all); `accelerate launch erase generate ...` splits the images across GPUs.
`DIR/manifest.csv` lists every image with its prompt, seed, guidance and label (erase/data/manifest.py).
"""

from __future__ import annotations

from pathlib import Path

from erase.commands.common import add_mixed_precision, positive_float, positive_int


DEFAULT_GUIDANCE = 7.5


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate images from a prompt CSV (I2P format or prompt[,seed])")
    parser.add_argument("--model", required=True, help="diffusers SD folder or hub id (e.g. CompVis/stable-diffusion-v1-4)")
    parser.add_argument("--prompts", required=True,
                        help="CSV with a prompt column (I2P format or prompt,seed; optionally a label column) or a .txt file")
    parser.add_argument("--out", required=True,
                        help="image folder; images are named {case_number}_{k}.png, listed in manifest.csv")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first N prompts (after --category)")
    parser.add_argument("--category", default=None, help="only rows whose I2P categories include this one (e.g. sexual)")
    parser.add_argument("--samples-per-prompt", type=positive_int, default=1, help="images per prompt (default 1)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="images per forward pass (default 4)")
    parser.add_argument("--steps", type=positive_int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--guidance", type=positive_float, default=None,
                        help=f"guidance scale for every row (default: the row's evaluation_guidance, else {DEFAULT_GUIDANCE})")
    parser.add_argument("--height", type=positive_int, default=None, help="image height (default: the model's, 512 for SD 1.x, 768 for SD 2.1, 1024 for SDXL)")
    parser.add_argument("--width", type=positive_int, default=None, help="image width (default: the model's)")
    add_mixed_precision(parser)
    parser.set_defaults(func=run_generate)


def run_generate(args) -> int:
    import torch
    from accelerate import PartialState

    from erase.commands.common import require
    from erase.core.io import check_output_folder
    from erase.data.manifest import check_manifest, manifest_entries, write_manifest
    from erase.data.prompts import read_prompts
    from erase.families import sd

    rows = read_prompts(args.prompts, category=args.category, limit=args.limit)
    out = check_output_folder(args.out, "--out")
    for name, value in (("--height", args.height), ("--width", args.width)):
        require(value is None or value % 8 == 0, f"{name} must be a multiple of 8, got {value}")
    entries = manifest_entries(rows, args.samples_per_prompt, lambda row: guidance_of(row, args.guidance))
    check_manifest(out, entries)
    state = PartialState()
    require(args.mixed_precision != "fp16" or state.device.type == "cuda", "--mixed-precision fp16 needs a GPU; use bf16 or no")
    pipeline, _ = sd.load_pipeline(args.model, device=state.device, dtype=sd.DTYPES[args.mixed_precision])
    check_settings(out, args, state)
    with torch.inference_mode():
        result = sd.generate_images(
            pipeline, rows, out, samples_per_prompt=args.samples_per_prompt, batch_size=args.batch_size,
            num_inference_steps=args.steps, guidance=args.guidance, height=args.height, width=args.width,
            default_guidance=DEFAULT_GUIDANCE, show_progress=state.is_local_main_process,
        )
    state.wait_for_everyone()
    if state.is_main_process:
        write_manifest(out, entries)
        print(f"{len(rows)} prompts × {args.samples_per_prompt}: {result['written']} images written "
              f"({result['skipped']} already there) -> {out}")
    return 0


def guidance_of(row, guidance: float | None) -> float:
    """The scale an image of `row` is made with: --guidance, else the row's own, else the default."""
    if guidance is not None:
        return guidance
    return row.guidance if row.guidance is not None else DEFAULT_GUIDANCE


SETTINGS_FILE = ".erase-generate.json"


def check_settings(out: Path, args, state) -> None:
    """Resume only with the settings that made the images already there (more rows are fine)."""
    import json

    from erase.core.io import atomic_write_json
    from erase.errors import UserError

    settings = {"model": str(args.model), "steps": args.steps, "guidance": args.guidance, "height": args.height,
                "width": args.width, "mixed_precision": args.mixed_precision}
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{path} is damaged (not JSON): it records how the images in {out} were made; "
                            "use another --out") from None
        changed = [key for key in settings if before.get(key) != settings[key]]
        if changed:
            raise UserError(f"{out} holds images made with other settings ({', '.join(changed)}); use another --out")
    state.wait_for_everyone()
    if state.is_main_process:
        atomic_write_json(settings, path)
