"""Architectures spandrel lacks (mcir_cli.models.archs): layouts, counts, detection, real weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import spandrel
import torch
from tests.conftest import shared_path
from torch import nn

from mcir_cli.models.archs import BUILDERS, MODEL_CLASSES, register


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


@pytest.mark.unit
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


@pytest.mark.unit
def test_dehazeformer_state_dict_holds_relative_positions() -> None:
    # Official code registers relative_positions as a persistent buffer (8192 values
    # per attention block for window 8); T has 6 attention blocks.
    m = BUILDERS["DehazeFormer"](variant="t")
    total = sum(v.numel() for v in m.state_dict().values())
    assert total == 687_404 + 6 * 64 * 64 * 2


@pytest.mark.unit
def test_io_attributes() -> None:
    ranges = {k: tuple(cls.io_range) for k, cls in MODEL_CLASSES.items()}
    assert ranges == {
        "EDSR": (0.0, 255.0), "FFANet": (0.0, 1.0), "DehazeFormer": (-1.0, 1.0),
        "IMDN": (0.0, 1.0), "RFDN": (0.0, 255.0), "AODNet": (0.0, 1.0), "IDT": (0.0, 1.0),
    }
    for name, cls in MODEL_CLASSES.items():
        if name == "FFANet":
            assert cls.input_mean == (0.64, 0.6, 0.58)
            assert cls.input_std == (0.14, 0.15, 0.152)
        else:
            assert cls.input_mean is None and cls.input_std is None


@pytest.mark.unit
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


@pytest.mark.unit
def test_res_scale_inferred_for_edsr_full(loader: spandrel.ModelLoader) -> None:
    sd = BUILDERS["EDSR"](scale=2, n_resblocks=32, n_feats=256, res_scale=0.1).state_dict()
    desc = loader.load_from_state_dict(sd)
    assert desc.model.hyperparameters["res_scale"] == 0.1
    assert desc.model.hyperparameters["n_resblocks"] == 32


# ------------------------------------------------------------------ real weights

@pytest.mark.unit
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


@pytest.mark.unit
@pytest.mark.parametrize("name", ["X4.pt", "X2.pt"])
def test_dctlsa_still_detected_as_dctlsa(loader: spandrel.ModelLoader, name: str) -> None:
    sd = _load_sd(shared_path("weights", "DCTLSA", name))
    assert loader.load_from_state_dict(sd).architecture.id == "DCTLSA"


@pytest.mark.unit
def test_dncnn_still_detected_as_dncnn(loader: spandrel.ModelLoader) -> None:
    sd = _load_sd(shared_path("weights", "DnCNN_KAIR", "dncnn_25.pth"))
    assert loader.load_from_state_dict(sd).architecture.id == "DnCNN"


@pytest.mark.unit
def test_imdn_x4_real_image_quality(loader: spandrel.ModelLoader) -> None:
    """IMDN x4 on Set5 baby (PSNR on Y, border 4): measured 33.77 dB; bicubic ~31.8."""
    import numpy as np
    from PIL import Image

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

@pytest.mark.unit
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


# --------------------------------------------------------------------- IDT

# jiexiaou/IDT model.py @ d72510c, the released configuration, measured on the official
# code (docs/idt.md): 571 state-dict entries, all parameters (16,416,463), no buffers.
IDT_OFFICIAL_ENTRIES = 571
IDT_OFFICIAL_PARAMS = 16_416_463
IDT_OFFICIAL_SHAPES = {
    "input_proj.proj.0.weight": (32, 3, 3, 3),
    "encoderlayer_0.blocks.0.attn.relative_position_bias_table": (225, 1),
    "encoderlayer_0.blocks.3.attn.relative_position_bias_table": (961, 1),
    "encoderlayer_3.blocks.2.attn.Position_Extract.0.weight": (64, 1, 3, 3),
    "bottle.blocks.0.attn.qkv.to_kv.weight": (1536, 512),
    "dowsample_0.conv.0.weight": (64, 32, 4, 4),
    "upsample_0.deconv.0.weight": (512, 256, 2, 2),
    "upsample_1.deconv.0.weight": (512, 128, 2, 2),
    "decoderlayer_0.blocks.1.attn.relative_position_bias_table": (9, 16),
    "decoderlayer_3.blocks.3.mlp.linear1.0.weight": (256, 64),
    "output_proj.proj.0.weight": (3, 64, 3, 3),
}
IDT_RELEASED = dict(
    in_chans=3, embed_dim=32, num_heads=(1, 2, 4, 8, 16, 16, 8, 4, 2), win_size=8,
    mlp_ratio=4.0, qkv_bias=True, img_size=128,
)


def _save_official(net: nn.Module, path: Path) -> Path:
    """As train_derain.py saves it: the state dict of a DataParallel model."""
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def idt_released(tmp_path_factory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    net = BUILDERS["IDT"]().eval()
    return net, _save_official(net, tmp_path_factory.mktemp("idt") / "net_latest.pth")


NARROW_IDT = dict(embed_dim=8, mlp_ratio=1.0)


def _narrow_idt(seed: int = 0) -> nn.Module:
    """A narrow IDT (embed_dim 8, mlp_ratio 1): the same layout and 128 x 128 input, ~0.3 s
    a tile on one core instead of ~2 s."""
    torch.manual_seed(seed)
    return BUILDERS["IDT"](**NARROW_IDT).eval()


def test_idt_official_layout_detected_count_and_strict(
    loader: spandrel.ModelLoader, idt_released: tuple[nn.Module, Path]
) -> None:
    net, path = idt_released
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert len(sd) == IDT_OFFICIAL_ENTRIES
    assert sum(v.numel() for v in sd.values()) == IDT_OFFICIAL_PARAMS
    for key, shape in IDT_OFFICIAL_SHAPES.items():
        assert tuple(sd[f"module.{key}"].shape) == shape, key
    desc = loader.load_from_file(path)  # strips module., loads strictly
    assert desc.architecture.id == "IDT" and type(desc.model) is MODEL_CLASSES["IDT"]
    assert (desc.scale, desc.purpose, desc.input_channels, desc.output_channels) == (1, "Restoration", 3, 3)
    assert _params(desc.model) == IDT_OFFICIAL_PARAMS
    hp = desc.model.hyperparameters
    assert {k: hp[k] for k in IDT_RELEASED} == IDT_RELEASED
    assert desc.size_requirements.minimum == 128 and desc.model.fixed_size == 128
    # strict both ways, and the same outputs at the one input size
    back = desc.model.state_dict()
    assert set(back) == {k.removeprefix("module.") for k in sd}
    BUILDERS["IDT"]().load_state_dict(back, strict=True)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = desc.model.eval()(x)
        expected = net(x)
    assert got.shape == (1, 3, 128, 128)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.unit
def test_idt_takes_exactly_its_size_and_says_so(tmp_path: Path) -> None:
    from mcir_cli.models.inference import fixed_input_size
    from mcir_cli.models.loading import load_checkpoint_model

    lm = load_checkpoint_model(_save_official(_narrow_idt(), tmp_path / "narrow.pth"))
    assert lm.architecture == "IDT"
    assert (lm.hyperparameters["embed_dim"], lm.hyperparameters["mlp_ratio"]) == (8, 1.0)
    assert fixed_input_size(lm.restorer) == fixed_input_size(lm.net) == 128
    with pytest.raises(ValueError, match="exactly 128x128"):
        lm.net(torch.rand(1, 3, 256, 256))
    with pytest.raises(ValueError, match="64 or a multiple of 128"):
        BUILDERS["IDT"](img_size=96)


def test_idt_full_image_through_mcir_tiling(tmp_path: Path) -> None:
    """A whole Rain100L image (320 x 480, W x H) through inference.restore as evaluate calls it
    (no --tile): 128 x 128 tiles only; the top-left tile's kept pixels are its output."""
    from mcir_cli.data.imageio import read_image
    from mcir_cli.models.inference import restore
    from mcir_cli.models.loading import load_checkpoint_model

    lq = read_image(shared_path("data", "derain", "Rain100L_subset3", "input", "2.png"))
    lm = load_checkpoint_model(_save_official(_narrow_idt(), tmp_path / "narrow.pth"))
    net = lm.restorer.eval()
    sizes: list[tuple[int, int]] = []
    hook = lm.net.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        out = restore(net, lq, lm.scale, min_size=lm.min_size, multiple_of=lm.multiple_of, square=lm.square)
        small = restore(net, lq[:, :100, :90], lm.scale, min_size=lm.min_size,
                        multiple_of=lm.multiple_of, square=lm.square)
    finally:
        hook.remove()
    h, w = lq.shape[-2:]
    assert (h, w) == (480, 320)
    assert out.shape == lq.shape and torch.isfinite(out).all()
    assert set(sizes) == {(128, 128)}
    assert len(sizes) == 5 * 3 + 1  # starts 0/96/192/288/352 x 0/96/192, then the small one
    with torch.no_grad():
        first = net(lq[None, :, :128, :128])[0]
        padded = net(torch.nn.functional.pad(lq[None, :, :100, :90], (0, 38, 0, 28), mode="reflect"))[0]
    margin = 32 // 2  # restore's default overlap
    keep = 128 - margin
    torch.testing.assert_close(out[:, :keep, :keep], first[:, :keep, :keep], rtol=0, atol=0)
    assert small.shape == (3, 100, 90)
    torch.testing.assert_close(small, padded[:, :100, :90], rtol=0, atol=0)


