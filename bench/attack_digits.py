"""Adversarial-prompt robustness of a digit erased from the bundled text-to-image model (assets/digits-sd).

For the digit's held-out paraphrases (erase.data.digit_captions.HELDOUT_TEMPLATES with the digit as a
word and as a numeral: 12 prompts that neither training nor erasure saw), runs `erase attack` on:
  * original: --model ORIGINAL --original ORIGINAL -> the original model's own rates: the sanity
    reference, which must be near 1.0 (else the judge, the sampler settings or the attack cannot make
    the digit appear at all, and the erased models' figures mean nothing);
  * each erased model: --model ERASED --original ORIGINAL -> ASR without and with the attack.
Erased models are given (--erased [NAME=]DIR, repeatable) or built (--methods): one `erase sd` run per
method of the concept benchmark (bench/concept_steps.py) with its keys and its steps to erase the digit
from bench/results/concept_steps.json (a method that never met the bar: its last step), and SFR-on at
--sfron-steps more steps (the demo recipe's 25, then 50, 100). The workflow reseeds before its loop, so
each built model is the benchmark's model at that step: its metrics.json repeats the benchmark's figures.
Judge: the bundled digit classifier (success: it reads the image as the digit). Sampler: the concept
recipe's evaluation settings (pipelines/digits-sd-concept.toml [eval]: guidance, inference steps).
Each run is a resumable folder under --out; the JSON holds every summary, its seconds and its commands.

    OMP_NUM_THREADS=1 .venv/bin/python bench/attack_digits.py --digit 7 --methods --json bench/results/attack_digits.json
    .venv/bin/python bench/attack_digits.py --digit 7 --erased runs/digits-sd-concept/model [--original assets/digits-sd]
        [--limit N] [--tokens 5] [--iterations 40] [--lr 0.01] [--weight-decay 0] [--seed 0] [--out runs/attack-digits-DIGIT] [--tag T]
    .venv/bin/python bench/attack_digits.py --digit 7 --limit 10   # the original against itself only
    .venv/bin/python bench/attack_digits.py --digit 7 --report bench/results/attack_digits.json bench/results/attack_digits_conditioning.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONCEPT_RESULTS = REPO / "bench" / "results" / "concept_steps.json"
RECIPE = REPO / "pipelines" / "digits-sd-concept.toml"
AFTER = ("fa", "fa_paraphrase", "remaining_accuracy", "fid")


def attack(model: str, original: str, prompts: Path, digit: int, out: Path, args, evaluation: dict) -> dict:
    """One `erase attack` run in this process: its attack.json figures (seconds: the run's own), the command,
    and the wall seconds of the call (imports included)."""
    from erase.cli import main as erase

    argv = ["attack", "--model", model, "--original", original, "--prompts", str(prompts), "--judge", "classifier",
            "--classifier", "digits", "--label", str(digit), "--out", str(out), "--tokens", str(args.tokens),
            "--iterations", str(args.iterations), "--lr", str(args.lr), "--space", args.space, "--objective", args.objective, "--weight-decay", str(args.weight_decay), "--seed", str(args.seed),
            "--steps", str(evaluation["inference_steps"]), "--guidance", str(evaluation["guidance"])]
    if args.limit:
        argv += ["--limit", str(args.limit)]
    started = time.perf_counter()
    if erase(argv) != 0:
        raise SystemExit(f"erase {shlex.join(argv)} failed")
    summary = json.loads((out / "attack.json").read_text())
    # the searches' own seconds, summed from their records: a resumed run's `seconds` counts only its new work
    search = sum(json.loads(p.read_text())["seconds"] for p in (out / "prompts").glob("*.json"))
    return {"command": "erase " + shlex.join(argv), "wall_seconds": round(time.perf_counter() - started, 1),
            "search_seconds": round(search, 1),
            **{k: summary[k] for k in ("asr", "asr_no_attack", "prompts", "successes", "successes_no_attack",
                                       "mean_loss_plain", "mean_loss_attack", "seconds")}}


def method_models(digit: int, sfron_steps: list[int], loop_seeds: list[int]) -> list[dict]:
    """What to build: each concept-benchmark method at its steps to erase `digit`, then SFR-on at more steps,
    then each method's runs with other loop seeds (the benchmark's "seed S" rows) at their own steps."""
    sys.path.insert(0, str(REPO / "bench"))
    from concept_steps import METHODS

    results = json.loads(CONCEPT_RESULTS.read_text())["results"]
    rows = [r for r in results if r["concept"] == [digit] and not r["tag"]]
    if not rows:
        raise SystemExit(f"{CONCEPT_RESULTS} has no untagged rows for digit {digit}: run bench/concept_steps.py --concepts {digit}")
    models = []

    def add(row, name: str, extra: list[str]):
        steps = row["hit_step"] or max(point["step"] for point in row["curve"])
        bench = row["hit"] if row["hit_step"] else None
        models.append({"name": name, "label": f"{row['label']}, {steps} steps" + ("" if bench else " (not erased)"),
                       "sets": [*METHODS[row["method"]][1], *extra, f"sfron.steps={steps}"], "steps": steps, "bench": bench})

    for row in rows:
        add(row, row["method"], [])
    for steps in sfron_steps:
        models.append({"name": f"sfron-{steps}", "label": f"SFR-on, {steps} steps", "sets": [f"sfron.steps={steps}"],
                       "steps": steps, "bench": None})
    for seed in loop_seeds:
        for row in (r for r in results if r["concept"] == [digit] and r["tag"] == f" seed {seed}"):
            add(row, f"{row['method']}-seed{seed}", [f"sfron.seed={seed}"])
    return models


def build(model: dict, digit: int, folder: Path, data_from: Path | None) -> dict:
    """`erase sd` on the demo recipe with the model's keys (skipped when its metrics are there); its after figures."""
    from erase.cli import main as erase

    argv = ["sd", "--recipe", str(RECIPE), "--out", str(folder), "--set", f"digits.forget=[{digit}]", *[
        part for key in model["sets"] for part in ("--set", key)]]
    if not (folder / "metrics.json").is_file():
        if data_from is not None and not (folder / "data").exists():  # the same self-generated images: reuse them
            shutil.copytree(data_from, folder / "data")
        if erase(argv) != 0:
            raise SystemExit(f"erase {shlex.join(argv)} failed")
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"command": "erase " + shlex.join(argv), "after": {k: metrics["after"][k] for k in AFTER},
            "before": {k: metrics["before"][k] for k in AFTER}}


