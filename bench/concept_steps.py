"""Steps to erase a digit concept from the bundled text-to-image model: SFR-on against ESD-x, ESD-u, SalUn, RL, GA.

    OMP_NUM_THREADS=1 .venv/bin/python bench/concept_steps.py --concepts 7 3 8 3+7
    OMP_NUM_THREADS=1 .venv/bin/python bench/concept_steps.py --report

Every run is the workflow itself (`erase.workflows.sd.run`) on the demo recipe
(pipelines/digits-sd-concept.toml) with the method's changes (METHODS) and 100 loop steps, on the
same self-generated images (64 forget + 64 remain, generated once per concept before the runs) and
the same anchor mapping (the concept's captions -> the same captions naming 1). The loop's
`on_step` callback evaluates every 2 steps:

  quick check  1 image per forget caption (16 per digit) and per held-out paraphrase (12 per digit),
               scored by the digit classifier; when FA and paraphrase FA meet the bar, 1 image for each of
               4 captions of every other digit (36: passes when at most one is lost against the original
               model), and when that passes 1 image per remain caption (144: the bar against the
               original's figures on the same images);
  full check   when the quick check meets the bar: the demo's evaluation (4 images per forget caption
               and paraphrase, 2 per remain caption, FID of the other digits). The run has erased at
               the first step where the full check meets the bar (erase.eval.verdict.concept_erased).

After the hit the checks stop; the full check runs again at step 50 (FID at step 50), and the run
ends at max(hit, 50), or at 100 without a hit. Seconds to erase = wall time from the run's start
to the hit, evaluations excluded (model loading, encoding, the mask's pass and the training steps;
the images are generated before). Each run's result is a JSON file in the work folder, so runs can
be split between processes (--concepts / --methods) and a killed bench resumes; --report merges
them into bench/results/concept_steps.json, the plot (assets/concept_steps.png) and the table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from erase.core.io import atomic_write_json  # noqa: E402
from erase.data.images import read_images_uint8  # noqa: E402
from erase.eval.verdict import FA_TARGET, PARAPHRASE_TARGET, REMAINING_TOLERANCE, concept_erased  # noqa: E402
from erase.families import sd  # noqa: E402
from erase.recipes import apply_overrides, load_recipe  # noqa: E402
from erase.workflows import sd as sd_workflow  # noqa: E402
from erase.workflows.sd import Settings, cached_images, sampler  # noqa: E402
from erase.workflows.sd_digits import DigitJudge  # noqa: E402

RECIPE = REPO / "pipelines" / "digits-sd-concept.toml"
FIGURES = ("fa", "fa_paraphrase", "remaining_accuracy", "fid")
QUICK_REMAIN_CAPTIONS = 4  # captions of each other digit in the quick check's first remain screen
QUICK_REMAIN_SLACK = 0.03  # that screen lets one of its 36 images go (1/36 = 0.028)

# What each method changes in the demo recipe; everything else (data, anchor mapping, Adam lr 3e-4, batch 8,
# clip 1, forget/remain weight 1) is the recipe's. SFR-on is the recipe: mapping loss under the Fisher mask
# (γ 1), remain steps confined to the mask. SalUn: the mapping loss under the top-50% |∇L_f| mask, remain steps
# confined to it too (SalUn masks its whole update). RL: the mapping loss, no mask. GA: plain ascent of the
# ε-loss, no mask. RL, SalUn, GA and SFR-on take a remain step after each forget step. ESD: the negatively
# guided target of a frozen copy (η 1), no remain steps, cross-attention only (ESD-x) or everything else (ESD-u).
METHODS = {
    "sfron": ("SFR-on", []),
    "esd-x": ("ESD-x", ['method.name="esd"', 'method.train="xattn"', "method.confine_to_mask=false"]),
    "esd-u": ("ESD-u", ['method.name="esd"', 'method.train="noxattn"', "method.confine_to_mask=false"]),
    "salun": ("SalUn", ['method.name="salun"']),
    "rl": ("RL", ['method.name="rl"', "method.confine_to_mask=false"]),
    "ga": ("GA", ['method.name="ga"', 'method.forget_loss="ascent"', "method.confine_to_mask=false"]),
}


class Done(Exception):
    """Ends a run's loop once its figures are in."""


