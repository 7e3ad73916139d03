"""What every run folder holds besides the model: metrics.json, mask_stats.json, the resolved config."""

from __future__ import annotations

from pathlib import Path

from erase.core.io import atomic_write_json, atomic_write_text
from erase.recipes import to_toml


def write_run_records(out_dir: Path, metrics: dict, mask_stats: dict | None, recipe: dict) -> None:
    """Written last, each atomically: a folder with metrics.json holds a finished run."""
    if mask_stats:
        atomic_write_json(mask_stats, out_dir / "mask_stats.json")
    atomic_write_text(to_toml(recipe), out_dir / "config.toml")
    atomic_write_json(metrics, out_dir / "metrics.json")
