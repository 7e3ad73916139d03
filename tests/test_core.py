"""The SFR-on core on hand-computed cases: Fisher, mask, adaptive weights, masked steps, NaN stop."""

import math

import pytest
import torch
from torch import nn

from erase.core.fisher import fisher_diagonal, gradient_sum, load_fisher, save_fisher
from erase.core.losses import adaptive_forget_loss, adaptive_weights, ascent_objective
from erase.core.saliency import gradient_saliency_mask, load_mask, mask_stats, saliency_mask, save_mask
from erase.core.sfron import SFRonConfig, forget_weight, learning_rate, unlearn
from erase.errors import NonFiniteLossError


def squared_error(model, batch):
    x, y = batch
    return (model(x).squeeze(-1) - y) ** 2


def test_fisher_is_mean_of_squared_batch_gradients():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    # batch 1: x=(1,0), y=0 -> residual 1 -> dL/dw = 2*r*x = (2, 0)
    # batch 2: x=(0,1), y=0 -> residual 2 -> dL/dw = (0, 4)
    batches = [(torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])), (torch.tensor([[0.0, 1.0]]), torch.tensor([0.0]))]
    fisher = fisher_diagonal(model, squared_error, batches, show_progress=False)
    assert torch.allclose(fisher["weight"], torch.tensor([[(4 + 0) / 2, (0 + 16) / 2]]))
    assert fisher["weight"].dtype == torch.float32
    assert model.weight.grad is None  # leaves no gradients behind


def test_fisher_clip_bounds_each_batch_gradient_before_it_is_squared():
    """The official class-DDPM Fisher: batch gradients (2, 0) and (0, 4) clipped to norm 1 are (1, 0), (0, 1)."""
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    batches = [(torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])), (torch.tensor([[0.0, 1.0]]), torch.tensor([0.0]))]
    fisher = fisher_diagonal(model, squared_error, batches, show_progress=False, clip=1.0)
    assert torch.allclose(fisher["weight"], torch.tensor([[0.5, 0.5]]))
    unbound = fisher_diagonal(model, squared_error, batches, show_progress=False, clip=10.0)  # never binds
    assert torch.equal(unbound["weight"], fisher_diagonal(model, squared_error, batches, show_progress=False)["weight"])


def test_gradient_sum_adds_batch_gradients_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    batches = [(torch.randn(5, 3), torch.randn(5)) for _ in range(3)]
    model.eval()
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for batch in batches:
        model.zero_grad()
        squared_error(model, batch).mean().backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad
    model.train()
    sums = gradient_sum(model, squared_error, batches, num_batches=3, show_progress=False)
    assert model.training  # restored
    for n in expected:
        assert torch.allclose(sums[n], expected[n], atol=1e-6), n
    assert all(torch.equal(a, b) for a, b in zip(
        gradient_sum(model, squared_error, batches, num_batches=1, show_progress=False).values(),
        gradient_sum(model, squared_error, batches[:1], show_progress=False).values()))


def test_fisher_iterates_a_data_loader_once():
    """A shuffled DataLoader is drawn once per pass: the Fisher sees the batches a plain loop would."""
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(40, 4), torch.randn(40))

    def loader():
        return DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))

    model = nn.Linear(4, 1)
    seen = []

    def recording(model, batch):
        seen.append(batch[1])
        return (model(batch[0]).squeeze(-1) - batch[1]) ** 2

    fisher_diagonal(model, recording, loader(), num_batches=3, show_progress=True)
    expected = [y for _, y in loader()][:3]
    assert len(seen) == 3 and all(torch.equal(a, b) for a, b in zip(seen, expected))


def test_fisher_round_trip(tmp_path):
    fisher = {"a": torch.rand(3, 4), "b.c": torch.rand(5)}
    save_fisher(fisher, tmp_path / "f.safetensors")
    loaded = load_fisher(tmp_path / "f.safetensors")
    assert all(torch.equal(fisher[k], loaded[k]) for k in fisher)


