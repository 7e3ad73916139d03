"""Two CPU processes under `accelerate launch` (gloo): every batch is split across the processes, so the
2-process Fisher and SFR-on loop equal the 1-process ones on the same global batches (erase.core.sharding)."""

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
from erase.core.losses import ascent_objective
from erase.core.sfron import SFRonConfig, unlearn
from erase.families import ddpm

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
