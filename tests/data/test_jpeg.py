"""JPEG artifact removal (`--task jpeg`): the codec against OpenCV's, PSNR-B against its
definition, the published Classic5 "JPEG" row, data made on the fly, FBCNN's side output
and quality-factor loss, bad input. Retrain, evaluate, compare and study with --task jpeg:
tests/e2e/test_jpeg.py."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.data.datasets import PatchDataset, discover, load_pair
from mcir_cli.data.imageio import read_image, write_image
from mcir_cli.data.jpeg import JpegQuality, compress, parse_qualities, parse_quality, with_qualities
from mcir_cli.errors import McirError
from mcir_cli.metrics.basicsr import psnr, psnrb
from mcir_cli.metrics.conventions import Conventions
from tests.conftest import shared_path

runner = CliRunner()


def _classic5(name: str = "1.bmp") -> torch.Tensor:
    return read_image(shared_path("data", "jpeg", "Classic5", name))


def _live1(name: str = "bikes.bmp") -> torch.Tensor:
    return read_image(shared_path("data", "jpeg", "LIVE1_color_subset10", name))


def _uint8_hwc(img: torch.Tensor) -> np.ndarray:
    arr = (img * 255).round().to(torch.uint8).numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def _opencv_jpeg(arr: np.ndarray, q: int) -> np.ndarray:
    """FBCNN's main_test_fbcnn_{gray,color}.py: encode/decode with OpenCV (colour via BGR)."""
    cv2 = pytest.importorskip("cv2")
    grey = arr.ndim == 2
    src = arr if grey else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, enc = cv2.imencode(".jpg", src, [int(cv2.IMWRITE_JPEG_QUALITY), q])
    assert ok
    out = cv2.imdecode(enc, 0 if grey else 3)
    return out if grey else cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


@pytest.mark.unit
@pytest.mark.parametrize("q", [10, 40, 90])
def test_decoded_images_equal_opencv(q):
    # whole images and odd-sized crops (partial 8x8 and 16x16 chroma blocks at the edges)
    for img in (_classic5(), _classic5("3.bmp")[:, 3:86, 5:70], _live1(), _live1("caps.bmp")[:, :77, 1:92]):
        ours = _uint8_hwc(compress(img, q))
        assert np.array_equal(ours, _opencv_jpeg(_uint8_hwc(img), q)), (img.shape, q)
    assert not np.array_equal(_uint8_hwc(compress(_live1(), q)), _uint8_hwc(_live1()))


# --------------------------------------------------------------------------- PSNR-B


def _bef_definition(img: np.ndarray) -> float:
    """Yim & Bovik's blocking effect factor as FBCNN's compute_bef writes it (index lists)."""
    h, w = img.shape
    hb = list(range(7, w - 1, 8))
    hbc = [i for i in range(w - 1) if i not in hb]
    vb = list(range(7, h - 1, 8))
    vbc = [j for j in range(h - 1) if j not in vb]
    d_b = sum(np.sum((img[:, i] - img[:, i + 1]) ** 2) for i in hb) + sum(np.sum((img[j] - img[j + 1]) ** 2) for j in vb)
    d_bc = sum(np.sum((img[:, i] - img[:, i + 1]) ** 2) for i in hbc) + sum(np.sum((img[j] - img[j + 1]) ** 2) for j in vbc)
    n_hb, n_vb = h * (w / 8 - 1), w * (h / 8 - 1)
    d_b /= n_hb + n_vb
    d_bc /= (h * (w - 1) - n_hb) + (w * (h - 1) - n_vb)
    eta = math.log2(8) / math.log2(min(h, w)) if d_b > d_bc else 0
    return eta * (d_b - d_bc)


