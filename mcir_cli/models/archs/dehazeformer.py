"""DehazeFormer (Song et al., IEEE TIP 2023) in the layout of IDKiro/DehazeFormer.

A 5-stage U-shaped network (embed dims e.g. 24/48/96/48/24) of blocks made of a
revised LayerNorm (RLN, with ``meta1``/``meta2`` 1x1 convs that rescale/rebias the
output), window attention whose relative-position bias is an MLP (``attn.meta``) over
log-spaced relative coordinates (buffer ``attn.relative_positions``), a depth-wise or
plain conv branch, and a 1x1 MLP. Skips are merged with SK fusion. The head predicts
K (1 channel) and B (3 channels) and returns ``K * x - B + x``.

Keys: ``patch_embed.proj``, ``layer{1..5}.blocks.{i}.{norm1.*,attn.{V,proj,QK,conv*,
attn.meta.{0,2},attn.relative_positions},mlp.mlp.{0,2}}``, ``patch_merge{1,2}.proj``,
``skip{1,2}``, ``patch_split{1,2}.proj.0``, ``fusion{1,2}.mlp.{0,2}``,
``patch_unembed.proj.0``. Images in [-1, 1].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from spandrel import Architecture, ImageModelDescriptor, SizeRequirements
from spandrel.util import KeyCondition, get_seq_len, store_hyperparameters
from torch import Tensor, nn
from torch.nn.init import _calculate_fan_in_and_fan_out, trunc_normal_

from mcir_cli.models.archs._blocks import range_call_fn

# Official variants (models/dehazeformer.py at IDKiro/DehazeFormer d8260200: T/S/B/M/L and
# the repository-only D (B twice as deep) and W (B twice as wide)): dims, depths, attention
# ratios and conv type per stage (mlp ratios and heads are the same in all).
_DEFAULT_DIMS = (24, 48, 96, 48, 24)
_ATTN = (1 / 4, 1 / 2, 3 / 4, 0.0, 0.0)
VARIANTS: dict[str, dict[str, object]] = {
    "t": dict(depths=(4, 4, 4, 2, 2), attn_ratio=(0.0, 1 / 2, 1.0, 0.0, 0.0), conv_type="DWConv"),
    "s": dict(depths=(8, 8, 8, 4, 4), attn_ratio=_ATTN, conv_type="DWConv"),
    "b": dict(depths=(16, 16, 16, 8, 8), attn_ratio=_ATTN, conv_type="DWConv"),
    "d": dict(depths=(32, 32, 32, 16, 16), attn_ratio=_ATTN, conv_type="DWConv"),
    "w": dict(embed_dims=(48, 96, 192, 96, 48), depths=(16, 16, 16, 8, 8), attn_ratio=_ATTN, conv_type="DWConv"),
    "m": dict(depths=(12, 12, 12, 6, 6), attn_ratio=_ATTN, conv_type="Conv"),
    "l": dict(
        embed_dims=(48, 96, 192, 96, 48),
        depths=(16, 16, 16, 12, 12),
        attn_ratio=_ATTN,
        conv_type="Conv",
    ),
}


class RLN(nn.Module):
    """Revised LayerNorm: normalise over (C, H, W); also return rescale/rebias maps."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.meta1 = nn.Conv2d(1, dim, 1)
        self.meta2 = nn.Conv2d(1, dim, 1)
        trunc_normal_(self.meta1.weight, std=0.02)
        nn.init.constant_(self.meta1.bias, 1.0)
        trunc_normal_(self.meta2.weight, std=0.02)
        nn.init.constant_(self.meta2.bias, 0.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = torch.sqrt((x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True) + self.eps)
        out = (x - mean) / std * self.weight + self.bias
        return out, self.meta1(std), self.meta2(mean)


def _scaled_init(module: nn.Module, network_depth: int) -> None:
    """Truncated-normal Xavier init scaled by (8 * depth)^(-1/4), zero bias."""
    if isinstance(module, nn.Conv2d):
        gain = (8 * network_depth) ** (-1 / 4)
        fan_in, fan_out = _calculate_fan_in_and_fan_out(module.weight)
        trunc_normal_(module.weight, std=gain * math.sqrt(2.0 / float(fan_in + fan_out)))
        if module.bias is not None:
            nn.init.constant_(module.bias, 0.0)


class Mlp(nn.Module):
    """1x1 conv - ReLU - 1x1 conv."""

    def __init__(self, network_depth: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, dim, 1))
        self.apply(lambda m: _scaled_init(m, network_depth))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


