"""Two CPU processes under `accelerate launch` (gloo): the Fisher sums are all-reduced, so the 2-process
Fisher equals the 1-process Fisher on the same batches, and the SFR-on loop runs with DDP."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from erase.core.fisher import fisher_diagonal
from erase.families import ddpm

# Run by each process. Batch i goes to process i mod 2; every batch carries its own noise and timesteps,
# so a batch's loss is the same in whichever process computes it.
WORKER = r'''
import json, sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

sys.path.insert(0, sys.argv[2])
from test_distributed import fixed_noise_loss, make_batches, make_unet
from erase.core.fisher import fisher_diagonal
from erase.core.losses import ascent_objective
from erase.core.sfron import SFRonConfig, unlearn

out = Path(sys.argv[1])
accelerator = Accelerator(cpu=True)
rank, world = accelerator.process_index, accelerator.num_processes
unet = make_unet()
batches = make_batches()
mine = batches[rank::world]
fisher = fisher_diagonal(unet, fixed_noise_loss, mine, accelerator=accelerator, show_progress=False)
local = fisher_diagonal(unet, fixed_noise_loss, mine, show_progress=False)  # this process's batches alone

# The loop under DDP: a masked forget step then a remain step, twice, on this process's batches.
mask = {name: f > f.flatten().median() for name, f in fisher.items()}
before = torch.cat([p.detach().flatten().clone() for p in unet.parameters()])
history = unlearn(
    unet, ascent_objective(fixed_noise_loss), fixed_noise_loss, mine[:1], mine[1:], SFRonConfig(steps=2, lr=1e-3),
    mask=mask, accelerator=accelerator, show_progress=False,
)
after = torch.cat([p.detach().flatten() for p in unet.parameters()])
weights = accelerator.gather(after[None])  # one row per process
if accelerator.is_main_process:
    save_file({k: v.contiguous() for k, v in fisher.items()}, str(out / "fisher_2proc.safetensors"))
    save_file({k: v.contiguous() for k, v in local.items()}, str(out / "fisher_rank0_alone.safetensors"))
    save_file({"before": before, "weights": weights.contiguous()}, str(out / "weights.safetensors"))
    (out / "info.json").write_text(json.dumps({"world": world, "history": history}))
'''


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
    script = out / "worker.py"
    script.write_text(WORKER)
    # `accelerate launch --cpu --num_processes 2` starts ONE process unless given an MPI hostfile (accelerate
    # 1.x); `--multi_gpu` launches through torchrun, and ACCELERATE_USE_CPU makes each process use gloo on CPU.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(script), str(out), str(Path(__file__).parent),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=170, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_process_fisher_equals_one_process_fisher(two_process_run):
    two = load_file(str(two_process_run / "fisher_2proc.safetensors"))
    alone = load_file(str(two_process_run / "fisher_rank0_alone.safetensors"))
    one = fisher_diagonal(make_unet(), fixed_noise_loss, make_batches(), show_progress=False)
    assert set(two) == set(one)
    for name in one:
        assert one[name].abs().max() > 0, name
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6 * float(one[name].abs().max()))
    # Not trivially equal: rank 0's two batches alone give a different Fisher, so the sums were reduced.
    assert any((alone[n] - one[n]).abs().max() > 1e-2 * one[n].abs().max() for n in one)


def test_the_unlearning_loop_runs_under_two_processes(two_process_run):
    info = json.loads((two_process_run / "info.json").read_text())
    assert info["world"] == 2
    assert [r["step"] for r in info["history"]] == [1, 2]
    assert all("forget_loss" in r and "remain_loss" in r for r in info["history"])
    weights = load_file(str(two_process_run / "weights.safetensors"))
    rank0, rank1 = weights["weights"]
    assert torch.equal(rank0, rank1)  # DDP kept the replicas identical
    assert not torch.equal(rank0, weights["before"])  # and the loop did train


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
