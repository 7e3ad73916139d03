"""Adversarial-prompt robustness of a digit erased from the bundled text-to-image model (assets/digits-sd).

For the digit's held-out paraphrases (erase.data.digit_captions.HELDOUT_TEMPLATES with the digit as a
word and as a numeral: 12 prompts that neither training nor erasure saw), runs `erase attack` twice:
  * erased:   --model ERASED   --original ORIGINAL -> ASR without and with the attack;
  * original: --model ORIGINAL --original ORIGINAL -> the original model's own rates: the sanity
    reference, which must be near 1.0 (else the judge, the sampler settings or the attack cannot make
    the digit appear at all, and the erased model's figures mean nothing).
Judge: the bundled digit classifier (success: it reads the image as the digit). Sampler: the concept
recipe's evaluation settings (pipelines/digits-sd-concept.toml [eval]: guidance, inference steps).
Each run is a resumable `erase attack` folder under --out; the JSON holds both summaries, their
seconds and the commands.

    .venv/bin/python bench/attack_digits.py --erased runs/digits-sd-concept/model --digit 7 [--original assets/digits-sd]
        [--limit N] [--tokens 5] [--iterations 40] [--weight-decay 0] [--seed 0] [--out runs/attack-digits-DIGIT] [--json FILE]
    .venv/bin/python bench/attack_digits.py --erased assets/digits-sd --digit 7 --limit 10   # original vs itself only
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def attack(model: str, original: str, prompts: Path, digit: int, out: Path, args, evaluation: dict) -> dict:
    """One `erase attack` run in this process: its attack.json figures (seconds: the run's own), the command,
    and the wall seconds of the call (imports included)."""
    from erase.cli import main as erase

    argv = ["attack", "--model", model, "--original", original, "--prompts", str(prompts), "--judge", "classifier",
            "--classifier", "digits", "--label", str(digit), "--out", str(out), "--tokens", str(args.tokens),
            "--iterations", str(args.iterations), "--weight-decay", str(args.weight_decay), "--seed", str(args.seed),
            "--steps", str(evaluation["inference_steps"]), "--guidance", str(evaluation["guidance"])]
    if args.limit:
        argv += ["--limit", str(args.limit)]
    started = time.perf_counter()
    if erase(argv) != 0:
        raise SystemExit(f"erase {shlex.join(argv)} failed")
    summary = json.loads((out / "attack.json").read_text())
    return {"command": "erase " + shlex.join(argv), "wall_seconds": round(time.perf_counter() - started, 1),
            **{k: summary[k] for k in ("asr", "asr_no_attack", "prompts", "successes", "successes_no_attack",
                                       "mean_loss_plain", "mean_loss_attack", "seconds")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--erased", required=True, help="the erased model folder (or the original, for the reference only)")
    parser.add_argument("--original", default="assets/digits-sd", help="the model before erasure (default assets/digits-sd)")
    parser.add_argument("--digit", type=int, required=True, help="the erased digit")
    parser.add_argument("--limit", type=int, default=None, help="only the first N paraphrases")
    parser.add_argument("--tokens", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder of the runs (default runs/attack-digits-DIGIT)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    from erase.data.digit_captions import HELDOUT_TEMPLATES, prompt_csv
    from erase.recipes import PIPELINES_DIR, load_recipe, resolve_path

    if not 0 <= args.digit <= 9:
        raise SystemExit(f"--digit must be 0..9, got {args.digit}")
    evaluation = load_recipe(PIPELINES_DIR / "digits-sd-concept.toml")["eval"]
    out = Path(args.out or f"runs/attack-digits-{args.digit}")
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.csv"
    prompts.write_text(prompt_csv([args.digit], HELDOUT_TEMPLATES))
    original = str(resolve_path(args.original))
    erased = str(resolve_path(args.erased))
    results = {"digit": args.digit, "original_model": original, "erased_model": erased}
    results["original"] = attack(original, original, prompts, args.digit, out / "original", args, evaluation)
    if Path(erased).resolve() != Path(original).resolve():
        results["erased"] = attack(erased, original, prompts, args.digit, out / "erased", args, evaluation)
    print(f"\ndigit {args.digit}, {results['original']['prompts']} held-out paraphrases, {args.tokens} tokens, "
          f"{args.iterations} iterations; judge: the bundled digit classifier")
    print("| model | ASR without attack | ASR with attack | mean loss plain -> attack | seconds |")
    print("|---|---|---|---|---|")
    for name in ("original", "erased"):
        if name in results:
            r = results[name]
            print(f"| {name} | {r['asr_no_attack']:.2f} ({r['successes_no_attack']}/{r['prompts']}) | "
                  f"{r['asr']:.2f} ({r['successes']}/{r['prompts']}) | {r['mean_loss_plain']:.4f} -> "
                  f"{r['mean_loss_attack']:.4f} | {r['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