def test_idt_vmap_over_stacked_copies() -> None:
    from torch.func import functional_call, stack_module_state, vmap

    models = [_narrow_idt(seed) for seed in (0, 1)]
    params, buffers = stack_module_state(models)
    base = BUILDERS["IDT"](**NARROW_IDT).to("meta").eval()  # negatives run in eval mode
    x = torch.rand(1, 3, 128, 128)

    def call(p: dict, b: dict, inp: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (inp,))

    out = vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    with torch.no_grad():
        ref = torch.stack([m(x) for m in models])
    torch.testing.assert_close(out.detach(), ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------ EDSR in BasicSR's layout, res_scale

def to_basicsr_edsr(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An EDSR-PyTorch state dict under BasicSR's names (basicsr/archs/edsr_arch.py):
    head.0 -> conv_first, body.i.body.{0,2} -> body.i.conv{1,2}, the closing body conv ->
    conv_after_body, tail.0 -> upsample, tail.1 -> conv_last; BasicSR keeps no MeanShift
    weights (its mean is a plain tensor, img_range an attribute)."""
    import re

    n_blocks = max(int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.body\.", k))) + 1
    out = {}
    for k, v in sd.items():
        if k.startswith(("sub_mean.", "add_mean.")):
            continue
        k = re.sub(r"^head\.0\.", "conv_first.", k)
        k = re.sub(r"^body\.(\d+)\.body\.0\.", r"body.\1.conv1.", k)
        k = re.sub(r"^body\.(\d+)\.body\.2\.", r"body.\1.conv2.", k)
        k = re.sub(rf"^body\.{n_blocks}\.", "conv_after_body.", k)
        k = re.sub(r"^tail\.0\.", "upsample.", k)
        out[re.sub(r"^tail\.1\.", "conv_last.", k)] = v
    return out


@pytest.mark.unit
@pytest.mark.parametrize("scale", [4, 3])
def test_basicsr_edsr_gives_the_same_output_as_the_edsr_it_was_converted_from(tmp_path: Path, scale: int) -> None:
    from mcir_cli.data.imageio import read_image
    from mcir_cli.models.archs.edsr import BasicSREDSR
    from mcir_cli.models.checkpoint import read_checkpoint, save_like
    from mcir_cli.models.loading import load_checkpoint_model

    torch.manual_seed(0)
    official = tmp_path / "edsr_official.pth"
    torch.save(BUILDERS["EDSR"](scale=scale, n_resblocks=2, n_feats=16).state_dict(), official)
    basicsr = tmp_path / "EDSR_Mx.pth"  # BasicSR's wrapper: params and params_ema
    bsd = to_basicsr_edsr(torch.load(official, weights_only=True))
    torch.save({"params": bsd, "params_ema": bsd}, basicsr)

    a, b = load_checkpoint_model(official), load_checkpoint_model(basicsr)
    assert (b.architecture, b.scale, type(b.net)) == ("EDSR", scale, BasicSREDSR)
    assert "basicsr-layout" in b.tags and b.checkpoint.is_ema
    lr = read_image(shared_path("data", "sr", "Set5", "HR", "baby.png"))[:, 100:124, 200:224][None]
    with torch.no_grad():
        torch.testing.assert_close(b.restorer.eval()(lr), a.restorer.eval()(lr), rtol=0, atol=2e-6)
    # written back in BasicSR's names and wrapper, and loaded again strictly
    out = save_like(b.checkpoint, b.file_state_dict(), tmp_path / "again.pth")
    again = read_checkpoint(out)
    assert set(again.state_dict) == set(bsd) and again.wrapper_keys == ("params_ema",)
    assert set(torch.load(out, weights_only=True)) == {"params", "params_ema"}


@pytest.mark.unit
def test_edsr_res_scale_guess_is_said_and_can_be_given(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mcir_cli.errors import McirError
    from mcir_cli.models.loading import load_checkpoint_model

    torch.manual_seed(0)
    path = tmp_path / "edsr_wide.pth"
    torch.save(to_basicsr_edsr(BUILDERS["EDSR"](scale=2, n_resblocks=1, n_feats=256).state_dict()), path)
    with caplog.at_level("WARNING", logger="mcir"):
        guessed = load_checkpoint_model(path)
    assert "res_scale is not stored in the weights; guessed res_scale 0.1" in caplog.text
    assert "256 features" in caplog.text and "--res-scale" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mcir"):
        given = load_checkpoint_model(path, res_scale=1.0)
    assert "res_scale" not in caplog.text
    assert given.hyperparameters["res_scale"] == 1.0 and given.net.body[0].res_scale == 1.0
    assert guessed.net.body[0].res_scale == 0.1
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(given.restorer(x), guessed.restorer(x))  # it is used
    with pytest.raises(McirError, match="--res-scale applies to EDSR only"):
        load_checkpoint_model(shared_path("weights", "IMDN", "IMDN_x4.pth"), res_scale=0.1)


@pytest.mark.parametrize("variant", ["d", "w"])
def test_dehazeformer_variants_are_named(variant: str) -> None:
    from mcir_cli.models.loading import _descriptor_from_state_dict

    desc = _descriptor_from_state_dict(BUILDERS["DehazeFormer"](variant=variant).state_dict(), None)
    assert f"dehazeformer-{variant}" in desc.tags
