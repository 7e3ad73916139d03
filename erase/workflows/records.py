"""What every run folder holds besides the model: metrics.json, mask_stats.json, the resolved config."""

from __future__ import annotations

import time
from pathlib import Path

from erase.core.io import atomic_directory, atomic_write_json, atomic_write_text
from erase.recipes import to_toml


def write_run_records(out_dir: Path, metrics: dict, mask_stats: dict | None, recipe: dict) -> None:
    """Written last, each atomically: a folder with metrics.json holds a finished run."""
    if mask_stats:
        atomic_write_json(mask_stats, out_dir / "mask_stats.json")
    atomic_write_text(to_toml(recipe), out_dir / "config.toml")
    atomic_write_json(metrics, out_dir / "metrics.json")


def finish_class_run(pipeline, result, out_dir: Path, recipe: dict, timer, started: float, steps: int, title: str) -> dict:
    """The end of a class run (DDPM, DiT): on the main process the pipeline folder and the loss plot (the
    export phase), then the records with the whole run's seconds and phase timings; returns the metrics
    (the other processes, which write nothing: steps and seconds)."""
    from accelerate import PartialState

    from erase.eval.report import save_loss_plot

    if not PartialState().is_main_process:
        return {"steps": steps, "seconds": round(time.perf_counter() - started, 2)}
    metrics = result.metrics
    with timer("export"):
        with atomic_directory(out_dir / "model") as model_dir:
            pipeline.save_pretrained(model_dir)
        save_loss_plot(result.history, out_dir / "loss.png", title=title)
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    metrics["timings"] = timer.timings(steps)
    write_run_records(out_dir, metrics, result.mask_stats, recipe)
    return metrics