def concept_recipe(concept: list[int], work: Path, overrides: list[str]) -> dict:
    """The demo recipe for `concept` (its digits), writing into the concept's folder, with `overrides`."""
    sets = [f"digits.forget={concept}", f'output.dir="{work / concept_name(concept)}"', *overrides]
    return apply_overrides(load_recipe(RECIPE), sets)


def images_of(pipeline, settings: Settings, judge: DigitJudge, which: str, folder: Path) -> torch.Tensor:
    """One set of the judge generated afresh by the pipeline as it is now (fixed seeds)."""
    rows, _ = judge.rows(which)
    samples = judge.remain_samples if which == "remain" else judge.samples
    paths = cached_images(pipeline, settings, rows, folder / which, False, guidance=settings.eval_guidance,
                          steps=settings.eval_steps, samples=samples, fresh=True)
    return read_images_uint8(paths)


def quick_check(pipeline, settings, judges: tuple, folder, before: dict | None = None) -> dict:
    """FA and paraphrase FA on 1 image per prompt, then the two remain screens while they pass (all of it
    without `before`): remaining_accuracy_36 (4 captions per digit) and remaining_accuracy (every caption)."""
    few, every, _ = judges
    point = {}
    for which in ("forget", "paraphrase"):
        point |= few.score(which, images_of(pipeline, settings, few, which, folder))
    # the bar's FA limits, with the remaining digits taken as kept: are remain images worth generating?
    if before is not None and not concept_erased({**point, "remaining_accuracy": before["remaining_accuracy"]}, before):
        return point
    point["remaining_accuracy_36"] = few.score("remain", images_of(pipeline, settings, few, "remain", folder))[
        "remaining_accuracy"]
    if before is not None and point["remaining_accuracy_36"] < before["remaining_accuracy_36"] - QUICK_REMAIN_SLACK:
        return point
    point |= every.score("remain", images_of(pipeline, settings, every, "remain", folder))
    return point


def full_check(pipeline, settings, judge, folder, name: str) -> dict:
    """The demo's evaluation of the pipeline as it is now."""

    def generate(rows, where, samples):
        return cached_images(pipeline, settings, rows, where, False, guidance=settings.eval_guidance,
                             steps=settings.eval_steps, samples=samples, fresh=True)

    result = judge.evaluate(generate, folder, name)
    return {k: result[k] for k in FIGURES}


def judges(settings: Settings) -> tuple[DigitJudge, DigitJudge, DigitJudge]:
    """1 image per prompt (4 captions of each other digit), 1 image per prompt, and the recipe's evaluation."""
    sets = settings.digit_sets
    others = 10 - len(sets["forget_digits"])
    few = DigitJudge({**sets, "remain": sets["remain"][: QUICK_REMAIN_CAPTIONS * others]}, 1, 1, settings.eval_seed)
    every = DigitJudge(sets, 1, 1, settings.eval_seed)
    full = DigitJudge(sets, settings.eval_samples, settings.eval_remain_samples, settings.eval_seed)
    return few, every, full


def prepare(concept: list[int], pipeline, work: Path, overrides: list[str]) -> dict:
    """The concept's self-generated training images (shared by every method) and the original model's figures."""
    settings = Settings(concept_recipe(concept, work, overrides))
    settings.resolve_size(pipeline)
    with sampler(pipeline, settings.sampler):  # as erase.workflows.sd.run generates them, into the same folders
        for which, rows in (("forget", settings.forget_rows), ("remain", settings.remain_rows)):
            cached_images(pipeline, settings, rows, settings.out_dir / "data" / which, False)
    path = settings.out_dir / "before.json"
    if path.is_file():
        return json.loads(path.read_text())
    checks = judges(settings)
    folder = settings.out_dir / "before"
    before = {"quick": quick_check(pipeline, settings, checks, folder),
              "full": full_check(pipeline, settings, checks[2], folder, "before")}
    atomic_write_json(before, path)
    return before


