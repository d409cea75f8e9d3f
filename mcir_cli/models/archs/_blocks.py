"""Pieces shared by mcir's built-in architectures."""

from __future__ import annotations

import torch
from spandrel.util import get_scale_and_output_channels
from torch import Tensor, nn


def conv(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1) -> nn.Conv2d:
    """'Same'-padded convolution with bias (odd kernels), as every official repo here uses."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=(kernel_size - 1) // 2)


class DistillationTrunk(nn.Module):
    """The IMDN/RFDN body: conv, a chain of blocks whose outputs are all concatenated,
    1x1 fusion + LeakyReLU(0.05), conv + long skip, pixel-shuffle upsampler.

    Blocks are registered as `{prefix}1..{prefix}n` (IMDN: "IMDB", RFDN: "B"), which with
    `fea_conv`, `c.0`, `LR_conv`, `upsampler.0` is the official key layout."""

    def __init__(self, blocks: list[nn.Module], prefix: str, in_nc: int, nf: int, out_nc: int, upscale: int) -> None:
        super().__init__()
        self.num_modules = len(blocks)
        self._prefix = prefix
        self.fea_conv = conv(in_nc, nf, 3)
        for i, block in enumerate(blocks, start=1):
            self.add_module(f"{prefix}{i}", block)
        self.c = nn.Sequential(nn.Conv2d(nf * len(blocks), nf, 1), nn.LeakyReLU(0.05))
        self.LR_conv = conv(nf, nf, 3)
        self.upsampler = nn.Sequential(conv(nf, out_nc * upscale**2, 3), nn.PixelShuffle(upscale))

    def forward(self, x: Tensor) -> Tensor:
        fea = self.fea_conv(x)
        outs: list[Tensor] = []
        h = fea
        for i in range(1, self.num_modules + 1):
            h = getattr(self, f"{self._prefix}{i}")(h)
            outs.append(h)
        fused = self.c(torch.cat(outs, dim=1))
        return self.upsampler(self.LR_conv(fused) + fea)


def trunk_hyperparameters(state_dict: dict[str, Tensor], block_key: str) -> dict[str, int]:
    """in_nc, nf, num_modules, out_nc and upscale of a DistillationTrunk checkpoint, from
    tensor shapes; `block_key` names a key of block i, e.g. "IMDB{}.c1.weight"."""
    in_nc = int(state_dict["fea_conv.weight"].shape[1])
    nf = int(state_dict["fea_conv.weight"].shape[0])
    num_modules = 0
    while block_key.format(num_modules + 1) in state_dict:
        num_modules += 1
    upscale, out_nc = get_scale_and_output_channels(int(state_dict["upsampler.0.weight"].shape[0]), in_nc)
    return {"in_nc": in_nc, "nf": nf, "num_modules": num_modules, "out_nc": out_nc, "upscale": upscale}


def range_call_fn(lo: float, hi: float):
    """spandrel `call_fn` for a network whose images live in [lo, hi]: [0, 1] in and out."""

    def call(model: nn.Module, image: Tensor) -> Tensor:
        return (model(image * (hi - lo) + lo) - lo) / (hi - lo)

    return call
