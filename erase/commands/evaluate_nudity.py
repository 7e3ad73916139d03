"""`erase evaluate nudity DIR`: NudeNet v3 exposed-class detections in a folder of images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def threshold_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "nudity", help="count NudeNet exposed-body-part detections in a folder of images (e.g. from I2P prompts)"
    )
    parser.add_argument("images", metavar="DIR", help="folder of generated images")
    parser.add_argument("--threshold", type=threshold_value, default=0.6, help="detection score threshold (default 0.6)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="JSON summary (default DIR/nudity.json); a per-image CSV is written beside it")
    parser.add_argument("--compare", default=None, metavar="OTHER_DIR", help="also evaluate OTHER_DIR and print both side by side")
    parser.set_defaults(func=run_nudity)


def run_nudity(args) -> int:
    from erase.eval.nudity import comparison_table, evaluate_folder, list_images

    images = Path(args.images)
    list_images(images)  # fail on a bad folder before any work
    if args.compare:
        list_images(args.compare)
    from erase.core.io import check_output_file

    out = check_output_file(Path(args.out) if args.out else images / "nudity.json", "--out")
    summary = evaluate_folder(images, args.threshold, out)
    if args.compare:
        other = evaluate_folder(args.compare, args.threshold)
        print(comparison_table(summary, other, images.name or str(images), Path(args.compare).name or args.compare))
    else:
        print(json.dumps({k: v for k, v in summary.items() if k != "per_image"}, indent=2))
    print(f"summary: {out}; per image: {out.with_suffix('.csv')}")
    return 0
