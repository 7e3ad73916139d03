"""Train the bundled embedded default: a digit classifier and a class-conditional DDPM on sklearn digits.

Reproducible (seeded) and a few minutes on a 2-core CPU. The DDPM is shipped as its EMA weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from erase.core.io import atomic_directory, atomic_write_json
from erase.data.digits import load_digits_tensors
from erase.families import ddpm
from erase.families.classifier import (
    DigitCNN,
    predict,
    save_classifier,
    train_classifier,
)
from erase.families.ddpm_pipeline import ClassConditionalDDPMPipeline

DDPM_STEPS = 1500
DDPM_LR = 2e-3


def pretrain_digits(out_dir, ddpm_steps: int = DDPM_STEPS, seed: int = 0, show_progress: bool = True) -> dict:
    """Writes OUT/digits-classifier.safetensors and OUT/digits-ddpm/ (a diffusers folder)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train_images, train_labels = load_digits_tensors("train")
    test_images, test_labels = load_digits_tensors("test")

    started = time.perf_counter()
    classifier = train_classifier(DigitCNN(), train_images, train_labels, seed=seed)
    test_accuracy = float((predict(classifier, test_images) == test_labels).float().mean())
    save_classifier(classifier, out_dir / "digits-classifier.safetensors")

    unet = ddpm.build_unet("digits")
    scheduler = ddpm.build_scheduler()
    ema = ddpm.pretrain(
        unet, scheduler, train_images, train_labels, steps=ddpm_steps, lr=DDPM_LR, seed=seed,
        show_progress=show_progress,
    )
    with atomic_directory(out_dir / "digits-ddpm") as folder:
        ClassConditionalDDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(folder)
    info = {
        "classifier_test_accuracy": test_accuracy,
        "ddpm_steps": ddpm_steps,
        "ddpm_parameters": sum(p.numel() for p in ema.parameters()),
        "seconds": round(time.perf_counter() - started, 1),
        "seed": seed,
    }
    atomic_write_json(info, out_dir / "digits-pretrain.json")
    return info
