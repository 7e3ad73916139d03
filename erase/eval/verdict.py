"""Did a class erasure work? The project's bar, and the one line a run ends with.

A class is forgotten when at most 5% of the generated images of it are still recognised as it (FA),
the other classes lose at most 2 points of accuracy and, when FID was measured, the other classes'
FID is at most 1.25× the original's: a classifier still reads images that have lost much of their
quality, so accuracy alone does not show the damage. The benches (steps to forget, the demo on
every digit) use the same test, so a run's verdict and the published tables agree.
"""

from __future__ import annotations

FA_TARGET = 0.05
REMAINING_TOLERANCE = 0.02
FID_TOLERANCE = 1.25  # the other classes' FID after, at most this times the original's
_SLACK = 1e-9  # accuracies are ratios of small counts: 0.05 must pass as 0.05


def class_forgotten(fa: float, remaining_after: float, remaining_before: float,
                    fid_after: float | None = None, fid_before: float | None = None) -> bool:
    """The bar; the FID part only when both FIDs are given."""
    return (fa <= FA_TARGET + _SLACK and remaining_before - remaining_after <= REMAINING_TOLERANCE + _SLACK
            and fid_kept(fid_after, fid_before))


def fid_kept(fid_after: float | None, fid_before: float | None) -> bool:
    """The other classes' FID within FID_TOLERANCE × the original's (True when either is unmeasured)."""
    return fid_after is None or fid_before is None or fid_after <= FID_TOLERANCE * fid_before + _SLACK


def verdict(before: dict, after: dict, steps: int, fisher_mask: bool = True) -> str | None:
    """One line for the end of a run: forgotten or not, and what to change if not; None without a classifier.

    `fisher_mask`: the method has SFR-on's γ-thresholded mask, so γ is worth naming in the advice."""
    if after.get("fa") is None or before.get("remaining_accuracy") is None:
        return None
    fa, drop = after["fa"], before["remaining_accuracy"] - after["remaining_accuracy"]
    fid_before, fid_after = before.get("fid"), after.get("fid")
    kept = f"the other classes {'lost' if drop > 0 else 'gained'} {abs(drop) * 100:.1f} points"
    with_fid = fid_before is not None and fid_after is not None
    if with_fid:
        kept += f", their FID {fid_before:.1f} → {fid_after:.1f}"
    if class_forgotten(fa, after["remaining_accuracy"], before["remaining_accuracy"], fid_after, fid_before):
        return f"forgotten: FA {fa:.2f} ≤ {FA_TARGET} after {steps} steps; {kept} (tolerance {_tolerances(with_fid)})"
    if fa > FA_TARGET + _SLACK:
        gamma = ", a smaller sfron.gamma masks more weights" if fisher_mask else ""
        return (f"not forgotten yet: FA {fa:.2f} > {FA_TARGET} after {steps} steps ({kept}); more steps "
                f"(--set sfron.steps=...) or a larger sfron.lr forget more{gamma}")
    gamma = ", or a larger sfron.gamma (fewer weights)" if fisher_mask else ""
    return (f"forgotten (FA {fa:.2f}), but {kept}, over the tolerance of {_tolerances(with_fid)}; "
            f"a smaller sfron.lr or forget_alpha{gamma} spares them")


def _tolerances(with_fid: bool) -> str:
    points = f"{REMAINING_TOLERANCE * 100:.0f} points"
    return f"{points} and FID × {FID_TOLERANCE}" if with_fid else points


PARAPHRASE_TARGET = 0.10


def concept_erased(after: dict, before: dict) -> bool:
    """The text-to-image bar: forget prompts ≤ 5%, held-out paraphrases ≤ 10%, the rest within 2 points."""
    return (after["fa"] <= FA_TARGET + _SLACK and after["fa_paraphrase"] <= PARAPHRASE_TARGET + _SLACK
            and before["remaining_accuracy"] - after["remaining_accuracy"] <= REMAINING_TOLERANCE + _SLACK)


def concept_verdict(before: dict, after: dict, steps: int) -> str | None:
    """One line for the end of a concept erasure judged by a classifier; None without one."""
    if after.get("fa") is None or after.get("fa_paraphrase") is None:
        return None
    drop = before["remaining_accuracy"] - after["remaining_accuracy"]
    figures = (f"FA {after['fa']:.2f} on the forget prompts, {after['fa_paraphrase']:.2f} on held-out paraphrases, "
               f"the other concepts {'lost' if drop > 0 else 'gained'} {abs(drop) * 100:.1f} points after {steps} steps")
    if concept_erased(after, before):
        return f"erased: {figures}"
    if after["fa"] > FA_TARGET + _SLACK or after["fa_paraphrase"] > PARAPHRASE_TARGET + _SLACK:
        return (f"not erased yet ({figures}; bar: ≤ {FA_TARGET}, ≤ {PARAPHRASE_TARGET}); more steps "
                f"(--set sfron.steps=...) or a larger sfron.lr erase more")
    return (f"erased, but {figures}, over the tolerance of {REMAINING_TOLERANCE * 100:.0f}; a smaller sfron.lr, "
            f"or a larger sfron.gamma (fewer weights), spares them")
