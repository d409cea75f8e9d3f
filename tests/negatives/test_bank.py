"""NegativeBank: EMA schedule and values, init modes, buffers, batched (vmap) vs loop."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from tests.conftest import shared_path
from torch import nn

from mcir_cli.negatives.bank import NegativeBank
from mcir_cli.negatives.build import negative_seed


def _conv(value: float = 1.0) -> nn.Conv2d:
    m = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        m.weight.fill_(value)
        m.bias.fill_(0.5 * value)
    return m


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.out = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.conv(x)))) + x


def _perturb(model: nn.Module, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------ schedule and EMA values


@pytest.mark.unit
def test_schedule_steps_2_3():
    bank = NegativeBank(_conv(), steps=(2, 3), init="copy")
    got = {t: bank.update(t) for t in range(1, 7)}
    assert got == {1: [], 2: [0], 3: [1], 4: [0], 5: [], 6: [0, 1]}
    assert bank.due(0) == [] and bank.due(12) == [0, 1]


@pytest.mark.unit
def test_ema_value_by_hand():
    target = _conv(1.0)
    bank = NegativeBank(target, steps=(2, 3), weight=0.1, init="copy")
    with torch.no_grad():
        target.weight.fill_(3.0)
        target.bias.fill_(-1.0)
    bank.update(2)  # negative 0 only: 0.1 * 1 + 0.9 * 3 = 2.8
    assert bank.module(0).weight.item() == pytest.approx(2.8, abs=1e-6)
    assert bank.module(0).bias.item() == pytest.approx(0.1 * 0.5 + 0.9 * -1.0, abs=1e-6)
    assert bank.module(1).weight.item() == pytest.approx(1.0, abs=1e-7)
    with torch.no_grad():
        target.weight.fill_(5.0)
    bank.update(6)  # both: n0 = 0.1 * 2.8 + 0.9 * 5; n1 = 0.1 * 1 + 0.9 * 5
    assert bank.module(0).weight.item() == pytest.approx(0.28 + 4.5, abs=1e-6)
    assert bank.module(1).weight.item() == pytest.approx(0.1 + 4.5, abs=1e-6)
    # the stacked storage and the module views agree
    assert torch.equal(bank.params["weight"][1], bank.module(1).weight)
    # and forward uses the updated weights
    x = torch.full((1, 1, 2, 2), 2.0)
    out = bank(x)
    assert out.shape == (2, 1, 1, 2, 2)
    assert torch.allclose(out[1], bank.module(1)(x))


# ------------------------------------------------------------------ init modes


@pytest.mark.unit
def test_init_mix_exact_with_random_model():
    target = _Small()
    theta = copy.deepcopy(target.state_dict())

    def random_model():
        return _Small()

    bank = NegativeBank(target, steps=(1, 2), init="mix", mix=0.25, seed=7, random_model=random_model)
    for i in range(2):
        torch.manual_seed(negative_seed(7, i))
        rand = random_model().state_dict()
        for k, p in bank.module(i).named_parameters():
            expected = 0.25 * rand[k] + 0.75 * theta[k]
            assert torch.equal(p, expected), k
    # the two negatives start from different random models
    assert not torch.equal(bank.params["conv.weight"][0], bank.params["conv.weight"][1])


@pytest.mark.unit
def test_init_mix_reset_parameters_default_is_seeded():
    target = _Small()
    bank = NegativeBank(target, steps=(1,), init="mix", mix=0.1, seed=3)
    fresh = copy.deepcopy(target)
    torch.manual_seed(negative_seed(3, 0))
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    for (k, p), (_, t), (_, r) in zip(
        bank.module(0).named_parameters(), target.named_parameters(), fresh.named_parameters()
    ):
        assert torch.equal(p, 0.1 * r + 0.9 * t), k
    again = NegativeBank(target, steps=(1,), init="mix", mix=0.1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(bank.parameters(), again.parameters()))


@pytest.mark.unit
def test_negatives_random_models_never_share_a_targets_seed():
    """A from-scratch target of seed s is built with seed s; the negatives' random models
    draw from a stream of their own, so a mix negative is never a copy of the target and
    no two seeds' negatives share draws (they used `seed + i`)."""
    seeds = {negative_seed(s, i) for s in range(50) for i in range(4)}
    assert len(seeds) == 200 and not seeds & set(range(1000))
    torch.manual_seed(0)
    target = _Small()  # a from-scratch target of seed 0
    bank = NegativeBank(target, steps=(1, 2), init="mix", mix=0.1, seed=0, random_model=lambda: _Small())
    for i in range(2):
        assert not torch.equal(bank.module(i).conv.weight, target.conv.weight)


