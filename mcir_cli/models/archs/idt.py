"""IDT, the Image De-raining Transformer (Xiao et al., TPAMI 2022), in the layout of
jiexiaou/IDT (``model.py`` at commit d72510c, MIT).

A U-shaped transformer on 128x128 patches: a 3x3 conv embeds the image in
``embed_dim`` channels, four encoder stages halve the resolution (4x4 stride-2 convs),
a bottleneck works at 1/16, four decoder stages double it back (2x2 transposed convs)
and concatenate the encoder features; a 3x3 conv gives the residual, ``x + residual``.

Every stage holds a few *window blocks* (LayerNorm; self-attention inside 8x8 windows
with a learned relative-position bias, plus a "position" branch: the values seen as a
map, through a depth-wise then a head-grouped 1x1 conv; LayerNorm; LeFF, a feed-forward
with a 3x3 depth-wise conv in the middle) and, except the bottleneck, one *spatial
block*: the feature map is cut into 8x8 windows and, per channel, each window's 64
pixels are one token; attention runs across the windows of the stage, with a bias table
whose offsets are clamped to +-(k_bound - 1). Two facts of the official code are kept
because the released weights depend on them: the window blocks' bias tables are always
15 x 15 (k_bound 8), and the spatial block adds its output to the (raster-ordered)
shortcut in window-major order (window index, then pixel inside the window).

Configuration: the one the repository trains and tests (``train_derain.py``,
``test.py``, ``test_full_size.py`` defaults): embed_dim 32, num_heads (1, 2, 4, 8, 16,
16, 8, 4, 2), win_size 8, mlp_ratio 4, qkv_bias on, img_size 128: 16,416,463
parameters. The number of window blocks per stage (3, 3, 2, 2, 1, 1, 2, 2, 3) and the
spatial blocks' k_bound (16, 8, 4, 2, -, 2, 4, 8, 16) are fixed in ``model.py``; its
``depths`` (3, 3, 2, 2, 1, 1, 2, 2, 3) only spread the stochastic-depth rates (0 to 0.1).
From a state dict the loader reads in_chans, embed_dim, the heads per stage, mlp_ratio,
qkv_bias and img_size (64 or 128, from the spatial blocks' position-conv kernels);
win_size (8) leaves no trace in the weights.

Input size: exactly ``img_size`` x ``img_size``. The spatial blocks' bias index and
position conv are built for the number of windows at that size, so no other size runs
(the repository tiles full images in 128 x 128 patches, ``test_full_size.py``). The
class attribute ``fixed_size`` says so; mcir's inference tiles whole images in tiles of
exactly that size (``inference.restore``).

Keys: ``input_proj.proj.0``, ``{encoderlayer_0..3, bottle, decoderlayer_0..3}.blocks.{i}``
with ``norm1``, ``norm2``, ``attn.relative_position_bias_table``,
``attn.Position_Extract.{0,1}``, ``attn.qkv.{to_q,to_kv}``, ``attn.proj``,
``mlp.{linear1.0,dwconv.0,linear2.0}`` (spatial blocks: no ``norm1``),
``dowsample_{0..3}.conv.0`` (sic), ``upsample_{0..3}.deconv.0``, ``output_proj.proj.0``.
Official checkpoints are ``module.``-prefixed (DataParallel); images in [0, 1].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from spandrel import Architecture, ImageModelDescriptor, SizeRequirements
from spandrel.util import KeyCondition, get_seq_len, store_hyperparameters
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

# model.py: (window blocks, spatial-block k_bound or None) per stage, in forward order.
STAGES: dict[str, tuple[int, int | None]] = {
    "encoderlayer_0": (3, 16),
    "encoderlayer_1": (3, 8),
    "encoderlayer_2": (2, 4),
    "encoderlayer_3": (2, 2),
    "bottle": (1, None),
    "decoderlayer_0": (1, 2),
    "decoderlayer_1": (2, 4),
    "decoderlayer_2": (2, 8),
    "decoderlayer_3": (3, 16),
}
SPATIAL_PATCH = 8  # the spatial blocks' window: model.py never passes win_size to them
WINDOW_K_BOUND = 8  # the window blocks' bias table: (2 * 8 - 1)^2 rows at every stage
DEFAULT_HEADS = (1, 2, 4, 8, 16, 16, 8, 4, 2)
DEFAULT_DEPTHS = (3, 3, 2, 2, 1, 1, 2, 2, 3)


def _to_map(tokens: Tensor) -> Tensor:
    """B, H*W, C tokens of a square map -> B, C, H, W."""
    b, n, c = tokens.shape
    side = math.isqrt(n)
    return tokens.transpose(1, 2).reshape(b, c, side, side)


def _to_tokens(fmap: Tensor) -> Tensor:
    """B, C, H, W -> B, H*W, C."""
    return fmap.flatten(2).transpose(1, 2)


def _patch_tokens(fmap: Tensor, size: int) -> Tensor:
    """B, C, H, W -> B, C, nP, size*size: the non-overlapping size x size patches in
    raster order, each patch's pixels in raster order."""
    b, c = fmap.shape[:2]
    cols = F.unfold(fmap, size, stride=size)  # B, C*size*size, nP
    return cols.reshape(b, c, size * size, -1).transpose(2, 3)


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples with probability p, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class QKVProjection(nn.Module):
    """Linear queries, and keys, values and a second value set for the position branch."""

    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(dim, dim * 3, bias=bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        q = self.to_q(x).reshape(b, n, h, d).transpose(1, 2)
        k, v, v_pos = self.to_kv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        side = math.isqrt(n)
        return q, k, v, v_pos.transpose(-1, -2).reshape(b, c, side, side)


class PositionAttention(nn.Module):
    """Multi-head self-attention over a side x side grid of tokens, with a relative-
    position bias (offsets clamped to +-(k_bound - 1)) and a conv branch on the values."""

    def __init__(self, dim: int, side: int, heads: int, k_bound: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"IDT attention: {dim} channels do not split into {heads} heads")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        span = 2 * k_bound - 1
        self.relative_position_bias_table = nn.Parameter(torch.zeros(span * span, heads))
        reach = min(side - 1, 2)
        kernel = 2 * reach + 1
        self.Position_Extract = nn.Sequential(
            nn.Conv2d(dim, dim, kernel, padding=reach, groups=dim),
            nn.Conv2d(dim, dim, 1, groups=heads),
        )
        coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"))
        flat = coords.flatten(1)
        rel = (flat[:, :, None] - flat[:, None, :]).clamp(-k_bound + 1, k_bound - 1) + k_bound - 1
        self.register_buffer("relative_position_index", rel[0] * span + rel[1], persistent=False)
        self.qkv = QKVProjection(dim, heads, qkv_bias)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v, v_map = self.qkv(x)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + bias.reshape(n, n, self.heads).permute(2, 0, 1).unsqueeze(0)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        position = self.Position_Extract(v_map).reshape(b, c, n).transpose(1, 2)
        return self.proj(out + position)


class LeFF(nn.Module):
    """Locally-enhanced feed-forward: linear + GELU, 3x3 depth-wise conv + GELU with a
    skip, linear; tokens are read as a square map for the conv."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.dwconv = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.GELU())
        self.linear2 = nn.Sequential(nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        fmap = _to_map(self.linear1(x))
        return self.linear2(_to_tokens(self.dwconv(fmap) + fmap))


class WindowBlock(nn.Module):
    """LayerNorm -> attention inside win x win windows -> residual; LayerNorm -> LeFF ->
    residual. A stage no larger than the window is one window."""

    def __init__(
        self, dim: int, resolution: int, heads: int, win_size: int, mlp_ratio: float,
        qkv_bias: bool, drop_path: float,
    ) -> None:
        super().__init__()
        self.win_size = min(win_size, resolution)
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PositionAttention(dim, self.win_size, heads, WINDOW_K_BOUND, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LeFF(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        fmap = _to_map(self.norm1(x))
        side, ws = fmap.shape[-1], self.win_size
        windows = _patch_tokens(fmap, ws).permute(0, 2, 3, 1).reshape(-1, ws * ws, c)
        out = self.attn(windows).reshape(b, -1, ws * ws, c).permute(0, 3, 2, 1)
        out = F.fold(out.reshape(b, c * ws * ws, -1), (side, side), ws, stride=ws)
        x = x + _drop_path(_to_tokens(out), self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class SpatialBlock(nn.Module):
    """Attention across the 8x8 windows of a map (per channel, a window's 64 pixels are
    one token) -> residual in window-major order (as the official code); LayerNorm ->
    LeFF (hidden width 64 * mlp_ratio, whatever the channel count) -> residual."""

    def __init__(
        self, channels: int, resolution: int, heads: int, mlp_ratio: float, k_bound: int,
        qkv_bias: bool, drop_path: float,
    ) -> None:
        super().__init__()
        dim = SPATIAL_PATCH * SPATIAL_PATCH
        self.drop_path = drop_path
        self.attn = PositionAttention(dim, resolution // SPATIAL_PATCH, heads, k_bound, qkv_bias)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = LeFF(channels, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        patches = _patch_tokens(_to_map(x), SPATIAL_PATCH)  # B, C, nP, 64
        out = self.attn(patches.reshape(b * c, -1, SPATIAL_PATCH * SPATIAL_PATCH))
        # token t = window * 64 + pixel, added to the raster-ordered shortcut (official)
        x = x + _drop_path(out.reshape(b, c, n).transpose(1, 2), self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class IDTStage(nn.Module):
    """``n_window`` window blocks, then one spatial block unless ``k_bound`` is None."""

    def __init__(
        self, dim: int, resolution: int, heads: int, win_size: int, mlp_ratio: float,
        qkv_bias: bool, n_window: int, k_bound: int | None, drop_path: tuple[float, float],
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            WindowBlock(dim, resolution, heads, win_size, mlp_ratio, qkv_bias, drop_path[0])
            for _ in range(n_window)
        ]
        if k_bound is not None:
            blocks.append(
                SpatialBlock(dim, resolution, heads, mlp_ratio, k_bound, qkv_bias, drop_path[1])
            )
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class _Holder(nn.Module):
    """Layers held as ``<attr>`` (an nn.Sequential), for the official key names."""

    def __init__(self, attr: str, *layers: nn.Module) -> None:
        super().__init__()
        self._attr = attr
        self.add_module(attr, nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self, self._attr)(x)


def _drop_rates(depths: Sequence[int], rate: float) -> list[tuple[float, float]]:
    """(window blocks, spatial block) stochastic-depth rate per stage, as model.py spreads
    them: linear 0..rate over the encoder's depths, reversed for the decoder, the rate
    itself in the bottleneck; a stage's window blocks take its first, its spatial block
    its last rate."""
    enc = [float(r) for r in torch.linspace(0, rate, sum(depths[:4]))]
    dec = enc[::-1]
    rates = []
    for i in range(4):
        part = enc[sum(depths[:i]) : sum(depths[: i + 1])]
        rates.append((part[0], part[-1]))
    rates.append((rate, rate))
    for j in range(4):
        part = dec[sum(depths[5 : 5 + j]) : sum(depths[5 : 6 + j])]
        rates.append((part[0], part[-1]))
    return rates


@store_hyperparameters()
class IDT(nn.Module):
    """IDT; the defaults are the released configuration (16,416,463 parameters).
    Input and output in [0, 1], exactly ``img_size`` x ``img_size``."""

    hyperparameters: dict = {}
    io_range: tuple[float, float] = (0.0, 1.0)
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    fixed_size: int = 128  # the only input size (img_size); whole images are tiled

    def __init__(
        self,
        *,
        in_chans: int = 3,
        embed_dim: int = 32,
        num_heads: Sequence[int] = DEFAULT_HEADS,
        win_size: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        img_size: int = 128,
        depths: Sequence[int] = DEFAULT_DEPTHS,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        if len(num_heads) != 9 or len(depths) != 9 or min(depths) < 1:
            raise ValueError("IDT needs 9 num_heads and 9 positive depths (4 down, bottleneck, 4 up)")
        if not (img_size == 64 or (img_size > 0 and img_size % 128 == 0)):
            raise ValueError(f"IDT img_size must be 64 or a multiple of 128 (got {img_size})")
        self.img_size = img_size
        self.fixed_size = img_size
        e = embed_dim
        dims = [e, 2 * e, 4 * e, 8 * e, 16 * e, 16 * e, 8 * e, 4 * e, 2 * e]
        sides = [img_size >> s for s in (0, 1, 2, 3, 4, 3, 2, 1, 0)]
        rates = _drop_rates(depths, drop_path_rate)

        self.input_proj = _Holder("proj", nn.Conv2d(in_chans, e, 3, padding=1), nn.LeakyReLU(inplace=True))
        for i, (name, (n_window, k_bound)) in enumerate(STAGES.items()):
            stage = IDTStage(
                dims[i], sides[i], num_heads[i], win_size, mlp_ratio, qkv_bias,
                n_window, k_bound, rates[i],
            )
            self.add_module(name, stage)
        for i in range(4):
            c = e << i
            self.add_module(f"dowsample_{i}", _Holder("conv", nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)))
        for i in range(4):  # from the bottleneck / previous decoder stage, to the skip's width
            self.add_module(
                f"upsample_{i}", _Holder("deconv", nn.ConvTranspose2d(dims[4 + i], e << (3 - i), 2, stride=2))
            )
        self.output_proj = _Holder("proj", nn.Conv2d(2 * e, in_chans, 3, padding=1))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.weight, 1.0)
            nn.init.constant_(m.bias, 0.0)

    def forward(self, x: Tensor) -> Tensor:
        s = self.img_size
        if tuple(x.shape[-2:]) != (s, s):
            raise ValueError(
                f"IDT takes exactly {s}x{s} inputs (got {x.shape[-2]}x{x.shape[-1]}); tile larger images"
            )
        tokens = _to_tokens(self.input_proj(x))
        skips = []
        for i in range(4):
            tokens = getattr(self, f"encoderlayer_{i}")(tokens)
            skips.append(tokens)
            tokens = _to_tokens(getattr(self, f"dowsample_{i}")(_to_map(tokens)))
        tokens = self.bottle(tokens)
        for i in range(4):
            up = _to_tokens(getattr(self, f"upsample_{i}")(_to_map(tokens)))
            tokens = getattr(self, f"decoderlayer_{i}")(torch.cat([up, skips[3 - i]], dim=-1))
        return x + self.output_proj(_to_map(tokens))


def _img_size_from(state_dict: dict[str, Tensor]) -> int:
    """img_size from the kernel of encoderlayer_3's spatial-block position conv: that
    stage has img_size / 64 windows a side (kernel 3 for 2 windows, 1 for 1)."""
    n_window = get_seq_len(state_dict, "encoderlayer_3.blocks") - 1
    kernel = int(state_dict[f"encoderlayer_3.blocks.{n_window}.attn.Position_Extract.0.weight"].shape[-1])
    sizes = {3: 128, 1: 64}
    if kernel not in sizes:
        raise ValueError("IDT built for inputs larger than 128 x 128: its size cannot be read from the weights")
    return sizes[kernel]


class IDTArch(Architecture[IDT]):
    """spandrel detection/loading for IDT checkpoints (official layout)."""

    def __init__(self) -> None:
        super().__init__(
            id="IDT",
            detect=KeyCondition.has_all(
                "input_proj.proj.0.weight",
                "encoderlayer_0.blocks.0.norm1.weight",
                "encoderlayer_0.blocks.0.attn.relative_position_bias_table",
                "encoderlayer_0.blocks.0.attn.Position_Extract.0.weight",
                "encoderlayer_0.blocks.0.attn.qkv.to_kv.weight",
                "encoderlayer_0.blocks.0.mlp.dwconv.0.weight",
                "encoderlayer_3.blocks.0.attn.Position_Extract.1.weight",
                "dowsample_0.conv.0.weight",
                "dowsample_3.conv.0.weight",
                "bottle.blocks.0.attn.Position_Extract.0.weight",
                "upsample_0.deconv.0.weight",
                "upsample_3.deconv.0.weight",
                "decoderlayer_3.blocks.0.attn.Position_Extract.0.weight",
                "output_proj.proj.0.weight",
            ),
        )

    def load(self, state_dict: dict[str, Tensor]) -> ImageModelDescriptor[IDT]:
        """Infer channels, width, heads per stage, MLP ratio, qkv bias and img_size."""
        embed_dim, in_chans = (int(n) for n in state_dict["input_proj.proj.0.weight"].shape[:2])
        heads = tuple(
            int(state_dict[f"{name}.blocks.0.attn.relative_position_bias_table"].shape[1])
            for name in STAGES
        )
        hidden = int(state_dict["encoderlayer_0.blocks.0.mlp.linear1.0.weight"].shape[0])
        img_size = _img_size_from(state_dict)
        model = IDT(
            in_chans=in_chans,
            embed_dim=embed_dim,
            num_heads=heads,
            mlp_ratio=hidden / embed_dim,
            qkv_bias="encoderlayer_0.blocks.0.attn.qkv.to_q.bias" in state_dict,
            img_size=img_size,
        )
        tags = [f"{embed_dim}dim", f"{img_size}px"]
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
            output_channels=in_chans,
            # exactly img_size x img_size; spandrel cannot say "exactly": this is the
            # nearest statement (an image up to that size is padded to it), and mcir
            # tiles larger images by the model's ``fixed_size``
            size_requirements=SizeRequirements(minimum=img_size, multiple_of=img_size, square=True),
        )


def build_idt(**kwargs: object) -> IDT:
    """Build an IDT from keyword hyper-parameters (defaults: the released model)."""
    kwargs.pop("scale", None)
    return IDT(**kwargs)  # type: ignore[arg-type]


__all__ = ["IDT", "IDTArch", "STAGES", "build_idt"]
