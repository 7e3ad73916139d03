"""`erase evaluate nudity`: NudeNet 3.4.2 counts, checked against NudeDetector().detect itself."""

import json

import numpy as np
import pytest
from nudenet import NudeDetector
from PIL import Image, ImageDraw, ImageFilter
from sd_fixtures import run_cli

from erase.eval.nudity import EXPOSED_CLASSES, evaluate_folder


def two_skin_ovals(path, background, skin, width):
    """Two adjacent skin-coloured ovals: NudeNet scores them BUTTOCKS_EXPOSED, some above 0.6."""
    image = Image.new("RGB", (256, 256), background)
    draw = ImageDraw.Draw(image)
    draw.ellipse([128 - width, 80, 128, 80 + int(width * 1.3)], fill=skin)
    draw.ellipse([128, 80, 128 + width, 80 + int(width * 1.3)], fill=skin)
    image.filter(ImageFilter.GaussianBlur(3)).save(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    variants = [((90, 60, 40), (210, 150, 120), 90), ((90, 60, 40), (230, 180, 150), 90),
                ((40, 40, 40), (210, 150, 120), 90), ((90, 60, 40), (240, 200, 170), 120),
                ((200, 200, 220), (230, 180, 150), 60)]
    for i, (background, skin, width) in enumerate(variants):
        two_skin_ovals(folder / f"{i}_0.png", background, skin, width)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "noise_0.png")
    Image.new("RGB", (32, 32), (20, 120, 200)).save(folder / "blue_0.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def direct_counts(folder, threshold):
    detector = NudeDetector()
    counts, exposed_images, n = {c: 0 for c in EXPOSED_CLASSES}, 0, 0
    for path in sorted(folder.glob("*.png")):
        n += 1
        hits = [d for d in detector.detect(str(path)) if d["class"] in counts and d["score"] >= threshold]
        exposed_images += bool(hits)
        for d in hits:
            counts[d["class"]] += 1
    return counts, exposed_images, n


@pytest.mark.parametrize("threshold", [0.6, 0.3])
def test_counts_agree_with_nudedetector(images, tmp_path, capsys, threshold):
    out = tmp_path / "nudity.json"
    code, stdout, err = run_cli(["evaluate", "nudity", images, "--threshold", threshold, "--out", out], capsys)
    assert code == 0, err
    summary = json.loads(out.read_text())
    counts, exposed_images, n = direct_counts(images, threshold)
    assert summary["counts"] == counts
    assert summary["total"] == sum(counts.values()) > 0  # the fixture does trigger NudeNet
    assert summary["images"] == n == 7
    assert summary["images_with_exposure"] == exposed_images
    assert summary["threshold"] == threshold
    assert list(summary["counts"]) == list(EXPOSED_CLASSES)
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert rows[0].split(",")[:2] == ["image", "exposed"] and len(rows) == 1 + n
    assert sum(int(r.split(",")[1]) for r in rows[1:]) == summary["total"]


def test_threshold_changes_what_counts(images):
    strict = evaluate_folder(images, 0.6, show_progress=False)
    loose = evaluate_folder(images, 0.3, show_progress=False)
    assert 0 < strict["total"] < loose["total"]


def test_compare_prints_both_folders(images, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (32, 32), (20, 120, 200)).save(other / "a_0.png")
    code, out, err = run_cli(["evaluate", "nudity", images, "--compare", other, "--out", tmp_path / "s.json"], capsys)
    assert code == 0, err
    assert "BUTTOCKS_EXPOSED" in out and images.name in out and "other" in out
    assert "0/1" in out  # the other folder: one image, no exposure


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such image folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no images"),
])
def test_bad_folders_exit_2_with_one_line(tmp_path, capsys, make, message):
    code, _, err = run_cli(["evaluate", "nudity", make(tmp_path)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bad_threshold_exits_2(tmp_path, capsys):
    code, _, err = run_cli(["evaluate", "nudity", tmp_path, "--threshold", "1.5"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
