"""`erase export lora RUN_DIR --rank R [--out FILE]`: an `erase sd` erasure as a LoRA adapter for diffusers."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export an erasure in another form (lora: a diffusers LoRA adapter)")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT")
    formats.required = True
    lora = formats.add_parser("lora", help="low-rank approximation of an `erase sd` run's UNet change, for "
                                           "pipe.load_lora_weights")
    lora.add_argument("run", metavar="RUN_DIR", help="run folder written by `erase sd` (holds patch.safetensors)")
    lora.add_argument("--rank", type=lora_rank, required=True, metavar="R",
                      help="LoRA rank per layer (capped at the layer's own), or 'full' for the exact change")
    lora.add_argument("--out", default=None, metavar="FILE",
                      help="adapter file (default RUN_DIR/lora-rR.safetensors, RUN_DIR/lora-full.safetensors)")
    lora.add_argument("--base", default=None, metavar="MODEL",
                      help="the base model, when it is no longer where the run found it (checked by fingerprint)")
    lora.set_defaults(func=run_lora)


def lora_rank(text: str) -> int | None:
    """argparse type: a whole number ≥ 1, or 'full' (None)."""
    from erase.errors import UserError
    from erase.lora import parse_rank

    try:
        return parse_rank(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_lora(args) -> int:
    from erase.core.io import check_output_file
    from erase.lora import export_lora, summary

    if args.out:
        check_output_file(args.out, "--out")
    print(summary(export_lora(args.run, args.rank, out=args.out, base=args.base)))
    return 0
