"""FFA-Net (Qin et al., AAAI 2020) in the layout of zhilin007/FFA-Net (net/models/FFA.py).

Keys: ``pre.0``, ``g{1..3}.gp.{0..B-1}.{conv1,conv2,calayer.ca.{0,2},palayer.pa.{0,2}}``,
``g*.gp.{B}`` (closing conv of each group), ``ca.{1,3}`` (feature-attention over the
three groups), ``palayer.pa.{0,2}``, ``post.{0,1}``.

I/O convention of the official code: the input is normalised *outside* the network with
``input_mean``/``input_std``; the output is read directly as an image in [0, 1] (the
net adds its result to the normalised input, and the official test only clamps it).
"""

from __future__ import annotations

import torch
from spandrel import Architecture, ImageModelDescriptor, SizeRequirements
from spandrel.util import KeyCondition, get_seq_len, store_hyperparameters
from torch import Tensor, nn

from mcir_cli.models.archs._blocks import conv

FFA_MEAN: tuple[float, float, float] = (0.64, 0.6, 0.58)
FFA_STD: tuple[float, float, float] = (0.14, 0.15, 0.152)


class PALayer(nn.Module):
    """Pixel attention: a per-pixel sigmoid gate computed by two 1x1 convs."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.pa = nn.Sequential(
            nn.Conv2d(channel, channel // 8, 1),
            nn.ReLU(),
            nn.Conv2d(channel // 8, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.pa(x)


class CALayer(nn.Module):
    """Channel attention: global average pool, two 1x1 convs, sigmoid gate."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.ca = nn.Sequential(
            nn.Conv2d(channel, channel // 8, 1),
            nn.ReLU(),
            nn.Conv2d(channel // 8, channel, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.ca(self.avg_pool(x))


class Block(nn.Module):
    """Feature-attention block: conv-ReLU (+x), conv, CA, PA, (+x)."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = conv(dim, dim, kernel_size)
        self.act1 = nn.ReLU()
        self.conv2 = conv(dim, dim, kernel_size)
        self.calayer = CALayer(dim)
        self.palayer = PALayer(dim)

    def forward(self, x: Tensor) -> Tensor:
        res = self.act1(self.conv1(x)) + x
        res = self.palayer(self.calayer(self.conv2(res)))
        return res + x


class Group(nn.Module):
    """``blocks`` Blocks followed by a conv, with a group-level residual."""

    def __init__(self, dim: int, kernel_size: int, blocks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [Block(dim, kernel_size) for _ in range(blocks)]
        layers.append(conv(dim, dim, kernel_size))
        self.gp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.gp(x) + x


@store_hyperparameters()
class FFANet(nn.Module):
    """FFA-Net with three groups of ``blocks`` feature-attention blocks."""

    hyperparameters: dict = {}
    io_range: tuple[float, float] = (0.0, 1.0)
    input_mean: tuple[float, ...] | None = FFA_MEAN
    input_std: tuple[float, ...] | None = FFA_STD

    def __init__(
        self, *, gps: int = 3, blocks: int = 19, dim: int = 64, in_nc: int = 3
    ) -> None:
        super().__init__()
        if gps != 3:
            raise ValueError("FFA-Net is defined for exactly 3 groups")
        self.gps = gps
        self.dim = dim
        k = 3
        self.pre = nn.Sequential(conv(in_nc, dim, k))
        self.g1 = Group(dim, k, blocks)
        self.g2 = Group(dim, k, blocks)
        self.g3 = Group(dim, k, blocks)
        self.ca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim * gps, dim // 16, 1),
            nn.ReLU(),
            nn.Conv2d(dim // 16, dim * gps, 1),
            nn.Sigmoid(),
        )
        self.palayer = PALayer(dim)
        self.post = nn.Sequential(conv(dim, dim, k), conv(dim, in_nc, k))

    def forward(self, x1: Tensor) -> Tensor:
        """x1: normalised hazy image ((x - input_mean) / input_std) -> dehazed image."""
        x = self.pre(x1)
        r1 = self.g1(x)
        r2 = self.g2(r1)
        r3 = self.g3(r2)
        w = self.ca(torch.cat([r1, r2, r3], dim=1))
        w = w.reshape(-1, self.gps, self.dim, 1, 1)
        out = w[:, 0] * r1 + w[:, 1] * r2 + w[:, 2] * r3
        out = self.palayer(out)
        return self.post(out) + x1


class FFANetArch(Architecture[FFANet]):
    """spandrel detection/loading for FFA-Net checkpoints."""

    def __init__(self) -> None:
        super().__init__(
            id="FFANet",
            name="FFA-Net",
            detect=KeyCondition.has_all(
                "pre.0.weight",
                "g1.gp.0.conv1.weight",
                "g1.gp.0.conv2.weight",
                "g1.gp.0.calayer.ca.0.weight",
                "g1.gp.0.palayer.pa.0.weight",
                "g2.gp.0.conv1.weight",
                "g3.gp.0.conv1.weight",
                "ca.1.weight",
                "ca.3.weight",
                "palayer.pa.0.weight",
                "palayer.pa.2.weight",
                "post.0.weight",
                "post.1.weight",
            ),
        )

    def load(self, state_dict: dict[str, Tensor]) -> ImageModelDescriptor[FFANet]:
        """Infer the block count and width from the state dict."""
        dim = int(state_dict["pre.0.weight"].shape[0])
        in_nc = int(state_dict["pre.0.weight"].shape[1])
        blocks = get_seq_len(state_dict, "g1.gp") - 1
        model = FFANet(gps=3, blocks=blocks, dim=dim, in_nc=in_nc)
        mean = torch.tensor(FFA_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(FFA_STD).view(1, 3, 1, 1)

        def call(m: FFANet, image: Tensor) -> Tensor:
            return m((image - mean.to(image)) / std.to(image))

        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="Restoration",
            tags=[f"{blocks}blocks", f"{dim}dim"],
            supports_half=False,
            supports_bfloat16=True,
            scale=1,
            input_channels=in_nc,
            output_channels=in_nc,
            size_requirements=SizeRequirements(),
            call_fn=call,
        )


def build_ffanet(gps: int = 3, blocks: int = 19, **kwargs: object) -> FFANet:
    """Build an FFA-Net from keyword hyper-parameters (official gps 3, blocks 19)."""
    return FFANet(gps=gps, blocks=blocks, **kwargs)


__all__ = ["FFANet", "FFANetArch", "build_ffanet", "FFA_MEAN", "FFA_STD"]
