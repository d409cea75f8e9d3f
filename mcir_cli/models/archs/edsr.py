"""EDSR (Lim et al., CVPRW 2017) in its two published state-dict layouts.

EDSR-PyTorch (the authors'): ``sub_mean.*``, ``add_mean.*`` (1x1 MeanShift convs, frozen),
``head.0.*``, ``body.{i}.body.{0,2}.*`` (residual blocks), ``body.{n_resblocks}.*``
(closing conv), ``tail.0.{0,2,...}.*`` (pixel-shuffle upsampler) and ``tail.1.*`` (output
conv). The network works on images in [0, rgb_range] (255 for the published checkpoints):
``io_range`` says so, and the descriptor's call function rescales [0, 1] inputs.

BasicSR (``basicsr/archs/edsr_arch.py``; ``{'params': ...}`` files): ``conv_first``,
``body.{i}.conv{1,2}``, ``conv_after_body``, ``upsample.{0,2,...}``, ``conv_last``. It takes
[0, 1] images and applies the mean shift inside, ``(x - rgb_mean) * img_range`` and back;
neither ``img_range`` nor ``rgb_mean`` is stored: BasicSR's EDSR options use 255 and the
DIV2K mean, the same as EDSR-PyTorch, so both layouts compute the same function.

Neither layout stores ``res_scale``: it is guessed from the width (`guess_res_scale`) and
can be set after loading (``set_res_scale``, mcir's ``--res-scale``).
"""

from __future__ import annotations

import math

import torch
from spandrel import Architecture, ImageModelDescriptor, SizeRequirements
from spandrel.util import KeyCondition, get_seq_len, store_hyperparameters
from torch import Tensor, nn

from mcir_cli.models.archs._blocks import conv, range_call_fn

# DIV2K mean used by every EDSR-PyTorch model.
DIV2K_RGB_MEAN: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Conv2d):
    """1x1 conv adding ``sign * rgb_range * mean`` per channel; its parameters are frozen."""

    def __init__(
        self,
        rgb_range: float,
        rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN,
        sign: float = -1.0,
    ) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            assert self.bias is not None
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean))
        for p in self.parameters():
            p.requires_grad_(False)


def guess_res_scale(n_feats: int) -> tuple[float, str]:
    """(res_scale, why): not stored in the weights; the published EDSR (32 x 256) and
    BasicSR's EDSR_L used 0.1, the baseline (16 x 64) and EDSR_M 1."""
    if n_feats >= 256:
        return 0.1, f"{n_feats} features: the published EDSR's 0.1"
    return 1.0, f"{n_feats} features: the EDSR baseline's 1"


class _SettableResScale:
    """`set_res_scale` for a network whose residual blocks carry `res_scale`."""

    hyperparameters: dict

    def set_res_scale(self, value: float) -> None:
        """Use `value` in every residual block (the weights do not say which was trained)."""
        for m in self.modules():  # type: ignore[attr-defined]
            if hasattr(m, "res_scale") and m is not self:
                m.res_scale = float(value)
        self.hyperparameters = {**self.hyperparameters, "res_scale": float(value)}

    @property
    def res_scale(self) -> float:
        return float(self.hyperparameters["res_scale"])

    def res_scale_guess(self) -> tuple[float, str]:
        """`guess_res_scale` for this network's width (n_feats, BasicSR's num_feat)."""
        hp = self.hyperparameters
        return guess_res_scale(int(hp.get("n_feats", hp.get("num_feat", 64))))


class ResBlock(nn.Module):
    """conv-ReLU-conv residual block, residual scaled by ``res_scale``."""

    def __init__(self, n_feats: int, kernel_size: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(n_feats, n_feats, kernel_size),
            nn.ReLU(),
            conv(n_feats, n_feats, kernel_size),
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) * self.res_scale


class Upsampler(nn.Sequential):
    """log2(scale) conv + PixelShuffle(2) stages, or one conv + PixelShuffle(3)."""

    def __init__(self, scale: int, n_feats: int) -> None:
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"EDSR supports scales 2^n and 3, not {scale}")
        super().__init__(*layers)


@store_hyperparameters()
class EDSR(_SettableResScale, nn.Module):
    """EDSR; baseline = 16 blocks x 64 features, full = 32 x 256 with res_scale 0.1."""

    hyperparameters: dict = {}
    io_range: tuple[float, float] = (0.0, 255.0)
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def __init__(
        self,
        *,
        scale: int = 4,
        n_resblocks: int = 16,
        n_feats: int = 64,
        res_scale: float = 1.0,
        n_colors: int = 3,
        kernel_size: int = 3,
        rgb_range: float = 255.0,
    ) -> None:
        super().__init__()
        self.scale = scale
        if rgb_range != 255.0:
            self.io_range = (0.0, float(rgb_range))
        self.sub_mean = MeanShift(rgb_range, sign=-1.0)
        self.add_mean = MeanShift(rgb_range, sign=1.0)
        self.head = nn.Sequential(conv(n_colors, n_feats, kernel_size))
        blocks: list[nn.Module] = [
            ResBlock(n_feats, kernel_size, res_scale) for _ in range(n_resblocks)
        ]
        blocks.append(conv(n_feats, n_feats, kernel_size))
        self.body = nn.Sequential(*blocks)
        self.tail = nn.Sequential(
            Upsampler(scale, n_feats), conv(n_feats, n_colors, kernel_size)
        )

    def forward(self, x: Tensor) -> Tensor:
        """x in [0, rgb_range], NCHW -> upscaled image in [0, rgb_range]."""
        x = self.head(self.sub_mean(x))
        x = self.body(x) + x
        return self.add_mean(self.tail(x))