def test_mask_formula_on_a_hand_computed_example():
    forget = {"w": torch.tensor([1.0, 0.0, 2.0, 0.0, 3.0])}
    remain = {"w": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])}
    # ratios: 1, (1e-15/1e-15)=1, 2, ~1e-15, 3e15
    assert saliency_mask(forget, remain, 1.0)["w"].tolist() == [True, True, True, False, True]
    assert saliency_mask(forget, remain, 3.0)["w"].tolist() == [False, False, False, False, True]
    assert saliency_mask(forget, remain, 0.3)["w"].tolist() == [True, True, True, False, True]
    assert saliency_mask(forget, remain, 2.0)["w"].tolist() == [False, False, True, False, True]


def test_mask_stats_and_round_trip(tmp_path):
    mask = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([[True, True], [True, True]])}
    stats = mask_stats(mask)
    assert stats["fraction"] == pytest.approx(5 / 8)
    assert stats["per_tensor"] == {"a": 0.25, "b": 1.0}
    save_mask(mask, tmp_path / "m.safetensors")
    loaded = load_mask(tmp_path / "m.safetensors")
    assert loaded["a"].dtype == torch.bool and torch.equal(loaded["a"], mask["a"])


def test_gradient_saliency_keeps_the_top_fraction():
    grads = {"a": torch.tensor([0.1, -5.0, 0.2]), "b": torch.tensor([3.0, -0.05, 1.0])}
    mask = gradient_saliency_mask(grads, 0.5)
    assert mask["a"].tolist() == [False, True, False] and mask["b"].tolist() == [True, False, True]


def test_adaptive_weights():
    losses = torch.tensor([0.5, 1.0, 2.0, 4.0])
    weights = adaptive_weights(losses, 0.5)
    assert weights.sum().item() == pytest.approx(4.0)
    assert torch.all(weights[:-1] > weights[1:])  # smaller loss -> larger weight
    # hand-computed: c_i = 1/sqrt(l_i)
    c = 1 / losses.sqrt()
    assert torch.allclose(weights, 4 * c / c.sum())
    assert torch.allclose(adaptive_weights(losses, 0.0), torch.ones(4))  # λ = 0: plain GA
    loss = adaptive_forget_loss(losses.clone().requires_grad_(True), 0.5)
    assert loss.item() == pytest.approx(float((weights * losses).mean()))


def test_adaptive_weights_carry_no_gradient():
    losses = torch.tensor([0.5, 2.0], requires_grad=True)
    adaptive_forget_loss(losses, 1.0).backward()
    weights = adaptive_weights(losses.detach(), 1.0)
    assert torch.allclose(losses.grad, weights / 2)  # d mean(w·l)/dl = w/n, weights held constant


def test_cosine_decay_of_the_forget_weight():
    config = SFRonConfig(steps=10, forget_alpha=4.0)
    assert forget_weight(config, 0) == pytest.approx(4.0)
    assert forget_weight(config, 5) == pytest.approx(2.0)
    assert forget_weight(SFRonConfig(steps=10, forget_alpha=4.0, decay_forget_alpha=False), 9) == 4.0


def _toy_problem():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(16, 4)
    y = torch.randn(16)
    return model, [(x[:8], y[:8])], [(x[8:], y[8:])]


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adamw"])
def test_forget_step_changes_no_weight_outside_the_mask(optimizer):
    model, forget, _ = _toy_problem()
    mask = {n: torch.rand_like(p) < 0.5 for n, p in model.named_parameters()}
    mask["2.bias"] = torch.zeros_like(model[2].bias, dtype=torch.bool)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = SFRonConfig(steps=3, lr=0.1, optimizer=optimizer, forget_alpha=1.0, grad_clip=None)
    unlearn(model, ascent_objective(squared_error, 0.5), None, forget, None, config, mask=mask, show_progress=False)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach()[~mask[n]], before[n][~mask[n]]), n
        if mask[n].any():
            assert not torch.equal(p.detach()[mask[n]], before[n][mask[n]]), n


