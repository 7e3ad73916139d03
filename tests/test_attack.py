"""`erase attack`: adversarial prompts that re-tokenize exactly, a resumed run equal to an uninterrupted
one, judged images that plain diffusers regenerates from their CSV row, one-line errors."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sd_fixtures import folder_files, run_cli, tiny_sd  # noqa: F401

from erase.eval.attack import AttackConfig, attack_prompt, candidate_tokens, encode, tokenize
from erase.eval.judges import ClassifierJudge, NudeNetJudge
from erase.families import sd

LABEL = 8  # the class the bundled digit classifier gives some of the tiny model's images: both verdicts occur
SMALL = ["--height", 16, "--width", 16, "--steps", 2, "--iterations", 3]


def prompts_csv(folder):
    path = folder / "prompts.csv"
    path.write_text('prompt,seed,case_number\na handwritten seven,3,7a\nthe digit 7,4,7b\n"seven, ""quoted""",5,7c\n')
    return path


def attack_argv(tiny_sd, prompts, out, *extra):
    return ["attack", "--model", tiny_sd, "--original", tiny_sd, "--prompts", prompts, "--judge", "classifier",
            "--classifier", "digits", "--label", LABEL, "--out", out, *SMALL, *extra]


@pytest.fixture(scope="module")
def uninterrupted(tiny_sd, tmp_path_factory):
    from erase.cli import main

    folder = tmp_path_factory.mktemp("attack")

    assert main([str(a) for a in attack_argv(tiny_sd, prompts_csv(folder), folder / "out")]) == 0
    return folder / "out"


def figures(out) -> dict:
    summary = json.loads((out / "attack.json").read_text())
    summary.pop("seconds")
    return summary


def without_timings(out) -> dict:
    files = folder_files(out)
    files.pop("attack.json")
    for name in [name for name in files if name.startswith("prompts/")]:
        files[name] = {k: v for k, v in json.loads(files[name]).items() if k != "seconds"}
    return files


