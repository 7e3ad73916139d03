"""`erase demo --family ddpm` end to end on the bundled digits DDPM (few steps, few samples), and the
demo's user errors. The default (text-to-image) demo is tested in tests/test_digits_sd.py."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import DiffusionPipeline

from erase.cli import main
from erase.recipes import ASSETS_DIR

SMALL = ["--set", "eval.forget_samples=10", "--set", "eval.samples_per_class=4", "--set", "eval.inference_steps=5",
         "--set", "fisher.batches=2", "--set", "data.batch_size=16"]
needs_assets = pytest.mark.skipif(not (ASSETS_DIR / "digits-ddpm").exists(), reason="bundled model missing")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "erase.cli", *args], capture_output=True, text=True, timeout=300)


@needs_assets
def test_demo_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--family", "ddpm", "--steps", "2", "--forget-class", "5", "--out", str(out), *SMALL]) == 0
    # Two steps do not forget a digit: the run says so, and what to change.
    assert "not forgotten yet" in capsys.readouterr().out
    for name in ("metrics.json", "grid_before.png", "grid_after.png", "loss.png", "config.toml", "mask.safetensors"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["family"] == "ddpm" and metrics["method"] == "sfron"
    assert metrics["forgotten_class"] == 5 and metrics["steps"] == 2
    assert 0 < metrics["mask_fraction"] < 1 and metrics["seconds"] > 0
    timings = metrics["timings"]  # real digits: nothing generated or encoded; every other phase timed
    assert timings["generate"] == timings["encode"] == 0 and timings["steps_per_second"] > 0
    assert all(timings[phase] > 0 for phase in ("fisher", "loop", "evaluate", "export"))
    for when in ("before", "after"):
        assert {"fa", "remaining_accuracy", "fid"} <= set(metrics[when])
        assert 0 <= metrics[when]["fa"] <= 1 and metrics[when]["fid"] >= 0
    pipe = DiffusionPipeline.from_pretrained(str(out / "model"), trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[1, 2], num_inference_steps=3, output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


@needs_assets
def test_diverging_run_stops_and_exports_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["demo", "--family", "ddpm", "--steps", "3", "--out", str(out), "--set", "sfron.forget_alpha=1e300", *SMALL])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("erase: error")]
    assert code == 1 and len(errors) == 1 and "became" in errors[0], errors
    assert not (out / "model").exists() and not (out / "metrics.json").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--steps", "0"],
        ["demo", "--forget-class", "12"],
        ["demo", "--family", "ddpm", "--forget-class", "3", "--forget-class", "4"],
        ["demo", "--set", "digits.anchor=7"],
        ["demo", "--set", "digits.forget=[1]"],
        ["demo", "--steps", "many"],
        ["run", "no-such-recipe.toml"],
        ["demo", "--set", "sfron.optimizer=lion"],
        ["demo", "--set", "nonsense"],
    ],
)
def test_user_errors_give_one_line_and_exit_2(args, tmp_path):
    result = run_cli(*args, *([] if args[0] == "run" else ["--out", str(tmp_path / "x")]))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