class ResidualBlockNoBN(nn.Module):
    """BasicSR's residual block: conv1-ReLU-conv2, residual scaled by ``res_scale``."""

    def __init__(self, num_feat: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = conv(num_feat, num_feat, 3)
        self.conv2 = conv(num_feat, num_feat, 3)
        self.relu = nn.ReLU()
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


@store_hyperparameters()
class BasicSREDSR(_SettableResScale, nn.Module):
    """EDSR under BasicSR's module names; [0, 1] in and out, mean shift inside."""

    hyperparameters: dict = {}
    io_range: tuple[float, float] = (0.0, 1.0)
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 16,
        upscale: int = 4,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__()
        self.scale = upscale
        self.img_range = float(img_range)
        # not a weight: BasicSR keeps it as a plain tensor, so it is not in the file
        self.register_buffer("mean", torch.tensor(rgb_mean).view(1, -1, 1, 1), persistent=False)
        self.conv_first = conv(num_in_ch, num_feat, 3)
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)))
        self.conv_after_body = conv(num_feat, num_feat, 3)
        self.upsample = Upsampler(upscale, num_feat)
        self.conv_last = conv(num_feat, num_out_ch, 3)

    def forward(self, x: Tensor) -> Tensor:
        """x in [0, 1], NCHW -> upscaled image in [0, 1]."""
        x = self.conv_first((x - self.mean) * self.img_range)
        res = self.conv_after_body(self.body(x)) + x
        return self.conv_last(self.upsample(res)) / self.img_range + self.mean


_OFFICIAL_KEYS = ("sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias", "head.0.weight",
                  "body.0.body.0.weight", "body.0.body.2.weight", "tail.0.0.weight", "tail.1.weight")
_BASICSR_KEYS = ("conv_first.weight", "body.0.conv1.weight", "body.0.conv2.weight", "conv_after_body.weight",
                 "upsample.0.weight", "conv_last.weight")


def _upscale(state_dict: dict[str, Tensor], prefix: str, n_feats: int) -> int:
    """The scale of a pixel-shuffle upsampler: one x3 stage, or log2(scale) x2 stages."""
    if int(state_dict[f"{prefix}.0.weight"].shape[0]) // n_feats == 9:
        return 3
    return 2 ** ((get_seq_len(state_dict, prefix) + 1) // 2)  # conv, shuffle, conv, ...


class EDSRArch(Architecture[nn.Module]):
    """spandrel detection/loading for EDSR checkpoints, EDSR-PyTorch's or BasicSR's layout."""

    def __init__(self) -> None:
        super().__init__(
            id="EDSR",
            detect=KeyCondition.has_any(KeyCondition.has_all(*_OFFICIAL_KEYS), KeyCondition.has_all(*_BASICSR_KEYS)),
        )

    def load(self, state_dict: dict[str, Tensor]) -> ImageModelDescriptor[nn.Module]:
        """Infer scale, depth and width from tensor shapes and build the model."""
        if "conv_first.weight" in state_dict:
            return self._load_basicsr(state_dict)
        n_colors = int(state_dict["head.0.weight"].shape[1])
        n_feats = int(state_dict["head.0.weight"].shape[0])
        kernel_size = int(state_dict["head.0.weight"].shape[-1])
        n_resblocks = get_seq_len(state_dict, "body") - 1
        scale = _upscale(state_dict, "tail.0", n_feats)
        res_scale, _ = guess_res_scale(n_feats)  # not stored in the weights
        model = EDSR(
            scale=scale,
            n_resblocks=n_resblocks,
            n_feats=n_feats,
            res_scale=res_scale,
            n_colors=n_colors,
            kernel_size=kernel_size,
        )
        return self._descriptor(model, state_dict, [f"{n_feats}nf", f"{n_resblocks}nb"], n_colors, n_colors)

    def _load_basicsr(self, state_dict: dict[str, Tensor]) -> ImageModelDescriptor[nn.Module]:
        num_in_ch, num_feat = (int(d) for d in state_dict["conv_first.weight"].shape[1::-1])
        num_block = get_seq_len(state_dict, "body")
        model = BasicSREDSR(
            num_in_ch=num_in_ch,
            num_out_ch=int(state_dict["conv_last.weight"].shape[0]),
            num_feat=num_feat,
            num_block=num_block,
            upscale=_upscale(state_dict, "upsample", num_feat),
            res_scale=guess_res_scale(num_feat)[0],  # not stored in the weights
        )
        tags = [f"{num_feat}nf", f"{num_block}nb", "basicsr-layout"]
        return self._descriptor(model, state_dict, tags, num_in_ch, model.conv_last.out_channels)

    def _descriptor(self, model: nn.Module, state_dict: dict[str, Tensor], tags: list[str], cin: int,
                    cout: int) -> ImageModelDescriptor[nn.Module]:
        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="SR",
            tags=tags,
            supports_half=False,
            supports_bfloat16=True,
            scale=model.scale,
            input_channels=cin,
            output_channels=cout,
            size_requirements=SizeRequirements(),
            call_fn=range_call_fn(*model.io_range),
        )


def build_edsr(
    scale: int = 4,
    n_resblocks: int = 16,
    n_feats: int = 64,
    res_scale: float = 1.0,
    **kwargs: object,
) -> EDSR:
    """Build an EDSR from keyword hyper-parameters (baseline by default)."""
    return EDSR(
        scale=scale, n_resblocks=n_resblocks, n_feats=n_feats, res_scale=res_scale, **kwargs
    )


__all__ = ["BasicSREDSR", "EDSR", "EDSRArch", "build_edsr", "guess_res_scale"]