@pytest.mark.unit
def test_global_rng_untouched():
    a, b = _Small(), _Small()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    NegativeBank(a, steps=(1, 2), init="mix", seed=0)
    NegativeBank(b, steps=(1,), init="random", seed=5, random_model=_Small)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.unit
def test_init_copy_equals_theta():
    target = _Small()
    bank = NegativeBank(target, steps=(5, 7), init="copy")
    for i in range(2):
        for (k, p), (_, t) in zip(bank.module(i).named_parameters(), target.named_parameters()):
            assert torch.equal(p, t), k


@pytest.mark.unit
@pytest.mark.parametrize("mode", ["random", "frozen"])
def test_random_and_frozen_never_update(mode):
    target = _Small()
    bank = NegativeBank(target, steps=(1, 2), init=mode, seed=0)
    before = [p.clone() for p in bank.parameters()]
    if mode == "frozen":
        for (k, p), (_, t) in zip(bank.module(1).named_parameters(), target.named_parameters()):
            assert torch.equal(p, t), k
    else:
        assert not torch.equal(bank.params["conv.weight"][0], target.conv.weight)
    _perturb(target, 0, 1.0)
    assert bank.update(2) == []
    assert all(torch.equal(a, b) for a, b in zip(before, bank.parameters()))


# ------------------------------------------------------------------ buffers, grads, state


@pytest.mark.unit
def test_buffers_copied_at_init_and_update():
    target = _Small()
    with torch.no_grad():
        target.bn.running_mean.fill_(0.3)
        target.bn.num_batches_tracked.fill_(4)
    bank = NegativeBank(target, steps=(2, 3), init="mix")
    for i in range(2):
        assert torch.equal(bank.module(i).bn.running_mean, target.bn.running_mean)
        assert bank.module(i).bn.num_batches_tracked.item() == 4
        assert bank.module(i).bn.num_batches_tracked.dtype == torch.long
    with torch.no_grad():
        target.bn.running_mean.fill_(-2.0)
        target.bn.num_batches_tracked.fill_(9)
    bank.update(2)
    assert torch.equal(bank.module(0).bn.running_mean, target.bn.running_mean)
    assert bank.module(0).bn.num_batches_tracked.item() == 9
    assert torch.allclose(bank.module(1).bn.running_mean, torch.full((4,), 0.3))


@pytest.mark.unit
def test_no_grads_on_negatives():
    target = _Small()
    n_target = sum(1 for _ in target.parameters())
    opt = torch.optim.SGD(target.parameters(), lr=0.1)
    bank = NegativeBank(target, steps=(1, 2), init="mix")
    assert sum(1 for _ in target.parameters()) == n_target
    assert len(opt.param_groups[0]["params"]) == n_target
    assert all(not t.requires_grad for t in bank.parameters())
    for i in range(bank.num):
        m = bank.module(i)
        assert not m.training
        assert all(not p.requires_grad for p in m.parameters())
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    out = bank(x)
    assert out.shape == (2, 2, 3, 8, 8) and not out.requires_grad
    assert out.grad_fn is None


