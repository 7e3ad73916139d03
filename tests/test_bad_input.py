"""Every class of bad input, across commands: one line on stderr, exit 2 for a user mistake (1 for an I/O
failure while writing), never a traceback, nothing left behind. Each case fails before any heavy work,
on tiny models (a recipe key, a number, an output path, a damaged input)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from erase.core.fisher import save_fisher
from erase.families import ddpm
from erase.families.classifier import DigitCNN, save_classifier
from erase.families.ddpm_pipeline import ClassConditionalDDPMPipeline
from erase.recipes import PIPELINES_DIR
from sd_fixtures import run_cli, tiny_sd  # noqa: F401 (a fixture)

DIGITS_RECIPE = PIPELINES_DIR / "digits-ddpm-class.toml"


@pytest.fixture(scope="module")
def fx(tmp_path_factory, tiny_sd):  # noqa: F811
    """Good inputs and damaged twins: weights cut short, a binary prompt file, an image that is not one."""
    root = tmp_path_factory.mktemp("bad-input")
    torch.manual_seed(0)
    unet = ddpm.build_unet("tiny", num_classes=10)
    ClassConditionalDDPMPipeline(unet=unet, scheduler=ddpm.build_scheduler()).save_pretrained(root / "ddpm")
    save_classifier(DigitCNN(), root / "clf.safetensors")
    (root / "prompts.csv").write_text("prompt,seed\na cat,1\na dog,2\n")
    (root / "images").mkdir()
    for k in range(2):
        Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(root / "images" / f"{k}_0.png")
    (root / "fisher").mkdir()
    save_fisher({"w": torch.rand(4096)}, root / "fisher" / "fisher_forget.safetensors")
    save_fisher({"w": torch.rand(4096)}, root / "fisher" / "fisher_remain.safetensors")
    (root / "recipe.toml").write_text(
        f'family = "ddpm"\ntask = "class"\n[model]\npath = "{root / "ddpm"}"\n[forget]\nclass = 3\n'
        '[data]\ndataset = "digits"\nbatch_size = 16\n[fisher]\nbatches = 1\n'
    )
    (root / "a-file").write_text("not a folder")

    bad = root / "bad"
    bad.mkdir()
    for name, source, part in (("sd", tiny_sd, "unet"), ("sd-text", tiny_sd, "text_encoder"), ("ddpm", root / "ddpm", "unet")):
        target = bad / name
        shutil.copytree(source, target)
        weights = next((target / part).glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:300])  # truncated
    (bad / "clf.safetensors").write_bytes((root / "clf.safetensors").read_bytes()[:100])
    (bad / "fisher").mkdir()
    (bad / "fisher" / "fisher_forget.safetensors").write_bytes(b"\x00" * 64)
    (bad / "fisher" / "fisher_remain.safetensors").write_bytes(b"\x00" * 64)
    (bad / "prompts.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary")
    (bad / "cut.csv").write_text('prompt,seed\n"a cat, cut short')
    (bad / "recipe.toml").write_text((root / "recipe.toml").read_text().replace("[data]", "[dta]"))
    (bad / "cut.toml").write_text((root / "recipe.toml").read_text()[:60])  # cut inside a string
    (bad / "generated").mkdir()
    (bad / "generated" / ".erase-generate.json").write_text("{cut short")
    (bad / "images").mkdir()
    for k in range(2):
        (bad / "images" / f"{k}_0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return {"root": root, "bad": bad, "sd": tiny_sd}


def fill(argv, fx, out):
    values = {"{sd}": fx["sd"], "{root}": fx["root"], "{bad}": fx["bad"], "{out}": out, "{recipe}": DIGITS_RECIPE}
    filled = []
    for arg in argv:
        for name, value in values.items():
            arg = arg.replace(name, str(value))
        filled.append(arg)
    return filled


def assert_refused(argv, fx, tmp_path, capsys, message, code=2, out=None):
    out = out or tmp_path / "out"
    got, _, err = run_cli(fill(argv, fx, out), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("erase") and message in lines[0], lines
    assert not Path(out).exists()  # nothing written, not even the folder


# --- 1. a misspelled or unknown section or key, in a recipe file or --set -------------------------

UNKNOWN_KEYS = [
    (["run", "{recipe}", "--set", "sfron.lrr=1", "--out", "{out}"], "unknown recipe key sfron.lrr (did you mean sfron.lr?)"),
    (["run", "{bad}/recipe.toml", "--out", "{out}"], "unknown recipe key dta (did you mean data?)"),
    (["demo", "--set", "data.num_image=4", "--out", "{out}"], "did you mean data.num_images?"),
    (["demo", "--family", "ddpm", "--set", "fisher.batchs=2", "--out", "{out}"], "did you mean fisher.batches?"),
    (["sd", "--model", "{sd}", "--set", "method.forget_los=ascent", "--out", "{out}"], "did you mean method.forget_loss?"),
    (["ddpm", "--random-init", "--forget-class", "1", "--no-fid", "--set", "eval.samples_per_clas=2", "--out", "{out}"],
     "did you mean eval.samples_per_class?"),
    (["dit", "--random-init", "--forget-class", "207", "--set", "data.generated_forgt=4", "--out", "{out}"],
     "did you mean data.generated_forget?"),
    (["classifier", "--dataset", "digits", "--forget", "random", "--set", "per_method.gaa.lr=0.1", "--out", "{out}"],
     "unknown recipe key per_method.gaa (did you mean per_method.ga?)"),
    (["fisher", "{root}/recipe.toml", "--set", "forget.clas=3", "--out", "{out}"], "did you mean forget.class?"),
    (["run", "{recipe}", "--set", "sfron=3", "--out", "{out}"], "sfron must be a table"),
]


@pytest.mark.parametrize("argv, message", UNKNOWN_KEYS, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(UNKNOWN_KEYS)])
def test_unknown_recipe_keys_are_refused_with_the_closest_known_one(argv, message, fx, tmp_path, capsys):
    assert_refused(argv, fx, tmp_path, capsys, message)


# --- 2. a number that is not finite or out of range (recipe keys and flags) ------------------------

NUMBERS = [
    (["run", "{recipe}", "--set", "sfron.lr=nan", "--out", "{out}"], "sfron.lr must be a finite number"),
    (["run", "{recipe}", "--set", "sfron.gamma=-1", "--out", "{out}"], "sfron.gamma must be in (0, ∞)"),
    (["run", "{recipe}", "--set", "sfron.lr=true", "--out", "{out}"], "sfron.lr must be a number"),
    (["demo", "--set", "data.num_images=0", "--out", "{out}"], "data.num_images must be at least 1"),
    (["sd", "--model", "{sd}", "--set", "sfron.temperature=inf", "--out", "{out}"], "sfron.temperature must be a finite"),
    (["sd", "--model", "{sd}", "--set", "fisher.salun_fraction=1.5", "--out", "{out}"], "fisher.salun_fraction must be at most 1"),
    (["sd", "--model", "{sd}", "--set", "data.guidance=-2", "--out", "{out}"], "data.guidance must be at least 0"),
    (["ddpm", "--random-init", "--forget-class", "1", "--no-fid", "--set", "method.negative_guidance=0", "--out", "{out}"],
     "method.negative_guidance must be above 0"),
    (["dit", "--random-init", "--forget-class", "207", "--set", "data.batch_size=0", "--out", "{out}"],
     "data.batch_size must be at least 1"),
    (["classifier", "--dataset", "digits", "--forget", "random", "--set", "forget.fraction=1", "--out", "{out}"],
     "forget.fraction must be below 1"),
    (["classifier", "--dataset", "digits", "--forget", "random", "--set", "per_method.ga.forget_alpha=-1", "--out", "{out}"],
     "per_method.ga.forget_alpha must be in [0, ∞)"),
    (["classifier", "--dataset", "digits", "--forget", "random", "--set", "sfron.momentum=1", "--out", "{out}"],
     "sfron.momentum must be in [0, 1)"),
    (["fisher", "{root}/recipe.toml", "--set", "fisher.batches=-1", "--out", "{out}"], "fisher.batches must be at least 0"),
    (["fisher", "{root}/recipe.toml", "--set", "fisher.clip=-1", "--out", "{out}"], "fisher.clip must be at least 0"),
    (["ddpm", "--random-init", "--forget-class", "1", "--no-fid", "--set", "method.label_dropout=1", "--out", "{out}"],
     "method.label_dropout must be below 1"),
    (["sd", "--model", "{sd}", "--lr", "nan", "--out", "{out}"], "--lr: must be a finite number"),
    (["sd", "--model", "{sd}", "--gamma", "inf", "--out", "{out}"], "--gamma: must be a finite number"),
    (["mask", "--fisher-dir", "{root}/fisher", "--gamma", "-1", "--out", "{out}"], "--gamma: must be > 0"),
    (["generate", "--model", "{sd}", "--prompts", "{root}/prompts.csv", "--guidance", "inf", "--out", "{out}"],
     "--guidance: must be a finite number"),
    (["pretrain", "ddpm", "--data", "{root}/images", "--ema-decay", "1.5", "--out", "{out}"], "--ema-decay: must be in [0, 1)"),
    (["attack", "--model", "{sd}", "--original", "{sd}", "--prompts", "{root}/prompts.csv", "--judge", "nudenet",
      "--lr", "-1", "--out", "{out}"], "--lr: must be > 0"),
]


@pytest.mark.parametrize("argv, message", NUMBERS, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(NUMBERS)])
def test_numbers_out_of_range_or_not_finite_are_refused(argv, message, fx, tmp_path, capsys):
    assert_refused(argv, fx, tmp_path, capsys, message)


# --- 3. an output path that cannot be created: under a file, or in a read-only folder --------------

OUTPUTS = [  # {out} is a folder the command would create, {out}.json a file it would write
    ["run", "{recipe}", "--out", "{out}"],
    ["demo", "--out", "{out}"],
    ["demo", "--family", "ddpm", "--out", "{out}"],
    ["sd", "--model", "{sd}", "--out", "{out}"],
    ["ddpm", "--random-init", "--forget-class", "1", "--no-fid", "--out", "{out}"],
    ["dit", "--random-init", "--forget-class", "207", "--out", "{out}"],
    ["classifier", "--dataset", "digits", "--forget", "random", "--out", "{out}"],
    ["fisher", "{root}/recipe.toml", "--out", "{out}"],
    ["mask", "--fisher-dir", "{root}/fisher", "--out", "{out}.safetensors"],
    ["generate", "--model", "{sd}", "--prompts", "{root}/prompts.csv", "--out", "{out}"],
    ["patch", "apply", "{sd}", "{root}/clf.safetensors", "{out}"],
    ["evaluate", "classifier", "{root}/images", "--classifier", "digits", "--label", "3", "--out", "{out}.json"],
    ["evaluate", "fid", "{root}/images", "{root}/images", "--features-classifier", "{root}/clf.safetensors",
     "--out", "{out}.json"],
    ["evaluate", "nudity", "{root}/images", "--out", "{out}.json"],
    ["pretrain", "digits", "--out", "{out}"],
    ["pretrain", "digits-sd", "--out", "{out}"],
    ["pretrain", "ddpm", "--data", "{root}/images", "--out", "{out}"],
    ["pretrain", "classifier", "--data", "{root}/images", "--out", "{out}.safetensors"],
    ["attack", "--model", "{sd}", "--original", "{sd}", "--prompts", "{root}/prompts.csv", "--judge", "classifier",
     "--classifier", "digits", "--label", "3", "--out", "{out}"],
    ["export", "lora", "{root}", "--rank", "2", "--out", "{out}.safetensors"],
]


def read_only_folder(tmp_path) -> Path:
    """A folder nobody may write into: a chmod 555 folder, or (as root, who ignores modes) /sys."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if os.access("/sys", os.W_OK) and Path("/sys").is_dir():
        try:
            Path("/sys/.erase-probe").touch()
        except OSError:
            return Path("/sys")
        pytest.skip("no read-only folder on this machine")
    return Path("/sys")


