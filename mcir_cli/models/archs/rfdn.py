"""RFDN (Liu et al., AIM 2020 ESR winner) in the layout of njulj/RFDN (RFDN.py, block.py).

Keys: ``fea_conv.*``, ``B{1..n}.{c1_d,c1_r,c2_d,c2_r,c3_d,c3_r,c4,c5}.*``,
``B{i}.esa.{conv1,conv_f,conv_max,conv2,conv3,conv3_,conv4}.*``, ``c.0.*``,
``LR_conv.*``, ``upsampler.0.*``.

I/O range: the published RFDN_AIM.pth works on images in [0, 255] (the repo's
``utils_image.uint2tensor4`` divides by 1.0 and ``tensor2uint`` clamps to [0, 255]);
fed [0, 1] images it gives Set5 x4 ~26 dB instead of ~32.2 dB. ``io_range`` records that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from spandrel import Architecture, ImageModelDescriptor, SizeRequirements
from spandrel.util import KeyCondition, store_hyperparameters
from torch import Tensor, nn

from mcir_cli.models.archs._blocks import DistillationTrunk, conv, range_call_fn, trunk_hyperparameters


class ESA(nn.Module):
    """Enhanced spatial attention: strided conv + max-pool branch gating the features."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        f = n_feats // 4
        self.conv1 = nn.Conv2d(n_feats, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv_max = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv3_ = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, n_feats, 1)

    def forward(self, x: Tensor) -> Tensor:
        c1_ = self.conv1(x)
        c1 = self.conv2(c1_)
        v_max = F.max_pool2d(c1, kernel_size=7, stride=3)
        v_range = F.relu(self.conv_max(v_max))
        c3 = self.conv3_(F.relu(self.conv3(v_range)))
        c3 = F.interpolate(c3, size=x.shape[-2:], mode="bilinear", align_corners=False)
        m = torch.sigmoid(self.conv4(c3 + self.conv_f(c1_)))
        return x * m


class RFDB(nn.Module):
    """Residual feature distillation block (distilled = C/2, shallow residual units)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        dc = in_channels // 2
        rc = in_channels
        self.c1_d = conv(in_channels, dc, 1)
        self.c1_r = conv(in_channels, rc, 3)
        self.c2_d = conv(rc, dc, 1)
        self.c2_r = conv(rc, rc, 3)
        self.c3_d = conv(rc, dc, 1)
        self.c3_r = conv(rc, rc, 3)
        self.c4 = conv(rc, dc, 3)
        self.act = nn.LeakyReLU(0.05)
        self.c5 = conv(dc * 4, in_channels, 1)
        self.esa = ESA(in_channels)

    def forward(self, x: Tensor) -> Tensor:
        d1 = self.act(self.c1_d(x))
        r1 = self.act(self.c1_r(x) + x)
        d2 = self.act(self.c2_d(r1))
        r2 = self.act(self.c2_r(r1) + r1)
        d3 = self.act(self.c3_d(r2))
        r3 = self.act(self.c3_r(r2) + r2)
        r4 = self.act(self.c4(r3))
        return self.esa(self.c5(torch.cat([d1, d2, d3, r4], dim=1)))


@store_hyperparameters()
class RFDN(DistillationTrunk):
    """RFDN: conv, ``num_modules`` RFDBs, 1x1 fusion, conv + skip, pixel-shuffle upsampler.

    ``rgb_range`` only sets ``io_range`` (the official weights expect [0, 255]).
    """

    hyperparameters: dict = {}
    io_range: tuple[float, float] = (0.0, 255.0)
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def __init__(
        self,
        *,
        in_nc: int = 3,
        nf: int = 50,
        num_modules: int = 4,
        out_nc: int = 3,
        upscale: int = 4,
        rgb_range: float = 255.0,
    ) -> None:
        super().__init__([RFDB(nf) for _ in range(num_modules)], "B", in_nc, nf, out_nc, upscale)
        if rgb_range != 255.0:
            self.io_range = (0.0, float(rgb_range))


class RFDNArch(Architecture[RFDN]):
    """spandrel detection/loading for RFDN checkpoints."""

    def __init__(self) -> None:
        super().__init__(
            id="RFDN",
            detect=KeyCondition.has_all(
                "fea_conv.weight",
                "B1.c1_d.weight",
                "B1.c1_r.weight",
                "B1.c4.weight",
                "B1.c5.weight",
                "B1.esa.conv1.weight",
                "B1.esa.conv_max.weight",
                "B1.esa.conv3_.weight",
                "B1.esa.conv4.weight",
                "c.0.weight",
                "LR_conv.weight",
                "upsampler.0.weight",
            ),
        )

    def load(self, state_dict: dict[str, Tensor]) -> ImageModelDescriptor[RFDN]:
        """Infer width, block count, scale and channels from tensor shapes."""
        hp = trunk_hyperparameters(state_dict, "B{}.c1_d.weight")
        model = RFDN(**hp)
        nf, num_modules, upscale = hp["nf"], hp["num_modules"], hp["upscale"]
        in_nc, out_nc = hp["in_nc"], hp["out_nc"]
        call = range_call_fn(*model.io_range)

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
            # ESA: stride-2 3x3 conv then a 7x7/3 max-pool needs >= 15 pixels.
            size_requirements=SizeRequirements(minimum=15),
            call_fn=call,
        )


def build_rfdn(
    upscale: int = 4, nf: int = 50, num_modules: int = 4, **kwargs: object
) -> RFDN:
    """Build an RFDN from keyword hyper-parameters (official AIM model: nf 50, 4 RFDBs)."""
    if "scale" in kwargs:
        upscale = int(kwargs.pop("scale"))  # type: ignore[arg-type]
    return RFDN(upscale=upscale, nf=nf, num_modules=num_modules, **kwargs)


__all__ = ["RFDN", "RFDNArch", "build_rfdn"]
