"""Methods that share the SFR-on loop and differ only in their forget objective and mask.

A family turns a method name into an objective and a mask with `method_spec`; the loop is one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    """How a method forgets: objective `ascent` (adaptive GA), `descent` (relabel/map) or None; its mask."""

    name: str
    forget: str | None  # "ascent" | "descent" | None (remain-only fine-tuning)
    mask: str | None  # "fisher" (SFR-on balanced saliency) | "gradient" (SalUn top-k) | None
    adaptive: bool  # adaptive weighting (temperature λ) on the ascent loss
    description: str


METHODS = {
    "sfron": MethodSpec("sfron", "ascent", "fisher", True, "SFR-on: Fisher-balanced saliency mask + adaptive GA + remain steps"),
    "ga": MethodSpec("ga", "ascent", None, False, "gradient ascent on the forget data + remain steps"),
    "rl": MethodSpec("rl", "descent", None, False, "random labels / concept mapped to an anchor, no mask"),
    "salun": MethodSpec("salun", "descent", "gradient", False, "SalUn: gradient-magnitude top-k mask + random labels"),
    "ft": MethodSpec("ft", None, None, False, "fine-tuning on the remain data only"),
}


# ESD (Gandikota et al., 2023) is not one of METHODS: its target needs a frozen copy of the model and an
# unconditional prediction, which only the diffusion families have (SD, the class-conditional DDPM, DiT).
ESD = MethodSpec("esd", "descent", None, False, "ESD: negative-guidance target from a frozen copy, no mask")


def method_spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