def test_without_a_mask_every_weight_moves():
    model, forget, remain = _toy_problem()
    before = [p.detach().clone() for p in model.parameters()]
    config = SFRonConfig(steps=2, lr=0.01, forget_alpha=1.0)
    history = unlearn(model, ascent_objective(squared_error), squared_error, forget, remain, config, show_progress=False)
    assert len(history) == 2 and {"forget_loss", "remain_loss", "forget_alpha"} <= set(history[0])
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_forget_every_schedules_forget_steps():
    model, forget, remain = _toy_problem()
    config = SFRonConfig(steps=6, lr=1e-3, forget_every=3)
    history = unlearn(model, ascent_objective(squared_error), squared_error, forget, remain, config, show_progress=False)
    assert [("forget_loss" in r) for r in history] == [True, False, False, True, False, False]
    assert all("remain_loss" in r for r in history)


def test_outer_rate_interpolates_slow_weights():
    torch.manual_seed(1)
    model_a, forget, remain = _toy_problem()
    import copy

    model_b = copy.deepcopy(model_a)
    start = [p.detach().clone() for p in model_a.parameters()]
    base = SFRonConfig(steps=1, lr=0.01, optimizer="sgd", momentum=0.0, forget_alpha=1.0, grad_clip=None)
    unlearn(model_a, ascent_objective(squared_error), None, forget, None, base, show_progress=False)
    half = SFRonConfig(**{**base.to_dict(), "outer_lr": 0.5})
    unlearn(model_b, ascent_objective(squared_error), None, forget, None, half, show_progress=False)
    for s, a, b in zip(start, model_a.parameters(), model_b.parameters()):
        assert torch.allclose(b, s + 0.5 * (a - s), atol=1e-6)


def test_cosine_learning_rate_drives_the_steps():
    model, _, remain = _toy_problem()
    config = SFRonConfig(steps=4, lr=0.2, lr_schedule="cosine", optimizer="sgd", momentum=0.0, grad_clip=None)
    assert [learning_rate(config, t) for t in (0, 2)] == pytest.approx([0.2, 0.1])
    seen = []

    def recording_loss(model, batch):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return squared_error(model, batch)

    history = unlearn(model, None, recording_loss, None, remain, config, show_progress=False)
    assert [r["lr"] for r in history] == pytest.approx([learning_rate(config, t) for t in range(4)])
    # Plain SGD: each update is that step's rate times the gradient at that step's weights.
    for t in range(3):
        params = {n: w.clone().requires_grad_(True) for n, w in seen[t].items()}
        x, y = remain[0]
        loss = ((torch.func.functional_call(model, params, (x,)).squeeze(-1) - y) ** 2).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        for (n, w), g in zip(params.items(), grads):
            assert torch.allclose(seen[t + 1][n], w.detach() - learning_rate(config, t) * g, atol=1e-6), (t, n)


def test_non_finite_loss_stops_the_loop():
    model, forget, remain = _toy_problem()

    def exploding(model, batch):
        return squared_error(model, batch) * math.inf

    with pytest.raises(NonFiniteLossError, match="became"):
        unlearn(model, ascent_objective(exploding), squared_error, forget, remain, SFRonConfig(steps=2), show_progress=False)


def test_config_validation():
    with pytest.raises(ValueError):
        SFRonConfig(steps=0).validate()
    with pytest.raises(ValueError):
        SFRonConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError):
        SFRonConfig(optimizer="lion").validate()
    with pytest.raises(ValueError):
        SFRonConfig(lr_schedule="linear").validate()


def test_one_call_api_masks_and_forgets():
    import erase

    model, forget, remain = _toy_problem()
    before = squared_error(model, forget[0]).mean().item()
    config = SFRonConfig(steps=5, lr=0.01, forget_alpha=1.0, gamma=1.0)
    erased, history = erase.erase(model, forget, remain, squared_error, config)
    assert erased is model and len(history) == 5
    assert squared_error(model, forget[0]).mean().item() > before  # the forget loss went up