def _window_partition(x: Tensor, ws: int) -> Tensor:
    """B,H,W,C -> (B * nW), ws*ws, C."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    """(B * nW), ws*ws, C -> B,H,W,C."""
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.reshape(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def _relative_positions(ws: int) -> Tensor:
    """Signed log(1 + |d|) of the (dy, dx) offsets between window positions: N x N x 2."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    return torch.sign(rel) * torch.log(1.0 + rel.abs())


class WindowAttention(nn.Module):
    """Multi-head self-attention within a window, bias from an MLP over relative positions."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.register_buffer("relative_positions", _relative_positions(window_size))
        self.meta = nn.Sequential(nn.Linear(2, 256), nn.ReLU(), nn.Linear(256, num_heads))

    def forward(self, qkv: Tensor) -> Tensor:
        bw, n, _ = qkv.shape
        qkv = qkv.reshape(bw, n, 3, self.num_heads, self.dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.meta(self.relative_positions).permute(2, 0, 1)
        attn = torch.softmax(attn + bias.unsqueeze(0), dim=-1)
        return (attn @ v).transpose(1, 2).reshape(bw, n, self.dim)


class Attention(nn.Module):
    """Token mixer: optional shifted-window attention plus a conv branch (DWConv or Conv)."""

    def __init__(
        self,
        network_depth: int,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        use_attn: bool,
        conv_type: str | None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.use_attn = use_attn
        self.conv_type = conv_type
        if conv_type == "Conv":
            self.conv = nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1, padding_mode="reflect"),
                nn.ReLU(),
                nn.Conv2d(dim, dim, 3, padding=1, padding_mode="reflect"),
            )
        if conv_type == "DWConv":
            self.conv = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, padding_mode="reflect")
        if conv_type == "DWConv" or use_attn:
            self.V = nn.Conv2d(dim, dim, 1)
            self.proj = nn.Conv2d(dim, dim, 1)
        if use_attn:
            self.QK = nn.Conv2d(dim, dim * 2, 1)
            self.attn = WindowAttention(dim, window_size, num_heads)
        self.apply(lambda m: self._init(m, network_depth))

    def _init(self, m: nn.Module, network_depth: int) -> None:
        if isinstance(m, nn.Conv2d):
            if m.weight.shape[0] == self.dim * 2:  # QK: plain Xavier-normal
                fan_in, fan_out = _calculate_fan_in_and_fan_out(m.weight)
                trunc_normal_(m.weight, std=math.sqrt(2.0 / float(fan_in + fan_out)))
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
            else:
                _scaled_init(m, network_depth)

    def _pad(self, x: Tensor, shift: bool) -> Tensor:
        """Reflect-pad to a multiple of the window (and by the shift on the top/left)."""
        h, w = x.shape[-2:]
        ws = self.window_size
        pad_h = (ws - h % ws) % ws
        pad_w = (ws - w % ws) % ws
        if shift:
            s = self.shift_size
            return F.pad(
                x, (s, (ws - s + pad_w) % ws, s, (ws - s + pad_h) % ws), mode="reflect"
            )
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        if self.conv_type == "DWConv" or self.use_attn:
            v = self.V(x)
        if self.use_attn:
            qkv = torch.cat([self.QK(x), v], dim=1)
            qkv = self._pad(qkv, self.shift_size > 0)
            ht, wt = qkv.shape[-2:]
            windows = _window_partition(qkv.permute(0, 2, 3, 1), self.window_size)
            out = _window_reverse(self.attn(windows), self.window_size, ht, wt)
            s = self.shift_size
            attn_out = out[:, s : s + h, s : s + w, :].permute(0, 3, 1, 2)
            if self.conv_type in ("Conv", "DWConv"):
                return self.proj(self.conv(v) + attn_out)
            return self.proj(attn_out)
        if self.conv_type == "Conv":
            return self.conv(x)
        return self.proj(self.conv(v))


class TransformerBlock(nn.Module):
    """RLN -> token mixer -> (rescale, rebias) -> residual; then 1x1 MLP residual."""

    def __init__(
        self,
        network_depth: int,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        shift_size: int,
        use_attn: bool,
        conv_type: str | None,
    ) -> None:
        super().__init__()
        self.use_attn = use_attn
        self.norm1: nn.Module = RLN(dim) if use_attn else nn.Identity()
        self.attn = Attention(
            network_depth, dim, num_heads, window_size, shift_size, use_attn, conv_type
        )
        self.norm2 = nn.Identity()  # mlp_norm=False in every official variant
        self.mlp = Mlp(network_depth, dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        if self.use_attn:
            x, rescale, rebias = self.norm1(x)
            x = self.attn(x) * rescale + rebias
        else:
            x = self.attn(x)
        x = identity + x
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """``depth`` blocks; the last ``attn_ratio * depth`` use attention; odd ones shift."""

    def __init__(
        self,
        network_depth: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        attn_ratio: float,
        conv_type: str | None,
    ) -> None:
        super().__init__()
        attn_depth = attn_ratio * depth
        self.blocks = nn.ModuleList(
            TransformerBlock(
                network_depth,
                dim,
                num_heads,
                mlp_ratio,
                window_size,
                0 if i % 2 == 0 else window_size // 2,
                i >= depth - attn_depth,
                conv_type,
            )
            for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


class PatchEmbed(nn.Module):
    """Strided conv (reflect padding) that embeds / downsamples."""

    def __init__(
        self, patch_size: int, in_chans: int, embed_dim: int, kernel_size: int | None = None
    ) -> None:
        super().__init__()
        k = kernel_size or patch_size
        self.proj = nn.Conv2d(
            in_chans, embed_dim, k, stride=patch_size,
            padding=(k - patch_size + 1) // 2, padding_mode="reflect",
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class PatchUnEmbed(nn.Module):
    """Conv then PixelShuffle that upsamples / projects to the output."""

    def __init__(
        self, patch_size: int, out_chans: int, embed_dim: int, kernel_size: int | None = None
    ) -> None:
        super().__init__()
        k = kernel_size or 1
        self.proj = nn.Sequential(
            nn.Conv2d(
                embed_dim, out_chans * patch_size**2, k, padding=k // 2, padding_mode="reflect"
            ),
            nn.PixelShuffle(patch_size),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class SKFusion(nn.Module):
    """Selective-kernel fusion of ``height`` feature maps with softmax channel weights."""

    def __init__(self, dim: int, height: int = 2, reduction: int = 8) -> None:
        super().__init__()
        self.height = height
        d = max(int(dim / reduction), 4)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, d, 1, bias=False), nn.ReLU(), nn.Conv2d(d, dim * height, 1, bias=False)
        )

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        b, c, h, w = feats[0].shape
        stacked = torch.cat(list(feats), dim=1).reshape(b, self.height, c, h, w)
        attn = self.mlp(self.avg_pool(stacked.sum(dim=1)))
        attn = torch.softmax(attn.reshape(b, self.height, c, 1, 1), dim=1)
        return (stacked * attn).sum(dim=1)


@store_hyperparameters()
class DehazeFormer(nn.Module):
    """DehazeFormer; the defaults are the B variant. Input and output in [-1, 1]."""

    hyperparameters: dict = {}
    io_range: tuple[float, float] = (-1.0, 1.0)
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def __init__(
        self,
        *,
        in_chans: int = 3,
        out_chans: int = 4,
        window_size: int = 8,
        embed_dims: Sequence[int] = (24, 48, 96, 48, 24),
        mlp_ratios: Sequence[float] = (2.0, 4.0, 4.0, 2.0, 2.0),
        depths: Sequence[int] = (16, 16, 16, 8, 8),
        num_heads: Sequence[int] = (2, 4, 6, 1, 1),
        attn_ratio: Sequence[float] = (1 / 4, 1 / 2, 3 / 4, 0.0, 0.0),
        conv_type: str | Sequence[str] = "DWConv",
    ) -> None:
        super().__init__()
        if embed_dims[1] != embed_dims[3] or embed_dims[0] != embed_dims[4]:
            raise ValueError("DehazeFormer needs embed_dims[1] == [3] and [0] == [4]")
        convs = [conv_type] * 5 if isinstance(conv_type, str) else list(conv_type)
        self.patch_size = 4
        self.window_size = window_size
        nd = sum(depths)

        def layer(i: int) -> BasicLayer:
            return BasicLayer(
                nd, embed_dims[i], depths[i], num_heads[i], mlp_ratios[i],
                window_size, attn_ratio[i], convs[i],
            )

        self.patch_embed = PatchEmbed(1, in_chans, embed_dims[0], kernel_size=3)
        self.layer1 = layer(0)
        self.patch_merge1 = PatchEmbed(2, embed_dims[0], embed_dims[1])
        self.skip1 = nn.Conv2d(embed_dims[0], embed_dims[0], 1)
        self.layer2 = layer(1)
        self.patch_merge2 = PatchEmbed(2, embed_dims[1], embed_dims[2])
        self.skip2 = nn.Conv2d(embed_dims[1], embed_dims[1], 1)
        self.layer3 = layer(2)
        self.patch_split1 = PatchUnEmbed(2, embed_dims[3], embed_dims[2])
        self.fusion1 = SKFusion(embed_dims[3])
        self.layer4 = layer(3)
        self.patch_split2 = PatchUnEmbed(2, embed_dims[4], embed_dims[3])
        self.fusion2 = SKFusion(embed_dims[4])
        self.layer5 = layer(4)
        self.patch_unembed = PatchUnEmbed(1, out_chans, embed_dims[4], kernel_size=3)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.layer1(self.patch_embed(x))
        skip1 = x
        x = self.layer2(self.patch_merge1(x))
        skip2 = x
        x = self.patch_split1(self.layer3(self.patch_merge2(x)))
        x = self.fusion1([x, self.skip2(skip2)]) + x
        x = self.patch_split2(self.layer4(x))
        x = self.fusion2([x, self.skip1(skip1)]) + x
        return self.patch_unembed(self.layer5(x))

    def forward(self, x: Tensor) -> Tensor:
        """x in [-1, 1] -> ``K * x - B + x`` (cropped back to the input size)."""
        h, w = x.shape[-2:]
        ph = (self.patch_size - h % self.patch_size) % self.patch_size
        pw = (self.patch_size - w % self.patch_size) % self.patch_size
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        feat = self.forward_features(x)
        k, b = torch.split(feat, (1, feat.shape[1] - 1), dim=1)
        x = k * x - b + x
        return x[:, :, :h, :w]


def _variant_name(depths: Sequence[int], dims: Sequence[int], conv_type: str) -> str | None:
    for name, cfg in VARIANTS.items():
        if (
            tuple(cfg["depths"]) == tuple(depths)  # type: ignore[arg-type]
            and tuple(cfg.get("embed_dims", _DEFAULT_DIMS)) == tuple(dims)  # type: ignore[arg-type]
            and cfg["conv_type"] == conv_type
        ):
            return name
    return None


class DehazeFormerArch(Architecture[DehazeFormer]):
    """spandrel detection/loading for DehazeFormer checkpoints (T/S/B/D/W/M/L)."""

    def __init__(self) -> None:
        super().__init__(
            id="DehazeFormer",
            detect=KeyCondition.has_all(
                "patch_embed.proj.weight",
                "layer1.blocks.0.mlp.mlp.0.weight",
                "layer3.blocks.0.mlp.mlp.0.weight",
                "layer5.blocks.0.mlp.mlp.2.weight",
                "patch_merge1.proj.weight",
                "patch_merge2.proj.weight",
                "skip1.weight",
                "skip2.weight",
                "patch_split1.proj.0.weight",
                "patch_split2.proj.0.weight",
                "fusion1.mlp.0.weight",
                "fusion2.mlp.2.weight",
                "patch_unembed.proj.0.weight",
            ),
        )

    def load(self, state_dict: dict[str, Tensor]) -> ImageModelDescriptor[DehazeFormer]:
        """Infer dims, depths, heads, attention placement and conv type from keys/shapes."""
        in_chans = int(state_dict["patch_embed.proj.weight"].shape[1])
        out_chans = int(state_dict["patch_unembed.proj.0.weight"].shape[0])
        conv_type = "Conv" if "layer1.blocks.0.attn.conv.0.weight" in state_dict else "DWConv"
        dims: list[int] = []
        depths: list[int] = []
        mlp_ratios: list[float] = []
        heads: list[int] = []
        ratios: list[float] = []
        window_size = 8
        for s in range(1, 6):
            pre = f"layer{s}.blocks"
            depth = get_seq_len(state_dict, pre)
            hidden, dim = state_dict[f"{pre}.0.mlp.mlp.0.weight"].shape[:2]
            n_attn = sum(f"{pre}.{i}.attn.QK.weight" in state_dict for i in range(depth))
            h = 1
            if n_attn:
                h = int(state_dict[f"{pre}.{depth - 1}.attn.attn.meta.2.weight"].shape[0])
                n_pos = state_dict[f"{pre}.{depth - 1}.attn.attn.relative_positions"].shape[0]
                window_size = math.isqrt(int(n_pos))
            dims.append(int(dim))
            depths.append(depth)
            mlp_ratios.append(int(hidden) / int(dim))
            heads.append(h)
            ratios.append(n_attn / depth)
        model = DehazeFormer(
            in_chans=in_chans,
            out_chans=out_chans,
            window_size=window_size,
            embed_dims=tuple(dims),
            mlp_ratios=tuple(mlp_ratios),
            depths=tuple(depths),
            num_heads=tuple(heads),
            attn_ratio=tuple(ratios),
            conv_type=conv_type,
        )
        variant = _variant_name(depths, dims, conv_type)
        tags = [f"dehazeformer-{variant}"] if variant else []
        tags.append(f"{dims[0]}dim")

        call = range_call_fn(*model.io_range)  # [-1, 1]

        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="Restoration",
            tags=tags,
            supports_half=False,
            supports_bfloat16=True,
            scale=1,
            input_channels=in_chans,
            output_channels=out_chans - 1,
            # the third stage (1/4 resolution) must be larger than the window's
            # reflect padding: 32 pixels works for window 8.
            size_requirements=SizeRequirements(minimum=4 * window_size),
            call_fn=call,
        )


def build_dehazeformer(variant: str = "b", **overrides: object) -> DehazeFormer:
    """Build an official variant ("t", "s", "b", "d", "w", "m", "l"), optionally overriding fields."""
    key = variant.lower().removeprefix("dehazeformer-").removeprefix("dehazeformer_")
    if key not in VARIANTS:
        raise ValueError(f"unknown DehazeFormer variant {variant!r}; use one of {list(VARIANTS)}")
    cfg: dict[str, object] = {**VARIANTS[key], **overrides}
    return DehazeFormer(**cfg)  # type: ignore[arg-type]


__all__ = ["DehazeFormer", "DehazeFormerArch", "VARIANTS", "build_dehazeformer"]
