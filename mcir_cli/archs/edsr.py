"""EDSR (Lim et al., CVPRW 2017) in the EDSR-PyTorch state-dict layout.

Keys: ``sub_mean.*``, ``add_mean.*`` (1x1 MeanShift convs, frozen), ``head.0.*``,
``body.{i}.body.{0,2}.*`` (residual blocks), ``body.{n_resblocks}.*`` (closing conv),
``tail.0.{0,2,...}.*`` (pixel-shuffle upsampler) and ``tail.1.*`` (output conv).

The network works on images in [0, rgb_range] (255 for the published checkpoints):
``io_range`` says so, and the descriptor's call function rescales [0, 1] inputs.
"""

from __future__ import annotations

import math

import torch
from spandrel import Architecture, ImageModelDescriptor, SizeRequirements
from spandrel.util import KeyCondition, get_seq_len, store_hyperparameters
from torch import Tensor, nn

from mcir_cli.archs._blocks import conv, range_call_fn

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
class EDSR(nn.Module):
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


class EDSRArch(Architecture[EDSR]):
    """spandrel detection/loading for EDSR-PyTorch checkpoints."""

    def __init__(self) -> None:
        super().__init__(
            id="EDSR",
            detect=KeyCondition.has_all(
                "sub_mean.weight",
                "sub_mean.bias",
                "add_mean.weight",
                "add_mean.bias",
                "head.0.weight",
                "body.0.body.0.weight",
                "body.0.body.2.weight",
                "tail.0.0.weight",
                "tail.1.weight",
            ),
        )

    def load(self, state_dict: dict[str, Tensor]) -> ImageModelDescriptor[EDSR]:
        """Infer scale, depth and width from tensor shapes and build the model."""
        n_colors = int(state_dict["head.0.weight"].shape[1])
        n_feats = int(state_dict["head.0.weight"].shape[0])
        kernel_size = int(state_dict["head.0.weight"].shape[-1])
        n_resblocks = get_seq_len(state_dict, "body") - 1
        stages = get_seq_len(state_dict, "tail.0")  # conv, shuffle, conv, shuffle...
        first_up = int(state_dict["tail.0.0.weight"].shape[0]) // n_feats
        if first_up == 9:
            scale = 3
        else:
            scale = 2 ** ((stages + 1) // 2)
        # res_scale is not stored; the published EDSR (32 x 256) used 0.1.
        res_scale = 0.1 if n_feats >= 256 else 1.0
        model = EDSR(
            scale=scale,
            n_resblocks=n_resblocks,
            n_feats=n_feats,
            res_scale=res_scale,
            n_colors=n_colors,
            kernel_size=kernel_size,
        )
        call = range_call_fn(*model.io_range)

        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="SR",
            tags=[f"{n_feats}nf", f"{n_resblocks}nb"],
            supports_half=False,
            supports_bfloat16=True,
            scale=scale,
            input_channels=n_colors,
            output_channels=n_colors,
            size_requirements=SizeRequirements(),
            call_fn=call,
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


__all__ = ["EDSR", "EDSRArch", "build_edsr"]
