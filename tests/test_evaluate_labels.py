"""Object-erasure evaluation: a labelled prompt CSV -> `erase generate` (labels kept in DIR/manifest.csv)
-> `erase evaluate classifier DIR --classifier digits --label K` (accuracy per label, FA, remaining)."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sd_fixtures import run_cli, tiny_sd  # noqa: F401

from erase.data.digits import load_digits_tensors, to_uint8
from erase.data.manifest import MANIFEST, write_manifest
from erase.data.prompts import expand_prompts, read_prompts
from erase.eval.classify_images import load_image_classifier
from erase.recipes import REPO_ROOT

SMALL = ["--height", 16, "--width", 16, "--steps", 2, "--batch-size", 4]
PROMPTS = "prompt,seed,label\na three,1,3\na seven,2,7\na one,3,1\nanother three,4,3\n"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def expected_figures(folder, labels: dict[str, int], forget: int) -> dict:
    """Per-label accuracy, FA and remaining accuracy computed here: the digit classifier on each file."""
    classifier = load_image_classifier(REPO_ROOT / "assets" / "digits-classifier.safetensors")
    hits: dict[int, list[bool]] = {}
    for name, label in labels.items():
        image = torch.from_numpy(np.array(Image.open(folder / name).convert("RGB"))).permute(2, 0, 1)
        hits.setdefault(label, []).append(int(classifier.logits(image[None]).argmax()) == label)
    accuracy = {str(k): sum(v) / len(v) for k, v in sorted(hits.items())}
    others = [acc for k, acc in accuracy.items() if k != str(forget)]
    return {"per_label_accuracy": accuracy, "per_label_images": {str(k): len(v) for k, v in sorted(hits.items())},
            "mean_accuracy": sum(accuracy.values()) / len(accuracy), "fa": accuracy[str(forget)],
            "remaining_accuracy": sum(others) / len(others), "images": len(labels)}


def test_prompt_csv_labels(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,label\na dog,golden retriever\na cat,\n")
    rows = read_prompts(tmp_path / "p.csv")
    assert [row.label for row in rows] == ["golden retriever", None]
    assert [row.label for row in expand_prompts(rows, 3)] == ["golden retriever", None, "golden retriever"]
    (tmp_path / "q.csv").write_text("prompt,seed\na dog,1\n")
    assert read_prompts(tmp_path / "q.csv")[0].label is None


def test_generate_keeps_labels_and_evaluate_judges_by_them(tiny_sd, tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(PROMPTS)
    out = tmp_path / "images"
    generate = ["generate", "--model", tiny_sd, "--prompts", prompts, "--out", out, "--samples-per-prompt", 2, *SMALL]
    assert run_cli([*generate, "--limit", 2], capsys)[0] == 0
    assert [row["image"] for row in read_csv(out / MANIFEST)] == ["0_0.png", "0_1.png", "1_0.png", "1_1.png"]
    code, stdout, err = run_cli(generate, capsys)  # resumed: the manifest lists every image of the folder
    assert code == 0 and "(4 already there)" in stdout, err
    manifest = read_csv(out / MANIFEST)
    assert list(manifest[0]) == ["image", "prompt", "seed", "guidance", "label", "case_number"]
    assert [(row["image"], row["label"], row["seed"], row["guidance"]) for row in manifest][::2] == [
        ("0_0.png", "3", "1", "7.5"), ("1_0.png", "7", "2", "7.5"), ("2_0.png", "1", "3", "7.5"), ("3_0.png", "3", "4", "7.5")]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(row["image"] for row in manifest)

    expected = expected_figures(out, {row["image"]: int(row["label"]) for row in manifest}, forget=3)
    report = tmp_path / "report.json"
    code, stdout, err = run_cli(["evaluate", "classifier", out, "--classifier", "digits", "--label", 3, "--out", report], capsys)
    assert code == 0, err
    result = json.loads(report.read_text())
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key
    assert result["per_label_images"] == {"1": 2, "3": 4, "7": 2} and result["labels_from"].endswith(MANIFEST)
    assert "accuracy per label" in stdout and "remaining accuracy" in stdout
    # the same labels from the prompt CSV itself
    code, _, err = run_cli(["evaluate", "classifier", out, "--classifier", "digits", "--prompts", prompts,
                            "--label", 3, "--out", tmp_path / "again.json"], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "again.json").read_text())
    assert {k: again[k] for k in expected} == {k: result[k] for k in expected}
    # without --label: accuracy per label only
    assert run_cli(["evaluate", "classifier", out, "--classifier", "digits", "--out", report], capsys)[0] == 0
    assert "fa" not in json.loads(report.read_text())

    # resuming with a label changed for images already there is refused
    prompts.write_text(PROMPTS.replace("a seven,2,7", "a seven,2,8"))
    code, _, err = run_cli(generate, capsys)
    assert code == 2 and "1_0.png made with another label" in err and len(err.strip().splitlines()) == 1


def test_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    write_digit_images(folder, per_class=1)
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("prompt,seed\n" + "".join(f"digit {k},{k}\n" for k in range(10)))
    partial = tmp_path / "partial.csv"
    partial.write_text("prompt,label\n" + "".join(f"digit {k},{k}\n" for k in range(9)))
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("prompt,label\n" + "".join(f"digit {k},{'cat' if k == 4 else k}\n" for k in range(10)))
    out_of_range = tmp_path / "range.csv"
    out_of_range.write_text("prompt,label\n" + "".join(f"digit {k},{k + 3}\n" for k in range(10)))
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(folder / "0_0.png", plain / "a.png")
    extra = tmp_path / "extra"  # labelled by its manifest, which does not list stray.png
    shutil.copytree(folder, extra)
    write_manifest(extra, [entry(f"{k}_0.png", str(k)) for k in range(10)])
    shutil.copy(folder / "0_0.png", extra / "stray.png")
    report = tmp_path / "report.json"
    cases = [
        ([folder, "--prompts", unlabelled, "--label", 3], "no 'label' column"),
        ([folder, "--prompts", partial, "--label", 3], "9_0.png"),
        ([folder, "--prompts", unknown], "'cat' is neither a class id nor a class name"),
        ([folder, "--prompts", out_of_range], "out of range"),
        ([folder, "--prompts", tmp_path / "missing.csv"], "no such prompt file"),
        ([folder, "--label", 12], "out of range"),
        ([folder, "--label", "dog"], "neither a class id"),
        ([extra, "--label", 3], "stray.png"),
        ([plain], "--label is needed"),
        ([tmp_path / "nowhere", "--label", 3], "no such image folder"),
        ([folder, "--classifier", tmp_path / "none.safetensors", "--label", 3], "no such classifier file"),
    ]
    for argv, message in cases:
        expect_one_line_error(argv, message, report, capsys)
    write_manifest(folder, [entry(f"{k}_0.png", "1") for k in range(10)])
    expect_one_line_error([folder, "--label", 3], "no image is labelled 3", report, capsys)
    (folder / MANIFEST).unlink()
    write_manifest(folder, [entry(f"{k}_0.png", str(k)) for k in range(10) if k != 5])  # 5_0.png not listed
    expect_one_line_error([folder, "--label", 3], "5_0.png", report, capsys)


def expect_one_line_error(argv, message, report, capsys):
    classifier = [] if "--classifier" in argv else ["--classifier", "digits"]
    code, _, err = run_cli(["evaluate", "classifier", *argv, *classifier, "--out", report], capsys)
    assert code == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, (argv, err)
    assert not report.exists()


def test_the_digit_classifier_judges_16px_rgb_digits(tmp_path, capsys):
    """Real digits, upscaled to 16×16 RGB (what the bundled text-to-image model draws): the bundled
    classifier greys them and resizes them to its 8×8 and reads ≥ 90% of every digit right."""
    labels = write_digit_images(tmp_path, per_class=12)
    write_manifest(tmp_path, [entry(name, str(label)) for name, label in labels.items()])
    report = tmp_path / "report.json"
    code, stdout, err = run_cli(["evaluate", "classifier", tmp_path, "--classifier", "digits", "--label", 7,
                                 "--out", report], capsys)
    assert code == 0, err
    result = json.loads(report.read_text())
    assert result["images"] == 120 and result["per_label_images"] == {str(k): 12 for k in range(10)}
    assert min(result["per_label_accuracy"].values()) >= 0.9, result["per_label_accuracy"]
    assert result["fa"] == result["per_label_accuracy"]["7"]
    others = [acc for k, acc in result["per_label_accuracy"].items() if k != "7"]
    assert result["remaining_accuracy"] == pytest.approx(sum(others) / 9)
    for key, value in expected_figures(tmp_path, labels, forget=7).items():
        assert result[key] == pytest.approx(value), key


def test_unlabelled_folder_keeps_the_old_interface(tmp_path, capsys):
    """A folder of any images and --label K: FA over all of them, as before labels existed."""
    images, labels = load_digits_tensors("test")
    sevens = to_uint8(images[labels == 7][:10])
    for i, image in enumerate(sevens):
        Image.fromarray(image[0].numpy()).save(tmp_path / f"seven-{i}.png")
    report = tmp_path / "fa.json"
    code, stdout, err = run_cli(["evaluate", "classifier", tmp_path, "--classifier", "digits", "--label", 7,
                                 "--out", report], capsys)
    assert code == 0, err
    result = json.loads(report.read_text())
    assert result["images"] == 10 and result["label"] == 7 and result["fa"] >= 0.9
    assert result["per_label_accuracy"] == {"7": result["fa"]} and result["remaining_accuracy"] is None
    assert result["labels_from"] is None and stdout.startswith(f"FA {result['fa']:.3f}: ")


def write_digit_images(folder, per_class: int) -> dict[str, int]:
    """The first `per_class` test digits of each class as 16×16 RGB PNGs (nearest upscaling), named {k}_{i}.png."""
    images, labels = load_digits_tensors("test")
    written = {}
    for k in range(10):
        for i, image in enumerate(to_uint8(images[labels == k][:per_class])):
            big = image[0].repeat_interleave(2, 0).repeat_interleave(2, 1)
            Image.fromarray(big.numpy()).convert("RGB").save(folder / f"{k}_{i}.png")
            written[f"{k}_{i}.png"] = k
    return written


def entry(image: str, label: str) -> dict[str, str]:
    return {"image": image, "prompt": f"a handwritten {label}", "seed": "0", "guidance": "7.5", "label": label,
            "case_number": ""}