def read_csv(out) -> list[dict]:
    with (out / "attack.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_adversarial_tokens_are_pasteable_and_lower_the_loss_they_minimise(tiny_sd):
    """Candidates survive decode -> tokenize; with a loss the tokens can lower (distance of the text
    encoder's output to that of another prompt), projected gradient descent lowers it."""
    pipeline, _ = sd.load_pipeline(str(tiny_sd))
    tokenizer, text_encoder = pipeline.tokenizer, pipeline.text_encoder.requires_grad_(False)
    candidates = candidate_tokens(tokenizer)
    for i in candidates.tolist():
        assert tokenizer(tokenizer.decode([i]).strip(), add_special_tokens=False).input_ids == [i]
    assert tokenizer.bos_token_id not in candidates.tolist() and tokenizer.eos_token_id not in candidates.tolist()
    target = encode(text_encoder, tokenize(tokenizer, "q x ! m z a handwritten seven"))

    def loss_fn(hidden, draw):
        return ((hidden - target) ** 2).mean()

    result = attack_prompt(tokenizer, text_encoder, loss_fn, "a handwritten seven", candidates,
                           AttackConfig(iterations=20), seed=3)
    assert result.adversarial_prompt.endswith(" a handwritten seven")
    assert tokenize(tokenizer, result.adversarial_prompt).input_ids[0, 1:6].tolist() == result.token_ids
    assert result.loss_attack < 0.5 * result.losses[0] and result.loss_attack < result.loss_plain
    again = attack_prompt(tokenizer, text_encoder, loss_fn, "a handwritten seven", candidates,
                          AttackConfig(iterations=20), seed=3)
    assert again.token_ids == result.token_ids and again.losses == result.losses


def test_a_run_writes_results_per_prompt_and_records_the_losses(uninterrupted):
    out = uninterrupted
    summary = json.loads((out / "attack.json").read_text())
    rows = read_csv(out)
    assert list(rows[0]) == ["case_number", "prompt", "adversarial_prompt", "seed", "guidance", "score", "success",
                             "no_attack_score", "no_attack_success", "loss_plain", "loss_attack"]
    assert [r["case_number"] for r in rows] == ["7a", "7b", "7c"] and rows[2]["prompt"] == 'seven, "quoted"'
    assert all(r["adversarial_prompt"].endswith(" " + r["prompt"]) for r in rows)
    assert summary["prompts"] == 3 and summary["successes"] == sum(int(r["success"]) for r in rows)
    assert summary["asr"] == summary["successes"] / 3
    assert summary["asr_no_attack"] == sum(int(r["no_attack_success"]) for r in rows) / 3
    assert all(np.isfinite(float(r["loss_plain"])) and np.isfinite(float(r["loss_attack"])) for r in rows)
    settings = summary["settings"]
    assert (settings["sampler"], settings["steps"], settings["tokens"], settings["iterations"]) == ("DDIMScheduler", 2, 5, 3)
    assert "manual_seed(seed)" in settings["seed_convention"]
    for kind in ("attack", "no_attack"):
        assert sorted(p.name for p in (out / "images" / kind).iterdir()) == ["7a_0.png", "7b_0.png", "7c_0.png"]


def test_a_killed_run_resumes_to_the_same_figures(uninterrupted, tiny_sd, tmp_path, capsys):
    """Killed after the first prompt (--limit 1 does exactly that much), and in the middle of writing the
    first adversarial image: the resumed run ends with the uninterrupted run's files."""
    prompts, out = uninterrupted.parent / "prompts.csv", tmp_path / "out"  # same settings, prompt file included
    assert run_cli(attack_argv(tiny_sd, prompts, out, "--limit", 1), capsys)[0] == 0
    assert [r["case_number"] for r in read_csv(out)] == ["7a"]
    (out / "images" / "attack" / "7a_0.png").unlink()
    (out / "attack.json").unlink()
    assert run_cli(attack_argv(tiny_sd, prompts, out), capsys)[0] == 0
    assert figures(out) == figures(uninterrupted)
    assert without_timings(out) == without_timings(uninterrupted)  # attack.csv, every image, every prompt record
    code, _, err = run_cli(attack_argv(tiny_sd, prompts, out, "--iterations", 4), capsys)
    assert code == 2 and err.count("\n") == 1 and "other settings (iterations)" in err


def test_a_judged_image_is_regenerated_by_plain_diffusers_from_its_csv_row(uninterrupted, tmp_path):
    from diffusers import StableDiffusionPipeline

    settings = json.loads((uninterrupted / "attack.json").read_text())["settings"]
    pipe = StableDiffusionPipeline.from_pretrained(settings["model"], safety_checker=None)
    judge = ClassifierJudge("digits", str(LABEL))
    height, width = settings["height"], settings["width"]
    for row in read_csv(uninterrupted):
        latents = torch.randn((1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor,
                               width // pipe.vae_scale_factor), generator=torch.Generator("cpu").manual_seed(int(row["seed"])))
        image = pipe(row["adversarial_prompt"], latents=latents, guidance_scale=float(row["guidance"]),
                     num_inference_steps=settings["steps"], height=height, width=width).images[0]
        judged = np.asarray(Image.open(uninterrupted / "images" / "attack" / f"{row['case_number']}_0.png"))
        assert np.abs(np.asarray(image).astype(int) - judged.astype(int)).max() <= 1
        image.save(tmp_path / "again.png")
        ((score, success),) = judge([tmp_path / "again.png"])
        assert success == bool(int(row["success"])) and score == pytest.approx(float(row["score"]), abs=1e-3)
    assert {row["success"] for row in read_csv(uninterrupted)} == {"0", "1"}  # both verdicts were checked


def test_embedding_space_attack_writes_textual_inversions_that_plain_diffusers_loads(uninterrupted, tiny_sd, tmp_path,
                                                                                    capsys):
    """--space embeddings: free vectors that lower the loss below the plain prompt's; each prompt's
    vectors are a textual-inversion file, and plain diffusers (load_textual_inversion, the CSV's prompt, the
    row's seed) regenerates the judged image and its verdict; a resume finds everything done."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    out = tmp_path / "out"
    argv = attack_argv(tiny_sd, uninterrupted.parent / "prompts.csv", out, "--space", "embeddings", "--iterations", 20)
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    rows, tokens = read_csv(out), read_csv(uninterrupted)
    settings = json.loads((out / "attack.json").read_text())["settings"]
    assert settings["space"] == "embeddings"
    pipe = StableDiffusionPipeline.from_pretrained(settings["model"], safety_checker=None)
    dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    judge = ClassifierJudge("digits", str(LABEL))
    for row, token_row in zip(rows, tokens):
        assert row["adversarial_prompt"] == "<adv> " + row["prompt"]
        assert float(row["loss_attack"]) <= float(row["loss_plain"])
        inversion = out / "prompts" / f"{row['case_number']}.safetensors"
        assert load_file(str(inversion))["emb_params"].shape == (5, dim)
        pipe.load_textual_inversion(str(inversion), token="<adv>")
        latents = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(int(row["seed"])))
        image = pipe(row["adversarial_prompt"], latents=latents, guidance_scale=float(row["guidance"]),
                     num_inference_steps=settings["steps"], height=16, width=16).images[0]
        pipe.unload_textual_inversion()
        judged = np.asarray(Image.open(out / "images" / "attack" / f"{row['case_number']}_0.png"))
        assert np.abs(np.asarray(image).astype(int) - judged.astype(int)).max() <= 1
        image.save(tmp_path / "again.png")
        ((score, success),) = judge([tmp_path / "again.png"])
        assert success == bool(int(row["success"])) and score == pytest.approx(float(row["score"]), abs=1e-3)
    before = folder_files(out)
    assert run_cli(argv, capsys)[0] == 0  # resumed: nothing is redone
    assert {k: v for k, v in folder_files(out).items() if k != "attack.json"} == {
        k: v for k, v in before.items() if k != "attack.json"}


def test_conditioning_space_with_the_trajectory_objective(uninterrupted, tiny_sd, tmp_path, capsys):
    """--space conditioning --objective trajectory: against itself the plain prompt already matches the
    original's predictions on its own sampling path (loss 0); the optimised prompt_embeds are written per
    prompt, and plain diffusers (`pipe(prompt_embeds=...)`, the row's seed) regenerates the judged image."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    out = tmp_path / "out"
    argv = attack_argv(tiny_sd, uninterrupted.parent / "prompts.csv", out, "--space", "conditioning",
                       "--objective", "trajectory", "--iterations", 10, "--lr", 0.05)
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    settings = json.loads((out / "attack.json").read_text())["settings"]
    assert (settings["space"], settings["objective"]) == ("conditioning", "trajectory")
    pipe = StableDiffusionPipeline.from_pretrained(settings["model"], safety_checker=None)
    for row in read_csv(out):
        assert row["adversarial_prompt"] == "" and abs(float(row["loss_plain"])) < 1e-10
        embeds = load_file(str(out / "prompts" / f"{row['case_number']}.safetensors"))["prompt_embeds"]
        assert embeds.shape == (1, 77, pipe.text_encoder.config.hidden_size)
        latents = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(int(row["seed"])))
        image = pipe(prompt_embeds=embeds, latents=latents, guidance_scale=float(row["guidance"]),
                     num_inference_steps=settings["steps"], height=16, width=16).images[0]
        judged = np.asarray(Image.open(out / "images" / "attack" / f"{row['case_number']}_0.png"))
        assert np.abs(np.asarray(image).astype(int) - judged.astype(int)).max() <= 1
    capsys.readouterr()  # the pipeline's progress bars
    code, _, err = run_cli([*map(str, argv[:argv.index("--original")]), "--targets", str(uninterrupted / "targets"),
                            *map(str, argv[argv.index("--original") + 2 :])], capsys)
    assert code == 2 and err.count("\n") == 1 and "--objective trajectory" in err


def test_target_images_from_a_folder_and_the_nudenet_judge(uninterrupted, tiny_sd, tmp_path, capsys):
    """--targets reads the original's images as `erase generate` names them; NudeNet judges: a plain image
    scores 0, and the score is the top exposed-class score of NudeDetector itself."""
    from nudenet import NudeDetector
    from test_nudity import two_skin_ovals

    from erase.eval.nudity import EXPOSED_CLASSES

    out = tmp_path / "out"
    code, stdout, err = run_cli(["attack", "--model", tiny_sd, "--targets", uninterrupted / "targets", "--prompts",
                                 prompts_csv(tmp_path), "--limit", 1, "--judge", "nudenet", "--out", out, *SMALL], capsys)
    assert code == 0, err
    ((row),) = read_csv(out)
    assert row["adversarial_prompt"] == read_csv(uninterrupted)[0]["adversarial_prompt"]
    assert float(row["score"]) == 0.0 and row["success"] == "0"
    two_skin_ovals(tmp_path / "ovals.png", (90, 60, 40), (230, 180, 150), 90)
    detections = NudeDetector().detect(str(tmp_path / "ovals.png"))
    top = max(d["score"] for d in detections if d["class"] in EXPOSED_CLASSES)
    assert NudeNetJudge(threshold=top)([tmp_path / "ovals.png"]) == [(pytest.approx(top), True)]
    assert NudeNetJudge(threshold=top + 1e-3)([tmp_path / "ovals.png"])[0][1] is False


@pytest.mark.parametrize("change, message", [
    ({"--model": "no/such/model/folder"}, "no such model"),
    ({"--prompts": "NOCOLUMN"}, "no 'prompt' column"),
    ({"--judge": "oracle"}, "invalid choice: 'oracle'"),
    ({"--tokens": 0}, "must be at least 1"),
    ({"--label": 10}, "out of range: the classifier's classes are 0..9"),
    ({"--classifier": "no-such-classifier.safetensors"}, "no such classifier file"),
    ({"--original": None}, "give --original"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_no_output(tiny_sd, tmp_path, capsys, change, message):
    (tmp_path / "nocolumn.csv").write_text("text,seed\na seven,1\n")
    argv = attack_argv(tiny_sd, prompts_csv(tmp_path), tmp_path / "out")
    for option, value in change.items():
        if option not in argv:
            argv += [option, value]
        elif value is None:
            del argv[argv.index(option) : argv.index(option) + 2]
        else:
            argv[argv.index(option) + 1] = tmp_path / "nocolumn.csv" if value == "NOCOLUMN" else value
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_two_processes_split_the_prompts_and_end_with_the_same_results(uninterrupted, tiny_sd, tmp_path):
    """`accelerate launch` with two CPU processes (gloo), as tests/test_distributed.py starts them."""
    import os
    import subprocess
    import sys

    from test_distributed import free_port

    out = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(free_port()), "-m", "erase.cli",
               *map(str, attack_argv(tiny_sd, uninterrupted.parent / "prompts.csv", out))]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=170, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ASR ") == 1  # only the main process reports (and writes attack.json)
    assert figures(out) == figures(uninterrupted)
    assert without_timings(out) == without_timings(uninterrupted)