@pytest.mark.unit
def test_state_dict_round_trip(tmp_path):
    target = _Small()
    bank = NegativeBank(target, steps=(1, 2), init="mix", seed=0)
    _perturb(target, 1)
    bank.update(2)
    path = tmp_path / "neg.pt"
    torch.save(bank.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    assert sd["config"] == {
        "steps": [1, 2], "weight": 0.1, "init": "mix", "mix": 0.1, "seed": 0, "arch": "_Small",
    }
    other = NegativeBank(target, steps=(1, 2), init="mix", seed=99)
    other.load_state_dict(sd)
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(bank(x), other(x))
    assert torch.equal(other.module(1).bn.running_mean, bank.module(1).bn.running_mean)
    with pytest.raises(ValueError, match="steps"):
        NegativeBank(target, steps=(1, 3)).load_state_dict(sd)


@pytest.mark.unit
def test_to_device_keeps_views():
    target = _conv(1.0)
    bank = NegativeBank(target, steps=(1,), init="copy").to("cpu")
    with torch.no_grad():
        target.weight.fill_(2.0)
    bank.update(1)
    assert bank.module(0).weight.item() == pytest.approx(0.1 + 1.8)
    assert bank.device == torch.device("cpu")


# ------------------------------------------------------------------ batched vs loop


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _check_batched_equals_loop(target: nn.Module, x: torch.Tensor, steps=(1, 2)) -> None:
    target.eval()
    kw = dict(steps=steps, init="mix", mix=0.1, seed=0)
    fast = NegativeBank(target, batched=True, **kw)
    slow = NegativeBank(target, batched=False, **kw)
    _perturb(target, 2, 0.01)
    fast.update(2)
    slow.update(2)
    a, b = fast(x), slow(x)
    assert a.shape[0] == len(steps) and a.shape == b.shape
    assert _rel(a, b) < 1e-5
    with torch.no_grad():
        direct = fast.module(1)(x)
    assert _rel(a[1], direct) < 1e-5
    # the negatives differ from each other (different random models, different updates)
    assert not torch.allclose(a[0], a[1])


def _swinir_light():
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    return SwinIR(
        img_size=64, embed_dim=60, depths=[2, 2], num_heads=[6, 6], window_size=8,
        mlp_ratio=2, upsampler="pixelshuffledirect", upscale=4,
    )


@pytest.mark.unit
def test_batched_equals_loop_swinir():
    _check_batched_equals_loop(_swinir_light(), torch.rand(1, 3, 16, 16))


def test_batched_equals_loop_dctlsa():
    import spandrel

    path = shared_path("weights", "DCTLSA", "X4.pt")
    model = spandrel.ModelLoader(device="cpu").load_from_file(path).model
    _check_batched_equals_loop(model, torch.rand(1, 3, 16, 16))


@pytest.mark.unit
def test_bf16_autocast_close_to_fp32():
    bank = NegativeBank(_swinir_light().eval(), steps=(1, 2), init="mix")
    x = torch.rand(1, 3, 16, 16)
    ref = bank(x)
    low = bank(x, dtype=torch.bfloat16)
    assert low.dtype == torch.float32
    assert ((low - ref).norm() / ref.norm()).item() < 1e-2


class _ScaleFn(torch.autograd.Function):
    """A custom autograd.Function without vmap support (like NAFNet's LayerNorm2d)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(w)
        return x * w.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return g * w.view(1, -1, 1, 1), None


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return _ScaleFn.apply(self.conv(x), self.scale)


@pytest.mark.unit
def test_loop_fallback_for_custom_autograd_function(caplog):
    target = _Custom()
    auto = NegativeBank(target, steps=(1, 2), init="mix", batched="auto")
    loop = NegativeBank(target, steps=(1, 2), init="mix", batched=False)
    x = torch.rand(2, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="mcir"):
        a = auto(x)
        a2 = auto(x)
    warnings = [r for r in caplog.records if r.name == "mcir"]
    assert len(warnings) == 1 and "_Custom" in warnings[0].getMessage()
    assert auto.batched is False
    b = loop(x)
    assert torch.equal(a, b) and torch.equal(a2, b)
    with pytest.raises(Exception):
        NegativeBank(target, steps=(1,), batched=True)(x)


class _InPlaceInput(nn.Module):
    """Scales its input in place, like RCAN's `x *= rgb_range`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        x *= 2.0
        return self.conv(x)


@pytest.mark.unit
@pytest.mark.parametrize("batched", [True, False])
def test_caller_input_not_modified(batched):
    bank = NegativeBank(_InPlaceInput(), steps=(1, 2), init="copy", batched=batched)
    x = torch.rand(1, 3, 4, 4)
    x0 = x.clone()
    out = bank(x)
    assert torch.equal(x, x0)
    assert torch.allclose(out[0], bank.module(0).conv(2.0 * x0))
