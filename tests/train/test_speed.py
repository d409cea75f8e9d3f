"""Speed paths: batched (vmap) negatives equal the loop for the paper's architectures in
fp32 and bf16 autocast; the step-overhead benchmark runs; the compile / channels_last
decisions; compiling the three parts of a step (aot_eager: traced, no code generated)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import shared_path
from torch import nn

from mcir_cli.negatives.bank import NegativeBank
from mcir_cli.train import speed

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ models


def _swinir_light(depths=(2, 2)) -> nn.Module:
    from spandrel.architectures.SwinIR import SwinIR

    from mcir_cli.models.loading import Restorer
    from mcir_cli.models.presets import IOSpec

    torch.manual_seed(0)
    net = SwinIR(
        upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=list(depths),
        embed_dim=60, num_heads=[6] * len(depths), mlp_ratio=2, upsampler="pixelshuffledirect",
        resi_connection="1conv",
    )
    return Restorer(net, IOSpec())


def _dctlsa() -> nn.Module:
    from mcir_cli.models.loading import load_model

    return load_model(checkpoint=shared_path("weights", "DCTLSA", "X4.pt")).restorer


def _edsr_light() -> nn.Module:
    from mcir_cli.models.loading import Restorer, from_preset
    from mcir_cli.models.presets import IOSpec, get_preset, presets_dir

    if (presets_dir() / "edsr-light-x4.toml").exists():
        return from_preset(get_preset("edsr-light-x4")).restorer
    from mcir_cli.models.archs import BUILDERS

    torch.manual_seed(0)
    net = BUILDERS["EDSR"](scale=4, n_resblocks=16, n_feats=64, res_scale=1.0)
    return Restorer(net, IOSpec(in_range=(0.0, 255.0), out_range=(0.0, 255.0)))


MODELS = {"swinir_light": _swinir_light, "dctlsa": _dctlsa, "edsr_light": _edsr_light}


def _banks(target: nn.Module, steps=(1, 2, 3)) -> tuple[NegativeBank, NegativeBank]:
    target.eval()
    kw = dict(steps=steps, init="mix", mix=0.1, seed=0)
    fast = NegativeBank(target, batched=True, **kw)
    slow = NegativeBank(target, batched=False, **kw)
    # move the target, then EMA-update some negatives: the negatives now differ
    with torch.no_grad():
        for p in target.parameters():
            if p.is_floating_point():
                p.add_(0.01 * torch.randn_like(p))
    for bank in (fast, slow):
        bank.update(2)
    return fast, slow


def _inputs(name):
    target = MODELS[name]()
    fast, slow = _banks(target)
    # real image content: bf16 error on uniform noise is not what training sees
    from mcir_cli.data.imageio import read_image

    lr = read_image(shared_path("data", "sr", "Set5", "LR_bicubic", "X4", "babyx4.png"))
    x = torch.stack([lr[:, :16, :16], lr[:, 40:56, 40:56]])
    return target, fast, slow, x


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_equals_loop_fp32(name):
    target, fast, slow, x = _inputs(name)
    a, b = fast(x), slow(x)
    assert fast.batched is True and fast.fallback_reason is None
    assert a.shape == b.shape == (3, *target(x).shape)
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5
    assert not torch.allclose(a[0], a[1])  # three different negatives


# torch 2.14 (CPU): under torch.vmap, autocast does not reach convolutions (nor
# batch_norm), so NegativeBank casts the stacked weights and the input to bf16 itself on
# the batched path; these tests hold it to the loop (autocast) and to fp32.
@pytest.mark.parametrize("name", list(MODELS))
def test_batched_equals_loop_bf16(name):
    _, fast, slow, x = _inputs(name)
    ref = slow(x)
    a16, b16 = fast(x, torch.bfloat16), slow(x, torch.bfloat16)
    assert a16.dtype == b16.dtype == torch.float32
    assert torch.isfinite(a16).all()
    rel = _rel(a16, b16)
    assert rel < 1e-2, f"bf16 batched vs loop: relative difference {rel:.2e}"
    assert _rel(b16, ref) < 5e-2  # bf16 stays close to fp32 (same model)


def test_batched_bf16_really_runs_convs_in_bf16():
    # EDSR is all convolutions: a bf16 forward must differ from fp32 by bf16 rounding
    # (~3e-3); before NegativeBank cast the weights, the vmap path matched fp32 to ~1e-7.
    _, fast, slow, x = _inputs("edsr_light")
    ref = slow(x)
    assert _rel(slow(x, torch.bfloat16), ref) > 1e-4  # the loop does use bf16
    assert _rel(fast(x, torch.bfloat16), ref) > 1e-4


# ------------------------------------------------------------------ benchmark runs


@pytest.mark.slow
def test_step_overhead_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_overhead.py"), "--quick", "--device", "cpu",
         "--threads", "1", "--steps", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    r = res["results"]
    assert set(r) == {"eager_plain", "mcir_plain", "naive_spn", "mcir_spn", "mcir_parts"}
    for key, row in r.items():
        assert row["ms"] > 0, key
    assert set(r["mcir_parts"]["parts_ms"]) == {"target_step", "negatives_forward", "embedding_loss"}
    assert r["mcir_parts"]["ms"] == pytest.approx(sum(r["mcir_parts"]["parts_ms"].values()))
    for key in ("eager_plain", "mcir_plain", "naive_spn", "mcir_spn"):
        assert isinstance(r[key]["peak_bytes"], int)
        assert len(r[key]["times_ms"]) == 2
    assert len(res["goals"]) == 5
    assert all(g["binding"] is False for g in res["goals"])  # CPU: informative only
    assert "RANDOM" in res["meta"]["embedding"]
    assert res["meta"]["negatives"] == 4 and res["meta"]["batch"] == 2 and res["meta"]["patch"] == 16
    assert "(e) sum of mcir's parts" in proc.stdout


# ------------------------------------------------------------------ compile decision


@pytest.fixture
def compiler(monkeypatch):
    monkeypatch.setattr(speed, "_compiler_available", lambda device: (True, ""))


@pytest.mark.unit
def test_auto_never_compiles_on_cpu(compiler):
    do, note = speed.compile_decision("cpu", 10**9, "auto")
    assert not do and "eager on cpu" in note


@pytest.mark.unit
def test_auto_on_cuda_depends_on_iters(compiler):
    do, note = speed.compile_decision("cuda", speed.AUTO_COMPILE_MIN_ITERS - 1, "auto")
    assert not do and "repays" in note
    do, note = speed.compile_decision("cuda", speed.AUTO_COMPILE_MIN_ITERS, "auto")
    assert do and "compiling" in note


@pytest.mark.unit
def test_threshold_matches_its_derivation():
    derived = speed.COMPILE_GRAPHS_PER_RUN * speed.COMPILE_SECONDS_PER_GRAPH / speed.COMPILE_SAVING_S_PER_STEP
    assert abs(speed.AUTO_COMPILE_MIN_ITERS - derived) / derived < 0.01


@pytest.mark.unit
def test_on_and_off(compiler):
    assert speed.compile_decision("cuda", 10**9, "off")[0] is False
    do, note = speed.compile_decision("cpu", 1, "on")
    assert do and "no speed-up on CPU" in note
    assert speed.compile_decision("cuda", 1, "on")[0] is True


@pytest.mark.unit
def test_no_compiler_means_eager(monkeypatch):
    monkeypatch.setattr(speed, "_compiler_available", lambda device: (False, "Triton is not installed"))
    for mode in ("auto", "on"):
        do, note = speed.compile_decision("cuda", 10**9, mode)
        assert not do and "Triton" in note


@pytest.mark.unit
def test_bad_mode():
    with pytest.raises(ValueError, match="compile mode"):
        speed.compile_decision("cpu", 1, "yes")
    with pytest.raises(ValueError, match="channels_last mode"):
        speed.channels_last_decision(nn.Conv2d(1, 1, 1), "cpu", "yes")


def test_compile_training_compiles_all_three_parts():
    """aot_eager traces with dynamo and AOT autograd like inductor, without generating
    code: the compiled target, the compiled vmap over N negatives and the compiled
    embedding give the eager results."""
    from mcir_cli.data.imageio import read_image
    from mcir_cli.losses.embeddings import make_embedding
    from mcir_cli.losses.spn import SPNLoss

    target = _edsr_light().eval()
    bank_e, bank_c = (NegativeBank(target, (1, 2, 3), seed=0, batched=True) for _ in range(2))
    spn_e = SPNLoss(make_embedding("vgg16", init="random"))
    spn_c = SPNLoss(make_embedding("vgg16", init="random"))
    call = speed.compile_training(target, bank_c, spn_c, backend="aot_eager")
    assert isinstance(call, torch._dynamo.eval_frame.OptimizedModule) and call._orig_mod is target
    assert isinstance(spn_c.embedding, torch._dynamo.eval_frame.OptimizedModule)
    assert bank_c.compile_backend == "aot_eager"
    lr = read_image(shared_path("data", "sr", "Set5", "LR_bicubic", "X4", "babyx4.png"))
    x = torch.stack([lr[:, :16, :16], lr[:, 40:56, 40:56]])
    with torch.no_grad():
        assert torch.allclose(call(x), target(x), rtol=1e-5, atol=1e-4)
    n_e, n_c = bank_e(x), bank_c(x)
    assert bank_c._batched is True and _rel(n_c, n_e) < 1e-5
    out = target(x).detach()
    l_e = spn_e(out.clone().requires_grad_(True), n_e)
    l_c = spn_c(out.clone().requires_grad_(True), n_c)
    assert l_c.item() == pytest.approx(l_e.item(), rel=1e-5)


# ------------------------------------------------------------------ channels_last


@pytest.mark.unit
def test_channels_last_ok_conv_net_not_transformer():
    x = torch.rand(1, 3, 16, 16)
    edsr = _edsr_light()
    assert speed.conv_parameter_share(edsr) > 0.99
    assert speed.channels_last_ok(edsr)
    assert speed.channels_last_ok(edsr, x)
    swin = _swinir_light(depths=(6, 6, 6, 6))  # the real SwinIR-light: ~20 % convs
    assert speed.conv_parameter_share(swin) < speed.CHANNELS_LAST_MIN_CONV_SHARE
    assert not speed.channels_last_ok(swin, x)


class _ViewsConvOutput(nn.Module):
    """A conv net that `.view()`s its conv output: breaks on NHWC strides."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.view(y.shape[0], -1).view_as(y)


