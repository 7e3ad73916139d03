"""Where a run's time goes: seconds per phase in metrics.json (`timings`) and one line at the end.

Phases: generate (self-generated training images), encode (images to latents, prompts to
embeddings), fisher (the mask's passes), loop (the SFR-on steps), evaluate (before and after),
export (model, patch, grids, records). A phase a run does not have stays 0. On a GPU each phase
waits for its kernels, so its time is its own.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

PHASES = ("generate", "encode", "fisher", "loop", "evaluate", "export")


class PhaseTimer:
    """`with timer("fisher"): ...` adds the block's wall-clock seconds to that phase."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str):
        if phase not in self.seconds:
            raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")
        _synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            _synchronize()
            self.seconds[phase] += time.perf_counter() - start

    def timings(self, steps: int) -> dict:
        """The `timings` entry of metrics.json: seconds per phase, and loop steps per second."""
        loop = self.seconds["loop"]
        return {**{k: round(v, 3) for k, v in self.seconds.items()},
                "steps_per_second": round(steps / loop, 3) if loop > 0 else None}


def summary_line(timings: dict) -> str:
    """`time: generate 1.2 s, encode 0.1 s, fisher 0.8 s, loop 3.0 s (8.3 steps/s), ...`"""
    parts = []
    for phase in PHASES:
        part = f"{phase} {timings.get(phase, 0):.1f} s"
        if phase == "loop" and timings.get("steps_per_second"):
            part += f" ({timings['steps_per_second']:.3g} steps/s)"
        parts.append(part)
    return "time: " + ", ".join(parts)


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
