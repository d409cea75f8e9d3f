"""IMDN (Hui et al., ACM MM 2019) in the layout of Zheng222/IMDN (model/architecture.py).

Keys: ``fea_conv.*``, ``IMDB{1..n}.{c1..c5,cca.conv_du.{0,2}}.*``, ``c.0.*`` (1x1 fusion
conv + LeakyReLU), ``LR_conv.*``, ``upsampler.0.*`` (conv before PixelShuffle).
Images in [0, 1].
"""

from __future__ import annotations

import torch
from spandrel import Architecture, ImageModelDescriptor, SizeRequirements
from spandrel.util import KeyCondition, store_hyperparameters
from torch import Tensor, nn

from mcir_cli.models.archs._blocks import DistillationTrunk, conv, trunk_hyperparameters


def _channel_std(x: Tensor) -> Tensor:
    """Per-channel spatial standard deviation (biased), shape N x C x 1 x 1."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).pow(0.5)


class CCALayer(nn.Module):
    """Contrast-aware channel attention: (std + mean) -> 1x1 conv bottleneck -> sigmoid."""

    def __init__(self, channel: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1),
            nn.ReLU(),
            nn.Conv2d(channel // reduction, channel, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        y = _channel_std(x) + self.avg_pool(x)
        return x * self.conv_du(y)


class IMDModule(nn.Module):
    """Information multi-distillation block: 3 split steps + CCA + 1x1 fusion + skip."""

    def __init__(self, in_channels: int, distillation_rate: float = 0.25) -> None:
        super().__init__()
        self.distilled = int(in_channels * distillation_rate)
        self.remaining = in_channels - self.distilled
        self.c1 = conv(in_channels, in_channels, 3)
        self.c2 = conv(self.remaining, in_channels, 3)
        self.c3 = conv(self.remaining, in_channels, 3)
        self.c4 = conv(self.remaining, self.distilled, 3)
        self.act = nn.LeakyReLU(0.05)
        self.c5 = conv(self.distilled * 4, in_channels, 1)
        self.cca = CCALayer(self.distilled * 4)

    def forward(self, x: Tensor) -> Tensor:
        split = (self.distilled, self.remaining)
        d1, r1 = torch.split(self.act(self.c1(x)), split, dim=1)
        d2, r2 = torch.split(self.act(self.c2(r1)), split, dim=1)
        d3, r3 = torch.split(self.act(self.c3(r2)), split, dim=1)
        out = torch.cat([d1, d2, d3, self.c4(r3)], dim=1)
        return self.c5(self.cca(out)) + x


@store_hyperparameters()
class IMDN(DistillationTrunk):
    """IMDN: conv, ``num_modules`` IMDBs, 1x1 fusion, conv + skip, pixel-shuffle upsampler."""

    hyperparameters: dict = {}
    io_range: tuple[float, float] = (0.0, 1.0)
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def __init__(
        self,
        *,
        in_nc: int = 3,
        nf: int = 64,
        num_modules: int = 6,
        out_nc: int = 3,
        upscale: int = 4,
    ) -> None:
        super().__init__([IMDModule(nf) for _ in range(num_modules)], "IMDB", in_nc, nf, out_nc, upscale)


class IMDNArch(Architecture[IMDN]):
    """spandrel detection/loading for IMDN checkpoints (x2/x3/x4)."""

    def __init__(self) -> None:
        super().__init__(
            id="IMDN",
            detect=KeyCondition.has_all(
                "fea_conv.weight",
                "IMDB1.c1.weight",
                "IMDB1.c2.weight",
                "IMDB1.c3.weight",
                "IMDB1.c4.weight",
                "IMDB1.c5.weight",
                "IMDB1.cca.conv_du.0.weight",
                "IMDB1.cca.conv_du.2.weight",
                "c.0.weight",
                "LR_conv.weight",
                "upsampler.0.weight",
            ),
        )

    def load(self, state_dict: dict[str, Tensor]) -> ImageModelDescriptor[IMDN]:
        """Infer width, block count, scale and channels from tensor shapes."""
        hp = trunk_hyperparameters(state_dict, "IMDB{}.c1.weight")
        model = IMDN(**hp)
        nf, num_modules, upscale = hp["nf"], hp["num_modules"], hp["upscale"]
        in_nc, out_nc = hp["in_nc"], hp["out_nc"]
        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="SR" if upscale > 1 else "Restoration",
            tags=[f"{nf}nf", f"{num_modules}nm"],
            supports_half=False,
            supports_bfloat16=True,
            scale=upscale,
            input_channels=in_nc,
            output_channels=out_nc,
            size_requirements=SizeRequirements(),
        )


def build_imdn(
    upscale: int = 4, nf: int = 64, num_modules: int = 6, **kwargs: object
) -> IMDN:
    """Build an IMDN from keyword hyper-parameters (official: nf 64, 6 IMDBs)."""
    if "scale" in kwargs:
        upscale = int(kwargs.pop("scale"))  # type: ignore[arg-type]
    return IMDN(upscale=upscale, nf=nf, num_modules=num_modules, **kwargs)


__all__ = ["IMDN", "IMDNArch", "build_imdn"]