def run_one(concept: list[int], method: str, tag: str, overrides: list[str], pipeline, before: dict, args) -> dict:
    """One erasure with its checks inside the loop (see the module docstring)."""
    label, changes = METHODS[method]
    # fisher.reuse false: methods share the concept's folder, and the workflow reseeds before its loop anyway
    # (the loop draws the same noise whether the Fisher was computed, cached or not built, evaluated first or not).
    sets = [*changes, f"sfron.steps={args.budget}", "fisher.reuse=false", *overrides]
    recipe = concept_recipe(concept, args.work, sets)
    settings = Settings(recipe)
    settings.resolve_size(pipeline)
    checks = judges(settings)
    full = checks[2]
    folder = settings.out_dir / "bench" / (method + tag)
    original_unet = pipeline.unet
    curve, at, state = [], {}, {"hit": None, "seconds": None, "eval": 0.0}
    name = concept_name(concept)
    started = time.perf_counter()

    def on_step(step, unet, record):
        if step % args.every and step != args.budget:
            return
        tick = time.perf_counter()
        pipeline.unet = unet
        with torch.random.fork_rng():  # evaluating leaves the loop's noise and timesteps as they were
            if state["hit"] is None:
                point = {"step": step, **quick_check(pipeline, settings, checks, folder, before["quick"])}
                curve.append(point)
                if "remaining_accuracy" in point and concept_erased(point, before["quick"]):
                    figures = full_check(pipeline, settings, full, folder, f"step{step}")
                    point["full"] = figures
                    if concept_erased(figures, before["full"]):
                        state["hit"], state["seconds"] = step, tick - started - state["eval"]
                        at["hit"] = {"step": step, **figures}
                shown = " ".join(f"{k} {point[k]:.2f}" for k in ("fa", "fa_paraphrase", "remaining_accuracy_36",
                                                                    "remaining_accuracy") if k in point)
                full_text = " | full " + " ".join(f"{k} {v:.3f}" for k, v in point["full"].items()) if "full" in point else ""
                print(f"  {name} {label}{tag} step {step:3d}: {shown}{full_text}", flush=True)
            if step == args.at:
                at["step50"] = at["hit"] if state["hit"] == step else {"step": step, **full_check(
                    pipeline, settings, full, folder, f"step{step}")}
                print(f"  {name} {label}{tag} step {step}: " + " ".join(f"{k} {at['step50'][k]:.3f}" for k in FIGURES),
                      flush=True)
        pipeline.unet = original_unet
        unet.train()
        state["eval"] += time.perf_counter() - tick
        if (state["hit"] is not None and step >= args.at) or step == args.budget:
            raise Done

    try:  # the workflow's own before/after evaluation is left out (eval.samples 0): the checks above replace it
        sd_workflow.run(apply_overrides(recipe, ["eval.samples=0"]), show_progress=False, on_step=on_step)
    except Done:
        pass
    return {"concept": concept, "method": method, "label": label + tag, "tag": tag, "overrides": overrides,
            "settings": settings_text(settings), "hit_step": state["hit"], "seconds": state["seconds"],
            "hit": at.get("hit"), "step50": at.get("step50"), "curve": curve, "before": before,
            "run_seconds": time.perf_counter() - started, "threads": torch.get_num_threads()}


def settings_text(settings: Settings) -> str:
    """What a run used, for the table."""
    c = settings.config
    parts = [f"{c.optimizer.capitalize()} lr {c.lr:.0e}".replace("e-0", "e-"), f"train {settings.train}"]
    if settings.method == "esd":
        parts.append(f"η {settings.negative_guidance:g}, no remain steps")
    else:
        parts.append(f"{settings.forget_loss} α_f {c.forget_alpha:g}, α_r {c.remain_alpha:g}")
    if settings.spec.mask == "fisher":
        parts.append(f"Fisher mask γ {c.gamma:g}")
    elif settings.spec.mask == "gradient":
        parts.append(f"top-{settings.fisher.salun_fraction:.0%} \\|∇L_f\\| mask")
    if settings.confine_to_mask:
        parts.append("remain steps in the mask")
    return ", ".join(parts)


