"""GPU paths, run on a CUDA machine (benchmarks/gpu_check.sh); skipped where there is none.

CPU CI cannot reach these: vmap'd negatives on CUDA in bf16, retrain's CUDA defaults
(vmap negatives, bf16, channels_last decision), and whether CUDA's vmap has the autocast
gap measured on CPU (tests/train/test_speed.py).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import shared_path

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_vmap_autocast_gap_on_cuda_is_recorded(capsys):
    """Records (prints) whether conv2d under vmap + autocast runs in bf16 on CUDA; the
    bank casts weights itself either way, so both answers are fine for correctness."""
    x = torch.rand(2, 3, 8, 8, device="cuda")
    w = torch.rand(4, 4, 3, 3, 3, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        dtype = torch.vmap(lambda v: F.conv2d(x, v))(w).dtype
    print(f"CUDA vmap+autocast conv2d dtype: {dtype}")
    assert dtype in (torch.bfloat16, torch.float32)


@pytest.mark.parametrize("name", ["swinir_light", "dctlsa", "edsr_light"])
def test_batched_equals_loop_on_cuda(name):
    from tests.train.test_speed import MODELS, _banks, _rel

    from mcir_cli.data.imageio import read_image

    target = MODELS[name]().cuda()
    fast, slow = _banks(target)
    lr = read_image(shared_path("data", "sr", "Set5", "LR_bicubic", "X4", "babyx4.png"))
    x = torch.stack([lr[:, :32, :32], lr[:, 40:72, 40:72]]).cuda()
    assert _rel(fast(x), slow(x)) < 1e-4  # fp32 (TF32 may be on for convolutions)
    assert _rel(fast(x, torch.bfloat16), slow(x, torch.bfloat16)) < 1e-2


def test_trainer_cuda_defaults(tmp_path):
    from mcir_cli.train.config import TrainConfig
    from mcir_cli.train.run import retrain

    run = tmp_path / "run"
    cfg = TrainConfig(
        data=[str(shared_path("data", "train", "SunHays80_color_subset20"))], output=str(run),
        checkpoint=str(shared_path("weights", "DCTLSA", "X4.pt")), iters=20, batch=8, patch=48,
        lr=1e-5, negative_steps=(2, 5, 10), embedding="vgg16", embedding_init="random",
        device="cuda", amp="bf16",
    )
    result = retrain(cfg)
    assert result.steps == 20
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    start = next(r for r in log if r.get("event") == "start")
    print(f"CUDA trainer: amp {start['amp']}; {start['compile']}; {start['layout']}")
    assert start["amp"].startswith("bf16 autocast")  # the precision note, as retrain logs it
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32  # true fp32 parts
    steps = [r for r in log if "event" not in r]
    assert len(steps) == 20 and all(r["l_neg"] > 0 for r in steps)
    print(f"CUDA trainer: {steps[-1]['it_s']:.1f} it/s at batch 8 x 48")


def test_restore_auto_tile_and_amp_on_cuda(tmp_path):
    """`mcir restore --tile auto --amp` on CUDA: a tile size from free memory (said), tiles
    batched, bf16; the result is the CPU fp32 result within bf16's error (PSNR >= 35 dB)."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from mcir_cli.cli import app

    ckpt = str(shared_path("weights", "IMDN", "IMDN_x4.pth"))
    Image.open(shared_path("data", "sr", "Set5", "HR", "butterfly.png")).convert("RGB").save(tmp_path / "b.png")
    runner = CliRunner()
    gpu = runner.invoke(app, ["restore", str(tmp_path / "b.png"), "-o", str(tmp_path / "gpu.png"),
                              "--checkpoint", ckpt, "--device", "cuda", "--tile", "auto", "--amp"])
    assert gpu.exit_code == 0 and "GiB free on cuda" in gpu.output and "bf16" in gpu.output, gpu.output
    print(gpu.output)
    cpu = runner.invoke(app, ["restore", str(tmp_path / "b.png"), "-o", str(tmp_path / "cpu.png"),
                              "--checkpoint", ckpt, "--device", "cpu", "--tile", "none"])
    assert cpu.exit_code == 0, cpu.output
    a, b = (np.asarray(Image.open(tmp_path / n)).astype(float) for n in ("gpu.png", "cpu.png"))
    psnr = 10 * np.log10(255**2 / max(((a - b) ** 2).mean(), 1e-12))
    print(f"restore CUDA bf16 auto tile vs CPU fp32: {psnr:.1f} dB")
    assert psnr >= 35
