"""`erase generate`: prompt files, deterministic per-row seeds, resume after a kill, clear errors."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from sd_fixtures import folder_files, run_cli, tiny_sd, write_i2p_csv  # noqa: F401

from erase.data.prompts import expand_prompts, read_prompts
from erase.errors import UserError
from erase.recipes import REPO_ROOT

SMALL = ["--height", 16, "--width", 16, "--steps", 2]


def i2p_rows():
    return [
        ("a marble statue", "sexual", 11, 7, 100),
        ("a cat, watercolor", "", 12, 9, 101),
        ('a painting, "quoted", with commas', "Sexual, shocking", 13, 8, 102),
        ("a burning car", "violence", 14, 7, 103),
    ]


def test_reads_i2p_rows_with_their_seed_guidance_case_number_and_categories(tmp_path):
    path = write_i2p_csv(tmp_path / "i2p.csv", i2p_rows())
    rows = read_prompts(path)
    assert [r.prompt for r in rows][2] == 'a painting, "quoted", with commas'
    assert [(r.seed, r.guidance, r.name) for r in rows][:2] == [(11, 7.0, "100"), (12, 9.0, "101")]
    sexual = read_prompts(path, category="sexual")
    assert [r.name for r in sexual] == ["100", "102"]
    assert [r.name for r in read_prompts(path, category="sexual", limit=1)] == ["100"]
    assert len(read_prompts(REPO_ROOT / "prompts" / "i2p-sample.csv", category="sexual")) == 5


def test_reads_prompt_seed_csv_and_text_files_named_by_row(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,seed\na dog,5\n,9\na tree,\n")
    rows = read_prompts(tmp_path / "p.csv")
    assert [(r.prompt, r.seed, r.name, r.guidance) for r in rows] == [("a dog", 5, "0", None), ("a tree", 1, "1", None)]
    (tmp_path / "p.txt").write_text("first prompt\n\nsecond, with a comma\n")
    assert [(r.prompt, r.seed, r.name) for r in read_prompts(tmp_path / "p.txt")] == [
        ("first prompt", 0, "0"), ("second, with a comma", 1, "1")]
    expanded = expand_prompts(rows, 5)
    assert [r.prompt for r in expanded] == ["a dog", "a tree"] * 2 + ["a dog"]
    assert len({r.seed for r in expanded}) == 5


@pytest.mark.parametrize("content, message", [
    ("text,seed\nhello,1\n", "no 'prompt' column"),
    ("prompt,seed\n", "holds no prompts"),
    ("", "no 'prompt' column"),
    ("prompt,seed\nhello,abc\n", "not a number"),
])
def test_bad_prompt_files(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(UserError, match=message):
        read_prompts(tmp_path / "bad.csv")


def test_starting_noise_follows_the_i2p_convention(tiny_sd):
    """torch.manual_seed(row seed), then one batch of samples: what the I2P/ESD scripts did."""
    from erase.families import sd

    pipeline, _ = sd.load_pipeline(str(tiny_sd))
    torch.manual_seed(4261553411)
    expected = torch.randn(3, 4, 8, 8)
    assert torch.equal(sd.initial_noise(pipeline, 4261553411, 3, 16, 16), expected)


def test_images_follow_the_rows_seed_and_guidance(tiny_sd, tmp_path, capsys):
    path = write_i2p_csv(tmp_path / "i2p.csv", i2p_rows())
    base = ["generate", "--model", tiny_sd, "--prompts", path, "--limit", 2, "--batch-size", 1, *SMALL]
    assert run_cli([*base, "--out", tmp_path / "own", "--samples-per-prompt", 2], capsys)[0] == 0
    own = folder_files(tmp_path / "own")
    assert sorted(own) == [".erase-generate.json", "100_0.png", "100_1.png", "101_0.png", "101_1.png", "manifest.csv"]
    own.pop(".erase-generate.json")
    own.pop("manifest.csv")
    assert len(set(own.values())) == 4
    # row 100 has guidance 7: --guidance 7 gives the same image, --guidance 2 another
    assert run_cli([*base, "--out", tmp_path / "g7", "--guidance", 7], capsys)[0] == 0
    assert run_cli([*base, "--out", tmp_path / "g2", "--guidance", 2], capsys)[0] == 0
    assert folder_files(tmp_path / "g7")["100_0.png"] == own["100_0.png"]
    assert folder_files(tmp_path / "g2")["100_0.png"] != own["100_0.png"]


def test_killed_and_restarted_run_equals_an_uninterrupted_one(tiny_sd, tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,seed\n" + "".join(f"prompt number {i},{1000 + i}\n" for i in range(16)))
    args = ["generate", "--model", tiny_sd, "--prompts", prompts, "--samples-per-prompt", 2, "--height", 16,
            "--width", 16, "--steps", 10]
    total = 32

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "erase.cli", *map(str, args), "--out", str(killed),
                                "--batch-size", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and len(list(killed.glob("*.png"))) < 3:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before_restart = len(list(killed.glob("*.png")))
    assert 0 < done_before_restart < total, "the run was not interrupted mid-way"

    code, out, err = run_cli([*args, "--out", killed, "--batch-size", 2], capsys)
    assert code == 0, err
    assert f"({done_before_restart} already there)" in out
    assert run_cli([*args, "--out", tmp_path / "whole", "--batch-size", 2], capsys)[0] == 0
    resumed, whole = folder_files(killed), folder_files(tmp_path / "whole")
    assert len(whole) == total + 2  # the images, the settings file and the manifest
    assert resumed == whole  # same names, same bytes, no temporary leftovers


def test_bad_inputs_exit_2_with_one_line(tiny_sd, tmp_path, capsys):
    good = write_i2p_csv(tmp_path / "i2p.csv", i2p_rows())
    (tmp_path / "no-prompt.csv").write_text("text,seed\nhello,1\n")
    (tmp_path / "empty.csv").write_text("prompt,seed\n")
    not_sd = tmp_path / "not-sd"
    not_sd.mkdir()
    (not_sd / "model_index.json").write_text('{"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}')
    cases = [
        (tmp_path / "missing-model", good, "no such model"),
        (tmp_path, good, "not a diffusers pipeline folder"),
        (not_sd, good, "not a Stable Diffusion"),
        (tiny_sd, tmp_path / "no-prompt.csv", "no 'prompt' column"),
        (tiny_sd, tmp_path / "empty.csv", "holds no prompts"),
        (tiny_sd, tmp_path / "missing.csv", "no such prompt file"),
    ]
    for model, prompts, message in cases:
        out = tmp_path / "out"
        code, _, err = run_cli(["generate", "--model", model, "--prompts", prompts, "--out", out, *SMALL], capsys)
        assert code == 2, (model, prompts, err)
        assert len(err.strip().splitlines()) == 1 and message in err, err
        assert not out.exists()
    code, _, err = run_cli(["generate", "--model", tiny_sd, "--prompts", good, "--out", tmp_path / "o", "--category",
                            "nonexistent", *SMALL], capsys)
    assert code == 2 and "no prompts in category" in err