def parse_concept(text: str) -> list[int]:
    return sorted({int(d) for d in text.split("+")})


def result_path(work: Path, concept: list[int], method: str, tag: str) -> Path:
    return work / "results" / f"{concept_name(concept)}-{method}{tag}.json"


# --------------------------------------------------------------------------- report


def merged(work: Path) -> list[dict]:
    results = [json.loads(p.read_text()) for p in sorted((work / "results").glob("*.json"))]
    order = list(METHODS)
    return sorted(results, key=lambda r: (len(r["concept"]), r["concept"] != [7], r["concept"],
                                          order.index(r["method"]), r["tag"]))


def concept_name(concept: list[int]) -> str:
    return "+".join(map(str, concept))


def cell(r: dict) -> str:
    """steps · seconds · FID at the hit / at step 50, and what fails the bar at step 50 if anything does."""
    before = r["before"]["full"]
    at50 = r["step50"]
    fid50 = f"{at50['fid']:.1f}" if at50 else "—"
    text = (f"**{r['hit_step']}** · {r['seconds']:.0f} s · {r['hit']['fid']:.1f} / {fid50}" if r["hit_step"]
            else f"not within 100 · — · — / {fid50}")
    if at50 and not concept_erased(at50, before):
        drop = before["remaining_accuracy"] - at50["remaining_accuracy"] > REMAINING_TOLERANCE
        text += (f" (50: other digits {at50['remaining_accuracy']:.2f})" if drop
                 else f" (50: FA {at50['fa']:.2f}, para. {at50['fa_paraphrase']:.2f})")
    return text


def markdown(results: list[dict], command: str) -> str:
    """The methods against the concepts more than one method ran on; then every concept SFR-on ran on."""
    minutes = sum(r["run_seconds"] for r in results) / 60
    names = {concept_name(r["concept"]) for r in results}
    shared = [n for n in dict.fromkeys(concept_name(r["concept"]) for r in results)
              if len({r["label"] for r in results if concept_name(r["concept"]) == n}) > 1]
    by = {(r["label"], concept_name(r["concept"])): r for r in results}
    before = {concept_name(r["concept"]): r["before"]["full"] for r in results}
    lines = [f"| method | {' | '.join(shared)} |", "|---" * (len(shared) + 1) + "|",
             "| original: FID | " + " | ".join(f"{before[n]['fid']:.1f}" for n in shared) + " |"]
    for label in dict.fromkeys(r["label"] for r in results if concept_name(r["concept"]) in shared):
        lines.append(f"| {label} | " + " | ".join(cell(by[label, n]) if (label, n) in by else "" for n in shared) + " |")
    sfron = [r for r in results if r["method"] == "sfron" and (r["tag"] in ("", " anchor 7")) and len(r["concept"]) == 1]
    lines += ["", "| SFR-on, digit | anchor | steps to erase | seconds | FID before | at the hit: FA / para. FA / rem. acc. "
              "/ FID | at step 50: FA / para. FA / rem. acc. / FID |", "|---|---|---|---|---|---|---|"]
    for r in sorted(sfron, key=lambda r: r["concept"]):
        figures = [" / ".join(f"{x[k]:.2f}" for k in FIGURES[:3]) + f" / {x['fid']:.1f}" if x else "—"
                   for x in (r["hit"], r["step50"])]
        anchor = "7" if "anchor 7" in r["tag"] else "1"
        lines.append(f"| {concept_name(r['concept'])} | {anchor} | {r['hit_step'] or 'not within 100'} | "
                     f"{r['seconds'] or 0:.0f} | {r['before']['full']['fid']:.1f} | {figures[0]} | {figures[1]} |")
    settings = dict.fromkeys(f"- {r['label']}: {r['settings']}" for r in results)
    head = (f"Command: `{command}` — {minutes:.0f} min of runs ({platform.machine()}, 1 torch thread, 2 CPU cores "
            f"shared with other jobs), {len(results)} runs on {len(names)} concepts.")
    return head + "\n\n" + "\n".join(lines) + "\n\nSettings of the runs:\n\n" + "\n".join(settings)


