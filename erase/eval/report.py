"""Run reports: image grids, loss plots and the short table printed at the end of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from erase.core.io import atomic_file


def save_grid(images: torch.Tensor, path, nrow: int, scale: int = 4) -> None:
    """[-1, 1] float N×C×H×W images -> one PNG grid, `nrow` images per row, upscaled for viewing."""
    from PIL import Image

    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    pad = 1
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y : y + h, x : x + w] = images[i].permute(1, 2, 0).numpy()
    picture = Image.fromarray(canvas[:, :, 0] if c == 1 else canvas)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    _save_atomic(picture, path)


def save_loss_plot(history: list[dict], path, title: str = "SFR-on losses") -> None:
    """Forget and remain loss per step (two panels: their scales differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key in zip(axes, ("forget_loss", "remain_loss")):
        points = [(r["step"], r[key]) for r in history if key in r]
        if points:
            ax.plot(*zip(*points), marker=".", linewidth=1)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


def format_table(rows: list[tuple], header: tuple) -> str:
    """A plain fixed-width table for the terminal."""
    cells = [tuple(str(c) for c in header)] + [tuple(_fmt(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _save_atomic(picture, path) -> None:
    with atomic_file(path) as tmp:
        picture.save(tmp, format=Path(path).suffix.lstrip(".").upper() or "PNG")
