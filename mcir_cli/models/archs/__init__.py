"""Architectures spandrel lacks, in their official state-dict layouts.

``register()`` adds them to ``spandrel.MAIN_REGISTRY`` so that ``spandrel.ModelLoader``
detects them from a bare state dict. ``BUILDERS`` maps each architecture id to a
constructor taking keyword hyper-parameters (for presets that train from scratch).

Every model class carries its I/O convention as class attributes:
``io_range`` (the value range of input and output images: (0, 255) for EDSR and for
RFDN's published weights, (-1, 1) for DehazeFormer, (0, 1) otherwise) and ``input_mean`` / ``input_std`` (per-channel input
normalisation applied outside the network, only FFA-Net; its output is read as [0, 1]).
The spandrel descriptors' ``call_fn`` applies the same conventions, so ``descriptor(x)``
takes and returns [0, 1] images; ``descriptor.model`` is the raw network.
"""

from __future__ import annotations

import threading
from typing import Callable

from spandrel import MAIN_REGISTRY, Architecture, ArchSupport
from torch import nn

from .aodnet import AODNet, AODNetArch, build_aodnet
from .dehazeformer import DehazeFormer, DehazeFormerArch, build_dehazeformer
from .edsr import EDSR, EDSRArch, build_edsr
from .ffanet import FFANet, FFANetArch, build_ffanet
from .idt import IDT, IDTArch, build_idt
from .imdn import IMDN, IMDNArch, build_imdn
from .rfdn import RFDN, RFDNArch, build_rfdn

ARCHITECTURES: tuple[type[Architecture], ...] = (
    EDSRArch,
    FFANetArch,
    DehazeFormerArch,
    IMDNArch,
    RFDNArch,
    AODNetArch,
    IDTArch,
)

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "EDSR": build_edsr,
    "FFANet": build_ffanet,
    "DehazeFormer": build_dehazeformer,
    "IMDN": build_imdn,
    "RFDN": build_rfdn,
    "AODNet": build_aodnet,
    "IDT": build_idt,
}

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "EDSR": EDSR,
    "FFANet": FFANet,
    "DehazeFormer": DehazeFormer,
    "IMDN": IMDN,
    "RFDN": RFDN,
    "AODNet": AODNet,
    "IDT": IDT,
}

_lock = threading.Lock()


def register() -> None:
    """Add the architectures to spandrel's MAIN_REGISTRY (idempotent, thread-safe)."""
    with _lock:
        missing = [a() for a in ARCHITECTURES if a().id not in MAIN_REGISTRY]
        if missing:
            MAIN_REGISTRY.add(
                *(ArchSupport.from_architecture(a) for a in missing), ignore_duplicates=True
            )


__all__ = [
    "AODNet",
    "ARCHITECTURES",
    "BUILDERS",
    "DehazeFormer",
    "EDSR",
    "FFANet",
    "IDT",
    "IMDN",
    "MODEL_CLASSES",
    "RFDN",
    "register",
]