def attack_name(results: dict) -> str:
    """The column name of a results file: its search space and objective, read from its commands."""
    argv = shlex.split(results["models"]["original"]["command"])

    def option(name, default):
        return argv[argv.index(name) + 1] if name in argv else default

    space, objective = option("--space", "tokens"), option("--objective", "image")
    return space if objective == "image" else f"{space}, {objective}"


def report(paths: list[str]) -> str:
    """One markdown table from results files of one digit: a row per model (in first-seen order), the
    erasure's figures and the plain prompts' count, then each file's successes under its attack."""
    files = [json.loads(Path(p).read_text()) for p in paths]
    if len({f["digit"] for f in files}) != 1:
        raise SystemExit("--report takes results files of one digit")
    names = list(dict.fromkeys(name for f in files for name in f["models"]))
    head = ["model", "after erasure: FA / para. FA / other digits / FID", "plain prompts",
            *(attack_name(f) for f in files), "loss plain → attack, per attack"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]

    def count(n: int) -> str:
        return f"{n}/12" if n else "0"

    for name in names:
        rows = [f["models"].get(name) for f in files]
        first = next(r for r in rows if r)
        after = " / ".join(f"{first['after'][k]:.3f}" if k != "fid" else f"{first['after'][k]:.1f}"
                           for k in AFTER) if "after" in first else "—"
        cells = [count(r["successes"]) if r else "—" for r in rows]
        losses = "; ".join(f"{r['mean_loss_plain']:.4f} → {r['mean_loss_attack']:.4f}" if r else "—" for r in rows)
        lines.append(f"| {first['label']} | {after} | {count(first['successes_no_attack'])} | {' | '.join(cells)} | {losses} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--erased", action="append", default=[], metavar="[NAME=]DIR",
                        help="an erased model folder (repeatable); none and no --methods: the original only")
    parser.add_argument("--methods", action="store_true",
                        help="build and attack every method of the concept benchmark, and SFR-on at --sfron-steps")
    parser.add_argument("--sfron-steps", type=int, nargs="*", default=[25, 50, 100])
    parser.add_argument("--loop-seeds", type=int, nargs="*", default=[],
                        help="--methods: also each method with these loop seeds (the concept benchmark's 'seed S' rows)")
    parser.add_argument("--original", default="assets/digits-sd", help="the model before erasure (default assets/digits-sd)")
    parser.add_argument("--digit", type=int, required=True, help="the erased digit")
    parser.add_argument("--limit", type=int, default=None, help="only the first N paraphrases")
    parser.add_argument("--tokens", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--space", choices=["tokens", "embeddings", "conditioning"], default="tokens")
    parser.add_argument("--objective", choices=["image", "trajectory"], default="image")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder of the runs (default runs/attack-digits-DIGIT)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--tag", default="", help="another attack setting on the same models: its runs go to attacks-TAG/")
    parser.add_argument("--report", nargs="+", metavar="JSON", default=None,
                        help="print one table from results files of one digit (a column per attack) and stop")
    args, _ = parser.parse_known_args() if "--report" in sys.argv else (parser.parse_args(), None)
    if args.report:
        print(report(args.report))
        return

    from erase.data.digit_captions import HELDOUT_TEMPLATES, prompt_csv
    from erase.recipes import load_recipe, resolve_path

    if not 0 <= args.digit <= 9:
        raise SystemExit(f"--digit must be 0..9, got {args.digit}")
    evaluation = load_recipe(RECIPE)["eval"]
    out = Path(args.out or f"runs/attack-digits-{args.digit}")
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.csv"
    prompts.write_text(prompt_csv([args.digit], HELDOUT_TEMPLATES))
    original = str(resolve_path(args.original))
    results = {"digit": args.digit, "original_model": original, "models": {}}
    attacks = out / ("attacks-" + args.tag if args.tag else "attacks")
    results["models"]["original"] = {"label": "original (reference)",
                                     **attack(original, original, prompts, args.digit, attacks / "original", args, evaluation)}
    erased = []
    for spec in args.erased:
        name, _, folder = spec.rpartition("=")
        erased.append((name or Path(folder).name, {"label": name or folder}, str(resolve_path(folder))))
    if args.methods:
        data_from = None
        for model in method_models(args.digit, args.sfron_steps, args.loop_seeds):
            folder = out / "models" / model["name"]
            built = build(model, args.digit, folder, data_from)
            data_from = data_from or folder / "data"
            erased.append((model["name"], {"label": model["label"], "sets": model["sets"], "bench": model["bench"], **built},
                           str(folder / "model")))
    for name, info, folder in erased:
        results["models"][name] = {**info, **attack(folder, original, prompts, args.digit, attacks / name, args,
                                                    evaluation)}
        if args.json:  # after each model: a long run keeps what it has
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    print(f"\ndigit {args.digit}, {results['models']['original']['prompts']} held-out paraphrases, {args.tokens} tokens "
          f"({args.space}, {args.objective} objective), {args.iterations} iterations, lr {args.lr}; judge: the bundled digit classifier")
    print("| model | FA / para. FA / other digits / FID after erasure | ASR without attack | ASR with attack | "
          "mean loss plain → attack | search seconds |")
    print("|---|---|---|---|---|---|")
    for r in results["models"].values():
        after = " / ".join(f"{r['after'][k]:.3f}" if k != "fid" else f"{r['after'][k]:.1f}" for k in AFTER) if "after" in r else "—"
        print(f"| {r['label']} | {after} | {r['asr_no_attack']:.2f} ({r['successes_no_attack']}/{r['prompts']}) | "
              f"{r['asr']:.2f} ({r['successes']}/{r['prompts']}) | {r['mean_loss_plain']:.4f} → "
              f"{r['mean_loss_attack']:.4f} | {r['search_seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