def _psnrb_definition(gt: np.ndarray, restored: np.ndarray) -> float:
    """PSNR-B of uint8 arrays (HxW or HxWx3 RGB): MSE over the channels, BEF on the
    restored image's Y rounded as MATLAB rgb2ycbcr on uint8 (FBCNN calculate_psnrb)."""
    if restored.ndim == 3:
        y = np.round(np.dot(restored.astype(np.float64), [65.481, 128.553, 24.966]) / 255.0 + 16.0)
    else:
        y = restored.astype(np.float64)
    mse = np.mean((gt.astype(np.float64) - restored.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / (mse + _bef_definition(y)))


@pytest.mark.unit
@pytest.mark.parametrize("crop", [(512, 512), (61, 75)])
def test_psnrb_matches_its_definition(crop):
    h, w = crop
    conv = Conventions.for_task("jpeg")
    for gt in (_classic5("2.bmp")[:, :h, :w], _live1("dancers.bmp")[:, :h, :w]):
        for q in (10, 30):
            dec = compress(gt, q)
            want = _psnrb_definition(_uint8_hwc(gt), _uint8_hwc(dec))
            assert abs(float(psnrb(dec, gt, conv)) - want) < 1e-10
            if h == 512:  # whole images at these qualities are blocky: BEF > 0 (BEF is never < 0)
                assert float(psnrb(dec, gt, conv)) < float(psnr(dec, gt, conv))
    same = _live1()[:, :64, :64]  # no blocking and no error: PSNR-B is infinite, as PSNR
    assert math.isinf(float(psnrb(same, same, conv)))


@pytest.mark.unit
def test_classic5_jpeg_row_reproduces_the_published_one():
    """ARCNN/FBCNN tables: Classic5, q = 10, JPEG 27.82 dB PSNR, 25.21 dB PSNR-B."""
    from mcir_cli.evaluate.benchmarks import evaluate_compressed

    res = evaluate_compressed([shared_path("data", "jpeg", "Classic5")], [10])
    row = res["datasets"]["Classic5/q10"]
    assert (round(row["psnr"], 2), round(row["psnrb"], 2)) == (27.82, 25.21)
    assert len(row["images"]) == 5 and "psnrb" in row["images"][0]
    assert res["task"] == "jpeg" and res["jpeg"]["qualities"] == [10]
    assert "grey images: their stored grey values" in res["conventions"]["description"]


@pytest.mark.unit
def test_saved_jpeg_row_scores_the_same_as_restored_images(tmp_path, live1_crops):
    from mcir_cli.evaluate.benchmarks import evaluate_compressed, evaluate_restored

    row = evaluate_compressed([live1_crops], [20, 50], save_images=tmp_path / "jpeg")
    assert sorted(p.name for p in (tmp_path / "jpeg" / "LIVE1crops" / "q50").iterdir()) == [
        "bikes.png", "caps.png", "dancers.png"]
    again = evaluate_restored(tmp_path / "jpeg", [live1_crops], task="jpeg", jpeg_quality=[20, 50])
    for name in ("LIVE1crops/q20", "LIVE1crops/q50"):
        assert again["datasets"][name]["psnrb"] == row["datasets"][name]["psnrb"]
        assert again["datasets"][name]["psnr"] == row["datasets"][name]["psnr"]
    assert row["datasets"]["LIVE1crops/q20"]["psnr"] < row["datasets"]["LIVE1crops/q50"]["psnr"]


# --------------------------------------------------------------------------- data


@pytest.mark.unit
def test_quality_flags():
    assert parse_quality("10") == JpegQuality(10, 10) and parse_quality("10-95") == JpegQuality(10, 95)
    assert parse_qualities("10,20,30,40") == (10, 20, 30, 40)
    for bad, why in (("0", "outside"), ("101", "outside"), ("95-10", "low end"), ("ten", "whole numbers"),
                     ("1-2-3", "a range")):
        with pytest.raises(McirError, match=why):
            parse_quality(bad)
    with pytest.raises(McirError, match="twice"):
        parse_qualities("10,10")


@pytest.mark.unit
def test_clean_folders_and_paired_layouts(tmp_path):
    sun = discover(shared_path("data", "train", "SunHays80_color_subset20"), task="jpeg")
    assert sun.task == "jpeg" and all(p.lq is None for p in sun.pairs)
    assert any("own compression stays in the targets" in n for n in sun.notes)
    with pytest.raises(McirError, match="need --jpeg-quality"):
        with_qualities([sun], None)
    rows = with_qualities([sun], (10, 40))
    assert [d.name for d in rows[:1] + rows[-1:]] == ["SunHays80_color_subset20/q10", "SunHays80_color_subset20/q40"]
    lq, gt = load_pair(rows[0], rows[0].pairs[0])
    assert torch.equal(lq, compress(gt, 10))
    # BSDS500 as its archive unpacks: the test split's own .jpg files are the clean images
    split = tmp_path / "BSR" / "BSDS500" / "data" / "images" / "test"
    split.mkdir(parents=True)
    for path in sorted(Path(sun.root).glob("*.jpg"))[:2]:
        (split / path.name).write_bytes(path.read_bytes())
    bsds = discover(split, task="jpeg")
    assert len(bsds) == 2 and all(p.lq is None for p in bsds.pairs) and "stored as JPEG" in " ".join(bsds.notes)
    # an lq/gt layout is used as given: the input file itself, never compressed again
    gt_img = _live1()[:, :64, :64]
    write_image(tmp_path / "p" / "target" / "a.png", gt_img)
    write_image(tmp_path / "p" / "input" / "a.png", compress(gt_img, 30))
    paired = discover(tmp_path / "p", task="jpeg")
    assert any("used as given" in n for n in paired.notes)
    (ds,) = with_qualities([paired], (10,))
    lq, _ = load_pair(ds, ds.pairs[0])
    assert torch.equal(lq, compress(gt_img, 30)) and ds.jpeg_quality is None


@pytest.mark.unit
def test_patches_are_compressed_on_the_fly_with_their_quality():
    sun = discover(shared_path("data", "train", "SunHays80_color_subset20"), task="jpeg")
    patches = PatchDataset([sun], 32, 8, seed=3, jpeg_quality=JpegQuality(10, 40), augment=False,
                           quality_target=True, cache=False)
    seen = set()
    for i in range(4):
        lq, gt, target = patches[i]
        q = round(100 - 100 * float(target))
        assert 10 <= q <= 40 and torch.equal(lq, compress(gt, q))
        seen.add(q)
        again = patches[i]
        assert torch.equal(again[0], lq)  # a pure function of (seed, index)
    assert len(seen) > 1
    with pytest.raises(McirError, match="needs --jpeg-quality"):
        PatchDataset([sun], 32, 8)


# --------------------------------------------------------------------------- FBCNN


def tiny_fbcnn_preset(tmp: Path) -> Path:
    """The shipped fbcnn preset (its recipe, qf_loss included) with a narrow network: the
    real FBCNN class; its quality head is fixed at 512 channels, so nc[3] stays 512."""
    text = (Path(__file__).resolve().parents[2] / "presets" / "fbcnn.toml").read_text()
    text = text.replace('name = "fbcnn"', 'name = "fbcnn-tiny"').replace("nc = [64, 128, 256, 512]", "nc = [8, 16, 32, 512]")
    text = text.replace("nb = 4", "nb = 2").replace("params = 71921796\n", "")
    path = tmp / "fbcnn-tiny.toml"
    path.write_text(text)
    return path


def test_fbcnn_recipe_quality_output_and_loss(tmp_path, live1_crops):
    """The fbcnn preset's recipe through a run's parts: patches carry (100 - q) / 100, the
    quality output is ignored at inference and trained by the recipe's qf_loss."""
    from mcir_cli.train.config import make_config
    from mcir_cli.train.distributed import DistContext
    from mcir_cli.train.parts import build_parts
    from mcir_cli.train.step import _reconstruction

    cfg = make_config([live1_crops], tmp_path / "run", model=str(tiny_fbcnn_preset(tmp_path)), task="jpeg",
                      jpeg_quality="10-95", iters=1, batch=2, patch=32, negative_init="none",
                      allow_random_init=True, device="cpu")
    assert (cfg.qf_loss, cfg.lr, cfg.batch) == (0.001, 2e-5, 2)  # the recipe's (lr: from scratch)
    parts = build_parts(cfg, None, torch.device("cpu"), DistContext.from_env("cpu"))
    assert parts.loaded.architecture == "FBCNN" and parts.qf_loss == 0.001  # spandrel detects the narrow one
    lq, gt, target = parts.patches[0]
    # FBCNN's order: the clean patch is augmented, then encoded at its drawn quality
    assert torch.equal(lq, compress(gt, round(100 - 100 * float(target))))
    x, gt = lq.unsqueeze(0), gt.unsqueeze(0)
    image = parts.wrapped(x)  # inference: the image only
    img2, predicted = parts.wrapped(x, side=True)
    assert image.shape == x.shape and torch.equal(image, img2) and predicted.shape == (1, 1)
    _, l_rec = _reconstruction(parts, x, gt, target.reshape(1))
    want = (image - gt).abs().mean() + 0.001 * (predicted.reshape(-1) - target).abs().mean()
    assert float(l_rec) == pytest.approx(float(want.detach()), rel=1e-6)
    _, plain = _reconstruction(parts, x, gt, torch.tensor([float("nan")]))  # a given pair: q unknown
    assert float(plain) == pytest.approx(float((image - gt).abs().mean().detach()), rel=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("arch", ["DnCNN", "SwinIR"])
def test_grey_jpeg_architectures_spandrel_loads(arch, tmp_path):
    """DnCNN-3's and SwinIR's CAR (JPEG) shapes, narrow: loaded from a bare state dict,
    scored on grey Classic5 crops (their stored grey values) with the task taken from
    --jpeg-quality, PSNR-B beside PSNR/SSIM."""
    from spandrel.architectures.DnCNN import DnCNN
    from spandrel.architectures.SwinIR import SwinIR

    from mcir_cli.evaluate.benchmarks import Scoring, evaluate_model
    from mcir_cli.models.loading import load_model

    torch.manual_seed(0)
    net = (DnCNN(in_nc=1, out_nc=1, nc=8, nb=8, act_mode="R") if arch == "DnCNN" else
           SwinIR(img_size=32, in_chans=1, embed_dim=12, depths=[2], num_heads=[2], window_size=8, mlp_ratio=2,
                  upscale=1, img_range=255.0, upsampler="", resi_connection="1conv"))
    torch.save(net.state_dict(), tmp_path / "w.pth")
    for name in ("1.bmp", "4.bmp"):
        write_image(tmp_path / "C5" / name.replace(".bmp", ".png"), _classic5(name)[:, 200:248, 100:148])
    loaded = load_model(tmp_path / "w.pth")
    assert (loaded.architecture, loaded.in_channels, loaded.scale) == (arch, 1, 1)
    res = evaluate_model(loaded, [tmp_path / "C5"], Scoring(device="cpu", jpeg_quality=(10, 40)))
    assert res["task"] == "jpeg" and list(res["datasets"]) == ["C5/q10", "C5/q40"]
    assert all(math.isfinite(d["psnrb"]) and d["psnrb"] <= d["psnr"] + 1e-9 for d in res["datasets"].values())


# --------------------------------------------------------------------------- CLI


@pytest.mark.unit
@pytest.mark.parametrize("args, message", [
    (["--jpeg-quality", "0"], "outside the JPEG quality range 1–100"),
    (["--jpeg-quality", "10,101"], "101 is outside"),
    (["--jpeg-quality", "10", "--task", "sr"], "is for --task jpeg"),
    ([], "--compressed scores JPEG inputs"),
])
def test_bad_quality_is_one_line(args, message):
    res = runner.invoke(app, ["evaluate", "--compressed", "--data", str(shared_path("data", "jpeg", "Classic5")), *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.output


@pytest.mark.unit
def test_retrain_refuses_a_bad_range(tmp_path):
    res = runner.invoke(app, ["retrain", "--checkpoint", str(tmp_path / "x.pth"), "--data", str(tmp_path),
                              "-o", str(tmp_path / "run"), "--jpeg-quality", "95-10"])
    assert res.exit_code == 2 and "low end of the range exceeds" in res.output
    assert not (tmp_path / "run").exists()