@pytest.mark.parametrize("where", ["under a file", "read-only"])
@pytest.mark.parametrize("argv", OUTPUTS, ids=[" ".join(a[:2]) + f"-{i}" for i, a in enumerate(OUTPUTS)])
def test_an_output_that_cannot_be_created_is_refused_before_any_work(argv, where, fx, tmp_path, capsys):
    parent = fx["root"] / "a-file" if where == "under a file" else read_only_folder(tmp_path)
    out = parent / f"erase-out-{os.getpid()}"
    message = "is a file" if where == "under a file" else "cannot be written"
    argv = [a.replace("{out}", str(out)) for a in argv]
    got, _, err = run_cli(fill(argv, fx, out), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == 2 and len(lines) == 1 and message in lines[0], lines
    assert not any(Path(str(out) + suffix).exists() for suffix in ("", ".json", ".safetensors"))


# --- 4. the disk fills up while writing: one line naming the file, exit 1, no partial file ----------

WRITE_FAILURES = [  # (argv, the file that cannot be written, the file-size limit in bytes)
    (["evaluate", "classifier", "{root}/images", "--classifier", "digits", "--label", "3", "--out", "{out}/result.json"],
     "result.json", 200),
    (["mask", "--fisher-dir", "{root}/fisher", "--out", "{out}/mask.safetensors"], "mask.safetensors", 2048),
]
RUN_UNDER_LIMIT = """
import contextlib, io, json, resource, signal, sys
from erase.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
for argv, limit in json.loads(sys.argv[1]):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    print(json.dumps([code, err.getvalue()]))
"""


def test_a_failed_write_names_the_file_and_leaves_nothing_behind(fx, tmp_path):
    """The disk fills up (a file-size limit: EFBIG) while a JSON or a safetensors output is written."""
    outs = [tmp_path / f"out{i}" for i in range(len(WRITE_FAILURES))]
    for out in outs:
        out.mkdir()
    cases = [[fill(argv, fx, out), limit] for (argv, _, limit), out in zip(WRITE_FAILURES, outs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", RUN_UNDER_LIMIT, json.dumps(cases)], capture_output=True, text=True,
                          env=env, timeout=300, check=True)
    assert len(done.stdout.splitlines()) == len(cases), done.stdout
    for (_, name, _), out, line in zip(WRITE_FAILURES, outs, done.stdout.splitlines()):
        code, err = json.loads(line)
        lines = [text for text in err.splitlines() if text.strip()]
        assert code == 1 and len(lines) == 1, err
        assert lines[0].startswith("erase: error: File too large") and lines[0].endswith(str(out / name)), lines
        assert list(out.iterdir()) == []  # neither the file nor its temporary twin


# --- 5. damaged inputs: weights cut short, prompt files that are not text or not CSV, broken images ----

DAMAGED = [
    (["sd", "--model", "{bad}/sd", "--out", "{out}"], "cannot load"),
    (["generate", "--model", "{bad}/sd", "--prompts", "{root}/prompts.csv", "--out", "{out}"], "cannot load"),
    (["generate", "--model", "{bad}/sd-text", "--prompts", "{root}/prompts.csv", "--out", "{out}"], "cannot load"),
    (["ddpm", "--model", "{bad}/ddpm", "--forget-class", "1", "--no-fid", "--out", "{out}"], "cannot load"),
    (["classifier", "--dataset", "digits", "--forget", "random", "--model", "{bad}/clf.safetensors", "--out", "{out}"],
     "cannot load a classifier"),
    (["demo", "--family", "ddpm", "--set", "eval.classifier={bad}/clf.safetensors", "--out", "{out}"],
     "not a readable safetensors file"),
    (["evaluate", "classifier", "{root}/images", "--classifier", "{bad}/clf.safetensors", "--label", "3"],
     "not a readable safetensors file"),
    (["patch", "apply", "{sd}", "{bad}/clf.safetensors", "{out}"], "not a readable safetensors file"),
    (["mask", "--fisher-dir", "{bad}/fisher", "--out", "{out}"], "not a readable safetensors file"),
    (["generate", "--model", "{sd}", "--prompts", "{bad}/prompts.csv", "--out", "{out}"], "not a UTF-8 text file"),
    (["generate", "--model", "{sd}", "--prompts", "{bad}/cut.csv", "--out", "{out}"], "not a valid CSV file"),
    (["sd", "--model", "{sd}", "--set", "forget.prompts_file={bad}/cut.csv", "--out", "{out}"], "not a valid CSV file"),
    (["attack", "--model", "{sd}", "--original", "{sd}", "--prompts", "{bad}/prompts.csv", "--judge", "nudenet",
      "--out", "{out}"], "not a UTF-8 text file"),
    (["run", "{bad}/prompts.csv", "--out", "{out}"], "not a UTF-8 text file"),
    (["run", "{bad}/cut.toml", "--out", "{out}"], "is not valid TOML"),
    (["fisher", "{bad}/cut.toml", "--out", "{out}"], "is not valid TOML"),
    (["evaluate", "classifier", "{bad}/images", "--classifier", "digits", "--label", "3"], "is not a readable image"),
    (["evaluate", "fid", "{bad}/images", "{root}/images", "--features-classifier", "{root}/clf.safetensors"],
     "is not readable"),
]


@pytest.mark.parametrize("argv, message", DAMAGED, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(DAMAGED)])
def test_damaged_weights_prompt_files_and_images_are_refused(argv, message, fx, tmp_path, capsys):
    assert_refused(argv, fx, tmp_path, capsys, message)


def test_a_damaged_resume_record_is_refused_and_left_alone(fx, capsys):
    """`erase generate` resumes only with the settings that made the images; a damaged record says so."""
    record = fx["bad"] / "generated" / ".erase-generate.json"
    argv = ["generate", "--model", fx["sd"], "--prompts", fx["root"] / "prompts.csv", "--out", record.parent]
    code, _, err = run_cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "is damaged" in lines[0], lines
    assert sorted(p.name for p in record.parent.iterdir()) == [record.name] and record.read_text() == "{cut short"
