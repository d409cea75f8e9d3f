"""Architectures spandrel lacks (mcir_cli.archs): layouts, counts, detection, real weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import spandrel
import torch
from torch import nn

from conftest import shared_path
from mcir_cli.archs import BUILDERS, MODEL_CLASSES, register


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _load_sd(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in sd.items()}


@pytest.fixture(scope="module")
def loader() -> spandrel.ModelLoader:
    register()
    return spandrel.ModelLoader(device="cpu")


# ---------------------------------------------------------------- parameter counts

@pytest.mark.parametrize(
    ("arch", "kwargs", "expected"),
    [
        ("EDSR", dict(scale=4), 1_517_595),  # incl. the 24 frozen MeanShift parameters
        ("EDSR", dict(scale=2), 1_369_883),
        ("EDSR", dict(scale=3), 1_554_523),
        ("FFANet", dict(gps=3, blocks=19), 4_455_913),
        ("DehazeFormer", dict(variant="t"), 687_404),
        ("DehazeFormer", dict(variant="s"), 1_284_884),
        ("DehazeFormer", dict(variant="b"), 2_517_612),
        ("DehazeFormer", dict(variant="m"), 4_635_952),
        ("DehazeFormer", dict(variant="l"), 25_451_652),
        ("IMDN", dict(upscale=4), 715_176),
        ("IMDN", dict(upscale=3), 703_059),
        ("IMDN", dict(upscale=2), 694_404),
        ("RFDN", dict(upscale=4), 433_448),
        ("AODNet", dict(), 1_761),
    ],
)
def test_official_parameter_counts(arch: str, kwargs: dict[str, Any], expected: int) -> None:
    assert _params(BUILDERS[arch](**kwargs)) == expected


def test_edsr_meanshift_is_frozen_and_keys_official() -> None:
    m = BUILDERS["EDSR"](scale=4, n_resblocks=16, n_feats=64, res_scale=1.0)
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert trainable == 1_517_571
    keys = set(m.state_dict())
    for k in ("sub_mean.weight", "add_mean.bias", "head.0.weight", "body.0.body.0.weight",
              "body.15.body.2.bias", "body.16.weight", "tail.0.0.weight", "tail.0.2.weight",
              "tail.1.weight"):
        assert k in keys
    assert "tail.0.2.weight" not in BUILDERS["EDSR"](scale=2).state_dict()


def test_dehazeformer_state_dict_holds_relative_positions() -> None:
    # Official code registers relative_positions as a persistent buffer (8192 values
    # per attention block for window 8); T has 6 attention blocks.
    m = BUILDERS["DehazeFormer"](variant="t")
    total = sum(v.numel() for v in m.state_dict().values())
    assert total == 687_404 + 6 * 64 * 64 * 2


def test_io_attributes() -> None:
    ranges = {k: tuple(cls.io_range) for k, cls in MODEL_CLASSES.items()}
    assert ranges == {
        "EDSR": (0.0, 255.0), "FFANet": (0.0, 1.0), "DehazeFormer": (-1.0, 1.0),
        "IMDN": (0.0, 1.0), "RFDN": (0.0, 255.0), "AODNet": (0.0, 1.0),
    }
    for name, cls in MODEL_CLASSES.items():
        if name == "FFANet":
            assert cls.input_mean == (0.64, 0.6, 0.58)
            assert cls.input_std == (0.14, 0.15, 0.152)
        else:
            assert cls.input_mean is None and cls.input_std is None


def test_register_is_idempotent() -> None:
    register()
    n = len(spandrel.MAIN_REGISTRY)
    register()
    assert len(spandrel.MAIN_REGISTRY) == n
    for arch in BUILDERS:
        assert arch in spandrel.MAIN_REGISTRY


# ---------------------------------------------------- round trip through detection

ROUND_TRIP = [
    ("EDSR", dict(scale=4), 16, 4, "SR"),
    ("EDSR", dict(scale=3, n_resblocks=2), 16, 3, "SR"),
    ("EDSR", dict(scale=2, n_resblocks=32, n_feats=256, res_scale=0.1), 8, 2, "SR"),
    ("FFANet", dict(blocks=2), 16, 1, "Restoration"),
    ("DehazeFormer", dict(variant="t"), 32, 1, "Restoration"),
    ("DehazeFormer", dict(variant="m"), 32, 1, "Restoration"),
    ("IMDN", dict(upscale=4), 16, 4, "SR"),
    ("IMDN", dict(upscale=2), 16, 2, "SR"),
    ("RFDN", dict(upscale=4), 16, 4, "SR"),
    ("AODNet", dict(), 16, 1, "Restoration"),
]


@pytest.mark.parametrize(("arch", "kwargs", "size", "scale", "purpose"), ROUND_TRIP)
def test_round_trip_detection(
    loader: spandrel.ModelLoader, arch: str, kwargs: dict[str, Any], size: int,
    scale: int, purpose: str,
) -> None:
    torch.manual_seed(0)
    model = BUILDERS[arch](**kwargs).eval()
    desc = loader.load_from_state_dict(model.state_dict())
    assert desc.architecture.id == arch
    assert desc.scale == scale
    assert desc.purpose == purpose
    assert type(desc.model) is MODEL_CLASSES[arch]
    # strict both ways: identical key sets, and the same outputs
    assert set(desc.model.state_dict()) == set(model.state_dict())
    desc.model.eval()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        got = desc.model(x)
    assert got.shape == (1, 3, size * scale, size * scale)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_res_scale_inferred_for_edsr_full(loader: spandrel.ModelLoader) -> None:
    sd = BUILDERS["EDSR"](scale=2, n_resblocks=32, n_feats=256, res_scale=0.1).state_dict()
    desc = loader.load_from_state_dict(sd)
    assert desc.model.hyperparameters["res_scale"] == 0.1
    assert desc.model.hyperparameters["n_resblocks"] == 32


# ------------------------------------------------------------------ real weights

@pytest.mark.parametrize(
    ("folder", "name", "arch", "scale", "entries"),
    [
        ("IMDN", "IMDN_x4.pth", "IMDN", 4, 715_176),
        ("RFDN", "RFDN_AIM.pth", "RFDN", 4, 433_448),
        ("AODNet", "dehazer.pth", "AODNet", 1, 1_761),
    ],
)
def test_real_weights_detect_and_load_strict(
    loader: spandrel.ModelLoader, folder: str, name: str, arch: str, scale: int,
    entries: int,
) -> None:
    sd = _load_sd(shared_path("weights", folder, name))
    assert sum(v.numel() for v in sd.values()) == entries
    desc = loader.load_from_state_dict(sd)  # spandrel loads strictly
    assert desc.architecture.id == arch
    assert desc.scale == scale
    fresh = BUILDERS[arch](**({"upscale": scale} if scale > 1 else {}))
    fresh.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        out = desc(x)  # descriptor call maps [0, 1] to the model's io_range and back
    assert out.shape == (1, 3, 16 * scale, 16 * scale)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["X4.pt", "X2.pt"])
def test_dctlsa_still_detected_as_dctlsa(loader: spandrel.ModelLoader, name: str) -> None:
    sd = _load_sd(shared_path("weights", "DCTLSA", name))
    assert loader.load_from_state_dict(sd).architecture.id == "DCTLSA"


def test_dncnn_still_detected_as_dncnn(loader: spandrel.ModelLoader) -> None:
    sd = _load_sd(shared_path("weights", "DnCNN_KAIR", "dncnn_25.pth"))
    assert loader.load_from_state_dict(sd).architecture.id == "DnCNN"


def test_imdn_x4_real_image_quality(loader: spandrel.ModelLoader) -> None:
    """IMDN x4 on Set5 baby (PSNR on Y, border 4): measured 33.77 dB; bicubic ~31.8."""
    from PIL import Image
    import numpy as np

    desc = loader.load_from_state_dict(_load_sd(shared_path("weights", "IMDN", "IMDN_x4.pth")))
    set5 = shared_path("data", "sr", "Set5")
    lr = np.asarray(Image.open(set5 / "LR_bicubic" / "X4" / "babyx4.png").convert("RGB"))
    hr = np.asarray(Image.open(set5 / "HR" / "baby.png").convert("RGB"))
    x = torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        sr = desc.model.eval()(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    sr8 = np.round(sr * 255).astype(np.float64)
    hr8 = hr[: sr8.shape[0], : sr8.shape[1]].astype(np.float64)

    def y(img: np.ndarray) -> np.ndarray:
        return 16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255

    diff = (y(sr8) - y(hr8))[4:-4, 4:-4]
    psnr = 10 * np.log10(255**2 / np.mean(diff**2))
    assert psnr > 33.0


# --------------------------------------------------------------------- vmap

@pytest.mark.parametrize(
    ("arch", "kwargs", "size"),
    [("EDSR", dict(scale=2, n_resblocks=1), 8), ("DehazeFormer", dict(variant="t"), 32),
     ("RFDN", dict(upscale=2), 16), ("IMDN", dict(upscale=2, num_modules=2), 8),
     ("FFANet", dict(blocks=1), 8), ("AODNet", dict(), 8)],
)
def test_vmap_over_stacked_copies(arch: str, kwargs: dict[str, Any], size: int) -> None:
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    models = [BUILDERS[arch](**kwargs).eval() for _ in range(2)]
    params, buffers = stack_module_state(models)
    base = BUILDERS[arch](**kwargs).to("meta")
    x = torch.rand(1, 3, size, size)

    def call(p: dict, b: dict, inp: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (inp,))

    out = vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    with torch.no_grad():
        ref = torch.stack([m(x) for m in models])
    scale = max(1.0, ref.abs().max().item())
    torch.testing.assert_close(out.detach() / scale, ref / scale, rtol=1e-4, atol=1e-5)
