"""Two CPU processes under `accelerate launch` (gloo): every batch is split across the processes, so the
2-process Fisher and SFR-on loop equal the 1-process ones on the same global batches (erase.core.sharding),
and whole `erase sd` and class-DDPM runs give the same files and results as one process.

One launch runs everything (starting two interpreters is most of the cost); the 1-process runs are made
in this process.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from erase.core.fisher import fisher_diagonal
from erase.core.losses import ascent_objective
from erase.core.sfron import SFRonConfig, unlearn
from erase.cli import main
from erase.families import ddpm
from erase.workflows.timings import PHASES
from sd_fixtures import build_tiny_sd

# Run by each process: both pass every batch; each computes its rows of every batch. Every batch carries
# its own noise and timesteps, so a row's loss is the same in whichever process computes it.
WORKER = r'''
import json, sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

sys.path.insert(0, sys.argv[2])
from test_distributed import fixed_noise_loss, loop, make_batches, make_unet, mask_of
from erase.core.fisher import fisher_diagonal

out = Path(sys.argv[1])
accelerator = Accelerator(cpu=True)
unet = make_unet()
rows = []
unet.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))  # this process's share
fisher = fisher_diagonal(unet, fixed_noise_loss, make_batches(), accelerator=accelerator, show_progress=False)
history = loop(unet, mask_of(fisher), accelerator)
after = torch.cat([p.detach().flatten() for p in unet.parameters()])
weights = accelerator.gather(after[None])  # one row per process
if accelerator.is_main_process:
    save_file({k: v.contiguous() for k, v in fisher.items()}, str(out / "fisher_2proc.safetensors"))
    save_file({"weights": weights.contiguous()}, str(out / "weights.safetensors"))
    (out / "info.json").write_text(json.dumps({"world": accelerator.num_processes, "history": history, "rows": rows}))

# Whole runs, as a user launches them. The SD UNet's rows in training mode (the loop) are counted.
from diffusers import UNet2DConditionModel
from erase.cli import main
from test_distributed import ddpm_args, sd_args

loop_rows = []
torch.nn.modules.module.register_module_forward_pre_hook(
    lambda m, args: loop_rows.append(len(args[0])) if isinstance(m, UNet2DConditionModel) and m.training else None)
assert main(sd_args(sys.argv[3], out / "sd")) == 0
assert main(ddpm_args(out / "ddpm")) == 0
(out / f"sd_loop_rows_{accelerator.process_index}.json").write_text(json.dumps(loop_rows))
'''


def sd_args(model, out) -> list[str]:
    """A tiny `erase sd` run: 4 + 4 images, Fisher on 2 batches of 2, 2 steps, one sample per prompt."""
    return [str(a) for a in ["sd", "--model", model, "--out", out, "--steps", 2, "--num-images", 4, "--batch-size", 2,
                             "--fisher-batches", 2, "--height", 16, "--width", 16, "--inference-steps", 3,
                             "--eval-samples", 1, "--mixed-precision", "no", "--set", "eval.nudenet=false"]]


def ddpm_args(out) -> list[str]:
    """The bundled digits DDPM recipe, 2 steps at batch 16, a small evaluation."""
    from erase.recipes import REPO_ROOT

    return [str(a) for a in ["run", REPO_ROOT / "pipelines" / "digits-ddpm-class.toml", "--out", out,
                             "--set", "sfron.steps=2", "--set", "data.batch_size=16", "--set", "fisher.batches=2",
                             "--set", "eval.forget_samples=10", "--set", "eval.samples_per_class=4",
                             "--set", "eval.inference_steps=3"]]


def make_unet():
    torch.manual_seed(0)
    return ddpm.build_unet("tiny", num_classes=3).requires_grad_(True)


def make_batches(count: int = 4, size: int = 4):
    """(images, labels, noise, timesteps) batches, generated once from a fixed seed."""
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(size, 1, 8, 8, generator=generator),
            torch.randint(0, 3, (size,), generator=generator),
            torch.randn(size, 1, 8, 8, generator=generator),
            torch.randint(0, 1000, (size,), generator=generator),
        )
        for _ in range(count)
    ]


SCHEDULER = ddpm.build_scheduler()


def mask_of(fisher):
    return {name: f > f.flatten().median() for name, f in fisher.items()}


def loop(unet, mask, accelerator=None):
    """Two SFR-on steps (masked adaptive ascent on batches 0-1, remain steps on batches 2-3)."""
    batches = make_batches()
    return unlearn(unet, ascent_objective(fixed_noise_loss), fixed_noise_loss, batches[:2], batches[2:],
                   SFRonConfig(steps=2, lr=1e-3), mask=mask, accelerator=accelerator, show_progress=False)


def fixed_noise_loss(model, batch):
    """The DDPM family's ε-MSE, with the batch's own noise and timesteps instead of fresh random ones."""
    images, labels, noise, timesteps = batch
    noisy = SCHEDULER.add_noise(images, noise, timesteps)
    prediction = model(noisy, timesteps, class_labels=labels).sample
    return ((prediction - noise) ** 2).mean(dim=(1, 2, 3))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    tiny_sd = build_tiny_sd(out / "tiny-sd")
    script = out / "worker.py"
    script.write_text(WORKER)
    # `accelerate launch --cpu --num_processes 2` starts ONE process unless given an MPI hostfile (accelerate
    # 1.x); `--multi_gpu` launches through torchrun, and ACCELERATE_USE_CPU makes each process use gloo on CPU.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(script), str(out), str(Path(__file__).parent), str(tiny_sd),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run folder:") == 2  # one report per run, from the main process
    return out


def test_two_process_fisher_equals_one_process_fisher(two_process_run):
    two = load_file(str(two_process_run / "fisher_2proc.safetensors"))
    one = fisher_diagonal(make_unet(), fixed_noise_loss, make_batches(), show_progress=False)
    assert set(two) == set(one)
    # fp32 sums taken in another order (two half-batch gradients averaged): rounding only
    largest = max(float(f.max()) for f in one.values())
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-7 * largest)
    info = json.loads((two_process_run / "info.json").read_text())
    assert set(info["rows"]) == {2}  # each process ran the UNet on half of every batch of 4
    # The same mask, except on weights whose gradient is zero up to rounding (the attention key bias:
    # softmax ignores it; its Fisher is ~1e-20, noise in any run, and it gets no real update either way).
    real = {name for name, f in one.items() if f.max() > 1e-12 * largest}
    assert len(real) == len(one) - 1
    assert all(torch.equal(mask_of(two)[name], mask_of(one)[name]) for name in real)


def test_two_process_loop_equals_one_process_loop(two_process_run):
    info = json.loads((two_process_run / "info.json").read_text())
    assert info["world"] == 2
    unet = make_unet()
    history = loop(unet, mask_of(fisher_diagonal(unet, fixed_noise_loss, make_batches(), show_progress=False)))
    rank0, rank1 = load_file(str(two_process_run / "weights.safetensors"))["weights"]
    assert torch.equal(rank0, rank1)  # DDP kept the replicas identical
    start = 0
    for (name, p), base in zip(unet.named_parameters(), make_unet().parameters()):
        two = rank0[start : start + p.numel()].view_as(p)
        start += p.numel()
        if name == "mid_block.attentions.0.to_k.bias":
            continue  # its gradient is rounding noise (see above); Adam's first step moves it ±lr whatever its size
        # Gradients agree up to fp32 rounding (~1e-7 relative). Adam's first update is lr·g/|g|, so a weight
        # whose gradient happens to be near zero moves by a rounding-sensitive amount: up to 4e-6 here, of the
        # 2e-3 two steps at lr 1e-3 can move a weight. 1e-5 (1% of one step) is rounding, not another run.
        torch.testing.assert_close(two, p.detach(), rtol=0, atol=1e-5, msg=name)
    assert any(not torch.equal(p, base) for p, base in zip(unet.parameters(), make_unet().parameters()))  # it trained
    for a, b in zip(info["history"], history):
        assert a["step"] == b["step"]
        for key in ("forget_loss", "remain_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5)


def test_fisher_equals_the_mean_of_squared_batch_gradients_on_a_unet():
    """The fused accumulation (torch._foreach_addcmul_) against a direct per-tensor computation."""
    unet, batches = make_unet(), make_batches(count=3)
    expected = {n: torch.zeros_like(p) for n, p in unet.named_parameters()}
    for batch in batches:
        unet.zero_grad(set_to_none=True)
        fixed_noise_loss(unet, batch).mean().backward()
        for n, p in unet.named_parameters():
            expected[n] += p.grad**2 / len(batches)
    fisher = fisher_diagonal(unet, fixed_noise_loss, batches, show_progress=False)
    for name, value in expected.items():
        torch.testing.assert_close(fisher[name], value, rtol=1e-5, atol=0)


def test_two_process_sd_run_equals_one_process_run(two_process_run, capsys):
    assert main(sd_args(two_process_run / "tiny-sd" / "pipeline", two_process_run / "sd-one")) == 0
    capsys.readouterr()
    assert_same_run(two_process_run / "sd-one", two_process_run / "sd", "unet/diffusion_pytorch_model.safetensors")
    # each process ran the UNet on one row of every global batch of 2 in the loop: half of the work
    for rank in range(2):
        rows = json.loads((two_process_run / f"sd_loop_rows_{rank}.json").read_text())
        assert rows and set(rows) == {1}


def test_two_process_class_ddpm_run_equals_one_process_run(two_process_run, capsys):
    assert main(ddpm_args(two_process_run / "ddpm-one")) == 0
    capsys.readouterr()
    assert_same_run(two_process_run / "ddpm-one", two_process_run / "ddpm", "unet/diffusion_pytorch_model.safetensors")


def assert_same_run(one: Path, two: Path, weights: str) -> None:
    """The same files (none left temporary), the same mask and results, weights equal up to rounding.

    Tolerances: gradients agree to fp32 rounding (~1e-7 relative: half-batch gradients averaged instead
    of one full-batch backward). The mask keeps weights whose F_f/F_r ≥ γ, so a weight whose ratio equals
    γ to within that rounding may land on either side (2 of 702,753 in the DDPM run). Adam's update
    lr·m/√v does not shrink with the gradient, so a weight whose gradient is ~0 in a step moves by a
    rounding-sensitive amount (up to ~lr); all but a few weights agree to 1e-3·lr per step.
    """
    names = sorted(str(p.relative_to(one)) for p in one.rglob("*"))
    assert names == sorted(str(p.relative_to(two)) for p in two.rglob("*"))
    assert not [n for n in names if n.endswith(".tmp") or Path(n).name.startswith(".")]
    m1, m2 = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert m2["processes"] == 2 and m1["processes"] == 1
    assert set(m1) == set(m2) and set(m1["timings"]) == set(m2["timings"]) == {*PHASES, "steps_per_second"}
    lr = m1["history"][0]["lr"]

    mask1, mask2 = load_file(str(one / "mask.safetensors")), load_file(str(two / "mask.safetensors"))
    with safe_open(str(one / "mask.safetensors"), framework="pt") as f:
        gamma = float(f.metadata()["gamma"])
    f_f, f_r = load_file(str(one / "fisher_forget.safetensors")), load_file(str(one / "fisher_remain.safetensors"))
    total = sum(m.numel() for m in mask1.values())
    differing = 0
    for name, m in mask1.items():
        flipped = m != mask2[name]
        differing += int(flipped.sum())
        ratio = (f_f[name][flipped] + 1e-15) / (f_r[name][flipped] + 1e-15)
        assert torch.all((ratio / gamma - 1).abs() < 1e-4), name  # only ratios at the threshold may differ
    assert differing <= 1e-5 * total

    w1, w2 = load_file(str(one / "model" / weights)), load_file(str(two / "model" / weights))
    diff = torch.cat([(w1[k] - w2[k]).abs().flatten() for k in w1])
    assert (diff > 1e-3 * lr * len(m1["history"])).float().mean() < 5e-3
    for a, b in zip(m1["history"], m2["history"]):
        for key in ("forget_loss", "remain_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4)
    for when in ("before", "after"):  # judged on images of near-identical models: the same verdicts
        for key in ("fa", "fa_paraphrase", "remaining_accuracy"):
            assert m2[when].get(key) == m1[when].get(key), (when, key)
        for key in {"fid", "forget_gap", "remain_mse"} & set(m1[when]):
            assert m2[when][key] == pytest.approx(m1[when][key], rel=1e-3), (when, key)
