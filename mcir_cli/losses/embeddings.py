"""Frozen feature embeddings of the SPN loss, by name: VGG16 / VGG19 taps (torchvision's
ImageNet weights, read without running pickled code, or random) and pixels; each says what
it is (`description`) and where its weights came from.

All images are float tensors in [0, 1], NCHW.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcir_cli.choices import EMBEDDINGS
from mcir_cli.errors import McirError

log = logging.getLogger(__name__)

# kind -> (features index of each tapped ReLU, its name, its weight)
VGG_LAYERS: dict[str, tuple[tuple[int, ...], tuple[str, ...], tuple[float, ...]]] = {
    "vgg16": ((3, 8, 15), ("relu1_2", "relu2_2", "relu3_3"), (0.2, 0.3, 0.5)),
    "vgg19": (
        (1, 6, 11, 20, 29),
        ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0),
    ),
}
_VGG_CFG = {"vgg16": "D", "vgg19": "E"}


def _vgg_weights_enum(kind: str) -> Any:
    from torchvision.models import VGG16_Weights, VGG19_Weights

    return {"vgg16": VGG16_Weights, "vgg19": VGG19_Weights}[kind].IMAGENET1K_V1


def vgg_weight_file_name(kind: str) -> str:
    """torchvision's file name for the ImageNet weights, e.g. vgg16-397923af.pth."""
    return _vgg_weights_enum(kind).url.rsplit("/", 1)[-1]


