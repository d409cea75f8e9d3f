"""AOD-Net (Li et al., ICCV 2017) in the layout of MayankSingal/PyTorch-Image-Dehazing.

Keys: ``e_conv1..e_conv5.{weight,bias}``. Five small convs estimate K(x); the clean
image is ``relu(K * x - K + 1)``. 1,761 parameters. Images in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from spandrel import Architecture, ImageModelDescriptor, SizeRequirements
from spandrel.util import KeyCondition, store_hyperparameters
from torch import Tensor, nn


@store_hyperparameters()
class AODNet(nn.Module):
    """AOD-Net: multi-scale convs with concatenations estimating the K(x) map."""

    hyperparameters: dict = {}
    io_range: tuple[float, float] = (0.0, 1.0)
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def __init__(self, *, in_nc: int = 3, b: float = 1.0) -> None:
        super().__init__()
        c = in_nc
        self.b = b
        self.e_conv1 = nn.Conv2d(c, c, 1, 1, 0)
        self.e_conv2 = nn.Conv2d(c, c, 3, 1, 1)
        self.e_conv3 = nn.Conv2d(2 * c, c, 5, 1, 2)
        self.e_conv4 = nn.Conv2d(2 * c, c, 7, 1, 3)
        self.e_conv5 = nn.Conv2d(4 * c, c, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = F.relu(self.e_conv1(x))
        x2 = F.relu(self.e_conv2(x1))
        x3 = F.relu(self.e_conv3(torch.cat([x1, x2], dim=1)))
        x4 = F.relu(self.e_conv4(torch.cat([x2, x3], dim=1)))
        k = F.relu(self.e_conv5(torch.cat([x1, x2, x3, x4], dim=1)))
        return F.relu(k * x - k + self.b)


def _detect_aodnet(state_dict: dict[str, Tensor]) -> bool:
    """All five e_conv layers, with AOD-Net's kernel sizes and concat widths."""
    keys = KeyCondition.has_all(
        *(f"e_conv{i}.{p}" for i in range(1, 6) for p in ("weight", "bias"))
    )
    if not keys(state_dict):
        return False
    c = state_dict["e_conv1.weight"].shape[0]
    expected = {
        1: (c, c, 1, 1),
        2: (c, c, 3, 3),
        3: (c, 2 * c, 5, 5),
        4: (c, 2 * c, 7, 7),
        5: (c, 4 * c, 3, 3),
    }
    return all(
        tuple(state_dict[f"e_conv{i}.weight"].shape) == s for i, s in expected.items()
    ) and len(state_dict) == 10


class AODNetArch(Architecture[AODNet]):
    """spandrel detection/loading for AOD-Net checkpoints."""

    def __init__(self) -> None:
        super().__init__(id="AODNet", name="AOD-Net", detect=_detect_aodnet)

    def load(self, state_dict: dict[str, Tensor]) -> ImageModelDescriptor[AODNet]:
        """Build AOD-Net with the channel count of the state dict."""
        in_nc = int(state_dict["e_conv1.weight"].shape[0])
        model = AODNet(in_nc=in_nc)
        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="Restoration",
            tags=[],
            supports_half=True,
            supports_bfloat16=True,
            scale=1,
            input_channels=in_nc,
            output_channels=in_nc,
            size_requirements=SizeRequirements(),
        )


def build_aodnet(**kwargs: object) -> AODNet:
    """Build an AOD-Net (it has no size hyper-parameters)."""
    return AODNet(**kwargs)


__all__ = ["AODNet", "AODNetArch", "build_aodnet"]