def plot(results: list[dict], concept: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    colors = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))  # one colour per method
    for r in (r for r in results if r["concept"] == concept):
        quick = r["before"]["quick"]
        for ax, key in zip(axes, ("fa", "fa_paraphrase")):
            points = [(0, quick[key])] + [(p["step"], p[key]) for p in r["curve"]]
            # the method's own run solid and labelled; its other seeds dashed, other settings dotted, unlabelled
            style = ({"linewidth": 1.5, "marker": ".", "label": r["label"]} if not r["tag"] else
                     {"linewidth": 0.9, "alpha": 0.7, "linestyle": "--" if "seed" in r["tag"] else ":"})
            ax.plot(*zip(*points), color=colors[r["method"]], **style)
            if r["step50"] and r["step50"]["step"] not in [p[0] for p in points]:
                ax.plot([r["step50"]["step"]], [r["step50"][key]], marker="x", color=colors[r["method"]])
    for ax, key, target in zip(axes, ("forget prompts", "held-out paraphrases"), (FA_TARGET, PARAPHRASE_TARGET)):
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"FA on the {key} (digit {'+'.join(map(str, concept))})", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share still read as the digit")
    axes[0].legend(fontsize=8, title="dashed: other seeds; dotted: lr 1e-4", title_fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concepts", nargs="+", default=["7", "3", "8", "3+7"],
                        help="digits to erase, one run each; 3+7 erases both in one run")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every run of this invocation (give it a --tag)")
    parser.add_argument("--tag", default="", help="suffix of the runs' names when --set changes them (e.g. ' lr 1e-3')")
    parser.add_argument("--budget", type=int, default=100, help="most loop steps")
    parser.add_argument("--every", type=int, default=2, help="check every k steps until the bar is met")
    parser.add_argument("--at", type=int, default=50, help="the step of the second full check")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "concept-steps")
    parser.add_argument("--fresh", action="store_true", help="rerun runs whose result is stored")
    parser.add_argument("--report", action="store_true", help="merge the stored results, plot, print the table")
    parser.add_argument("--plot-concept", default="7")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.tag and not args.tag.startswith(" "):
        args.tag = " " + args.tag

    if args.report:
        results = merged(args.work)
        atomic_write_json({"results": results}, REPO / "bench" / "results" / "concept_steps.json")
        plot(results, parse_concept(args.plot_concept), REPO / "assets" / "concept_steps.png")
        text = markdown(results, "OMP_NUM_THREADS=1 .venv/bin/python bench/concept_steps.py " + " ".join(sys.argv[1:]))
        print(text)
        return 0

    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    pipeline, _ = sd.load_pipeline(Settings(concept_recipe([7], args.work, [])).model)
    for text in args.concepts:
        concept = parse_concept(text)
        before = prepare(concept, pipeline, args.work, args.overrides)
        print(f"concept {text}: original " + " ".join(f"{k} {before['full'][k]:.3f}" for k in FIGURES), flush=True)
        for method in methods:
            path = result_path(args.work, concept, method, args.tag.replace(" ", "_"))
            if path.is_file() and not args.fresh:
                print(f"  {METHODS[method][0]}{args.tag}: stored ({path})", flush=True)
                continue
            prepare(concept, pipeline, args.work, args.overrides)  # ESD's runs keep only 8 remain images in the shared folder
            result = run_one(concept, method, args.tag, args.overrides, pipeline, before, args)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(result, path)
            print(f"  {result['label']}: steps to erase {result['hit_step']}, {result['seconds'] or 0:.0f} s "
                  f"(run {result['run_seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