def vgg_cache_path(kind: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / vgg_weight_file_name(kind)


def download_vgg_state_dict(kind: str) -> dict[str, Tensor]:
    """torchvision's ImageNet weights, downloaded into torch.hub's cache and loaded there
    without running pickled code: `WeightsEnum.get_state_dict` loads the download with
    `weights_only=False`, so mcir calls torch.hub itself, and checks the file's sha256
    against the prefix its name carries (vgg16-397923af.pth)."""
    cached = vgg_cache_path(kind)
    said = io.StringIO()  # torch.hub prints "Downloading: ..." to stdout even offline: logged instead
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            return torch.hub.load_state_dict_from_url(
                _vgg_weights_enum(kind).url, model_dir=str(cached.parent), map_location="cpu",
                progress=False, check_hash=True, file_name=cached.name, weights_only=True,
            )
    finally:
        if said.getvalue().strip():
            log.info("%s", said.getvalue().strip())


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise McirError("embedding weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except McirError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader error is the user's file
        raise McirError(f"cannot read embedding weights ({type(exc).__name__}: {exc})", path) from exc
    for wrapper in ("state_dict", "model", "params"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise McirError(f"embedding weights are a {type(sd).__name__}, not a state dict", path)
    return sd


class VGGEmbedding(nn.Module):
    """Frozen VGG feature taps (ImageNet-normalised inside; input in [0, 1]).

    vgg16: relu1_2, relu2_2, relu3_3 with weights 0.2 / 0.3 / 0.5 (MCIR authors' config);
    vgg19: relu1_1 .. relu5_1 with weights 1/32, 1/16, 1/8, 1/4, 1 (AECR-Net).
    Only `features` up to the deepest tap are kept. ReLUs are not in place.
    """

    def __init__(
        self,
        kind: str = "vgg16",
        weights: str | Path | None = None,
        init: str = "pretrained",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if kind not in VGG_LAYERS:
            raise McirError(f"unknown VGG embedding {kind!r}; choose vgg16 or vgg19")
        if init not in ("pretrained", "random"):
            raise McirError(f"unknown embedding init {init!r}; choose pretrained or random")
        from torchvision.models.vgg import cfgs, make_layers

        self.kind = kind
        self.taps, self.layer_names, weights_l = VGG_LAYERS[kind]
        self.layer_weights = list(weights_l)
        keep = max(self.taps) + 1

        def build() -> nn.Sequential:
            feats = make_layers(cfgs[_VGG_CFG[kind]], batch_norm=False)[:keep]
            for m in feats:  # torchvision VGG's own init
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.constant_(m.bias, 0)
            return feats

        layers = ", ".join(self.layer_names).replace(", ", "/")
        if init == "random":
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(int(seed))
                self.features = build()
            self.source = None
            self.description = (
                f"{kind.upper()} {layers} — RANDOM weights (seed {seed}), not pretrained: "
                "the SPN term is not the paper's"
            )
        else:
            with torch.random.fork_rng(devices=[]):
                self.features = build()  # values are overwritten by the load below
            sd, source = self._pretrained_state_dict(kind, weights)
            self._load(sd, source)
            self.source = source
            self.description = f"{kind.upper()} {layers} — ImageNet weights from {source}"
        for m in self.features:
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _pretrained_state_dict(kind: str, weights: str | Path | None) -> tuple[dict, str]:
        if weights is not None:
            path = Path(weights).expanduser()
            return _read_state_dict(path), str(path)
        cached = vgg_cache_path(kind)
        if cached.is_file():
            return _read_state_dict(cached), str(cached)
        enum = _vgg_weights_enum(kind)
        old_timeout = socket.getdefaulttimeout()
        try:
            socket.setdefaulttimeout(30)
            sd = download_vgg_state_dict(kind)
            return sd, f"{enum.url} (downloaded to {cached})"
        except Exception as exc:  # noqa: BLE001 - offline, proxy, corrupt download ...
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            socket.setdefaulttimeout(old_timeout)
        name = vgg_weight_file_name(kind)
        raise McirError(
            f"the {kind.upper()} ImageNet weights for the SPN embedding are not available "
            f"(download failed: {reason[:200]}). Put torchvision's {name} ({enum.url}) at "
            f"{cached}, or pass --embedding-weights FILE (a torchvision {kind} state dict, "
            f".pth or .safetensors), or use --embedding-init random (not the paper's loss)"
        )

    def _load(self, sd: dict[str, Tensor], source: str) -> None:
        keep = len(self.features)
        own: dict[str, Tensor] = {}
        for k, v in sd.items():
            key = k[len("features."):] if k.startswith("features.") else k
            head = key.split(".", 1)[0]
            if head.isdigit() and int(head) < keep:
                own[key] = v
        expected = self.features.state_dict()
        missing = sorted(set(expected) - set(own))
        if missing:
            raise McirError(
                f"not a torchvision {self.kind} state dict: missing {', '.join(missing[:4])}"
                f"{' ...' if len(missing) > 4 else ''} (expected keys like features.0.weight)",
                source,
            )
        for k, v in expected.items():
            if own[k].shape != v.shape:
                raise McirError(
                    f"not a torchvision {self.kind} state dict: {k} has shape "
                    f"{tuple(own[k].shape)}, expected {tuple(v.shape)}",
                    source,
                )
        self.features.load_state_dict({k: own[k].float() for k in expected}, strict=True)

    def train(self, mode: bool = True) -> VGGEmbedding:  # always frozen, always eval
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out: list[Tensor] = []
        last = max(self.taps)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
            if i == last:
                break
        return out


class PixelEmbedding(nn.Module):
    """Identity embedding: the SPN term becomes an L1 distance in pixel space."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_weights = [1.0]
        self.layer_names = ["pixels"]
        self.description = "pixels (L1 in image space)"

    def forward(self, x: Tensor) -> list[Tensor]:
        return [x]


def make_embedding(
    name: str,
    weights: str | Path | None = None,
    init: str = "pretrained",
    seed: int = 0,
) -> nn.Module:
    """Embedding by name: vgg16, vgg19 or pixel. Has .layer_weights and .description."""
    key = str(name).lower()
    if key in VGG_LAYERS:
        return VGGEmbedding(key, weights=weights, init=init, seed=seed)
    if key == "pixel":
        return PixelEmbedding()
    raise McirError(f"unknown embedding {name!r}; choose {', '.join(EMBEDDINGS)}")