@pytest.mark.unit
def test_channels_last_decision_modes():
    edsr, swin = _edsr_light(), _swinir_light(depths=(6, 6, 6, 6))
    x = torch.rand(1, 3, 16, 16)
    assert speed.channels_last_decision(edsr, "cpu", "auto", x)[0] is False  # a CUDA speed-up only
    assert speed.channels_last_decision(edsr, "cuda", "auto", x)[0] is True
    do, note = speed.channels_last_decision(swin, "cuda", "auto", x)
    assert not do and "in convolutions" in note
    assert speed.channels_last_decision(_ViewsConvOutput(), "cuda", "auto", torch.rand(1, 3, 8, 8))[0] is False
    assert speed.channels_last_decision(swin, "cpu", "on")[0] is True
    assert speed.channels_last_decision(edsr, "cuda", "off")[0] is False


@pytest.mark.unit
def test_channels_last_rejected_when_forward_breaks():
    m = _ViewsConvOutput().train()
    assert speed.channels_last_ok(m)  # by parameter share alone
    assert not speed.channels_last_ok(m, torch.rand(1, 3, 8, 8))
    assert m.training  # the module itself is untouched
    assert m.conv.weight.is_contiguous()


@pytest.mark.unit
def test_precision_decision():
    bf16 = torch.bfloat16
    # auto is fp32: bf16 rounds a fine-tuning negative by as much as it differs (docs/evidence.md)
    assert speed.precision_decision(None, "cuda")[:2] == (None, None)
    assert speed.precision_decision("auto", "cuda")[:2] == (None, None)
    assert "TF32 off" in speed.precision_decision("auto", "cuda")[2]  # true fp32 on CUDA, said at the start
    assert speed.precision_decision("bf16-negatives", "cuda")[:2] == (None, bf16)
    assert speed.precision_decision("bf16", "cuda")[:2] == (bf16, bf16)
    for amp in ("fp32", "none"):
        assert speed.precision_decision(amp, "cuda")[:2] == (None, None)
    for amp in (None, "bf16"):
        target, spn, note = speed.precision_decision(amp, "cpu")
        assert (target, spn) == (None, None) and "cpu" in note
    target, spn, note = speed.precision_decision("bf16", "cuda", supports_bf16=False)
    assert (target, spn) == (None, None) and "does not support bf16" in note
    with pytest.raises(ValueError, match="amp"):
        speed.precision_decision("fp16", "cuda")
