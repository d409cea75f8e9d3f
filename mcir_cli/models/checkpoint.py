"""Reading and writing checkpoints: the one place that knows about file formats.

Reading never executes pickled code (`torch.load(weights_only=True)` or safetensors).
Writing puts retrained weights back in the *input's* wrapper, prefix and key naming, so
the original repository, BasicSR and spandrel load the result unchanged; and as
safetensors with metadata.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mcir_cli._helpers.fsutil import atomic_torch_save, atomic_write
from mcir_cli.errors import McirError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".pk", ".pkl", ".safetensors", ".bin")

# Wrapper keys, in order of preference. EMA weights are what the authors evaluate.
WRAPPER_KEYS = (
    "params_ema",
    "params-ema",
    "g_ema",
    "params",
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "netG",
    "generator",
)
EMA_KEYS = frozenset({"params_ema", "params-ema", "g_ema"})
PREFIXES = ("module.", "netG.", "_orig_mod.")


@dataclass
class Checkpoint:
    """A checkpoint as read from disk: the bare state dict and how it was wrapped."""

    path: Path | None
    state_dict: dict[str, Tensor]
    wrapper_keys: tuple[str, ...] = ()  # path of keys down to the weights, () = flat
    prefix: str = ""  # stripped from every key ("module." from DataParallel)
    format: str = "pth"  # "pth" (torch.save zip) or "safetensors"
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors metadata
    top_level: dict[str, Any] = field(default_factory=dict)  # scalars kept beside the weights
    sibling_weight_keys: tuple[str, ...] = ()  # e.g. "params" next to "params_ema"

    @property
    def is_ema(self) -> bool:
        return bool(self.wrapper_keys) and self.wrapper_keys[-1] in EMA_KEYS

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.state_dict.values() if t.is_floating_point())

    def describe_wrapper(self) -> str:
        inner = "".join(f"[{k!r}]" for k in self.wrapper_keys) or "flat state dict"
        return inner + (f", prefix {self.prefix!r} stripped" if self.prefix else "")


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


# what torch appends to its reader errors, for developers, not for the user's one line
_TORCH_BOILERPLATE = re.compile(r"\s+(?:This is an internal miniz error|\(Could this error message be improved)")


def _torch_load(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise McirError(f"cannot read the checkpoint ({exc.strerror or type(exc).__name__})", path) from None
    # torch.save writes a zip archive (PK..), older torch a pickle (protocol byte 0x80)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        kind = "a text file" if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head) else f"bytes {head!r}"
        raise McirError(f"not a torch checkpoint (it starts like {kind}, not a torch zip archive or pickle)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "global" not in text.lower():  # garbage, not a pickle that references code
            detail = next((l.strip() for l in text.splitlines() if l.strip().startswith("Unsupported")), "")
            raise McirError(f"not a torch checkpoint ({detail or text.splitlines()[0]})", path) from None
        reason = str(exc).splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "global" in line), "")
        raise McirError(
            "the checkpoint needs arbitrary code to unpickle, and mcir never executes "
            f"pickled code ({detail.strip() or 'weights_only load refused'}); re-save it as a "
            "plain state dict (torch.save(model.state_dict(), ...)) or as .safetensors",
            path,
        ) from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise McirError(f"truncated or corrupt checkpoint ({type(exc).__name__})", path) from None
    except OSError as exc:  # torch's zip reader on garbage after "PK\x03\x04": EINVAL; a failing disk: EIO
        kind = "a damaged zip archive: " if head.startswith(b"PK") else ""
        raise McirError(f"not a readable torch checkpoint ({kind}{exc.strerror or type(exc).__name__})", path) from None
    except (RuntimeError, KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        # a damaged file: the legacy unpickler fails in many ways on garbage bytes
        first = str(exc).splitlines()[0] if str(exc) else ""
        first = _TORCH_BOILERPLATE.split(first)[0].rstrip(" .")
        raise McirError(f"not a readable torch checkpoint ({type(exc).__name__}: {first[:160]})", path) from None


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Tensor], tuple[str, ...], dict, tuple]:
    """Descend through known wrapper keys until a flat {name: tensor} mapping is found."""
    keys: tuple[str, ...] = ()
    top_level: dict[str, Any] = {}
    siblings: tuple[str, ...] = ()
    for _ in range(4):
        if _is_state_dict(obj):
            return dict(obj), keys, top_level, siblings
        if not isinstance(obj, Mapping):
            break
        chosen = next((k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if chosen is None:
            break
        if not keys:
            top_level = {
                k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool)) and k != chosen
            }
            siblings = tuple(
                k for k in WRAPPER_KEYS if k != chosen and k in obj and _is_state_dict(obj[k])
            )
        keys = keys + (chosen,)
        obj = obj[chosen]
    found = ", ".join(sorted(map(str, obj.keys())))[:200] if isinstance(obj, Mapping) else type(obj).__name__
    raise McirError(f"no state dict found in the checkpoint (top-level entries: {found})", path)


def _strip_prefix(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    prefix = ""
    stripped = True
    while stripped:  # `_orig_mod.module.` (compiled, then DDP) strips in two rounds
        stripped = False
        for p in PREFIXES:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                prefix += p
                stripped = True
    return sd, prefix


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file into a bare state dict, remembering its wrapper and prefix."""
    path = Path(path)
    if not path.exists():
        raise McirError("checkpoint not found", path)
    if path.is_dir():
        raise McirError("is a folder, expected a checkpoint file (.pth/.pt/.ckpt/.safetensors)", path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                metadata = dict(fh.metadata() or {})
                sd = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise McirError(f"truncated or corrupt safetensors file ({exc})", path) from None
        if not sd:
            raise McirError("the safetensors file holds no tensors", path)
        sd, prefix = _strip_prefix(sd)
        return Checkpoint(path, sd, (), prefix, "safetensors", metadata)
    if path.stat().st_size == 0:
        raise McirError("empty file", path)
    obj = _torch_load(path)
    sd, keys, top_level, siblings = _unwrap(obj, path)
    sd, prefix = _strip_prefix(sd)
    return Checkpoint(path, sd, keys, prefix, "pth", {}, top_level, siblings)


def _wrap(ckpt: Checkpoint, state_dict: Mapping[str, Tensor]) -> Any:
    """Rebuild the input's container around `state_dict` (prefix, wrapper keys, siblings)."""
    inner: Any = {ckpt.prefix + k: v for k, v in state_dict.items()}
    if not ckpt.wrapper_keys:
        return inner
    for key in reversed(ckpt.wrapper_keys[1:]):
        inner = {key: inner}
    outer: dict[str, Any] = dict(ckpt.top_level)
    outer[ckpt.wrapper_keys[0]] = inner
    # BasicSR files carry `params` beside `params_ema`: both get the retrained weights,
    # so whichever key a loader prefers, it gets the new model.
    for sibling in ckpt.sibling_weight_keys:
        outer[sibling] = inner
    return outer


def save_like(ckpt: Checkpoint, state_dict: Mapping[str, Tensor], path: str | Path) -> Path:
    """Write `state_dict` to `path` in the same wrapper, prefix and format as `ckpt`."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if Path(path).suffix == ".safetensors":  # the target's suffix decides the format
        return save_safetensors({ckpt.prefix + k: v for k, v in tensors.items()}, path, ckpt.metadata)
    obj = _wrap(ckpt, tensors)
    return atomic_torch_save(path, obj)


def save_safetensors(
    state_dict: Mapping[str, Tensor], path: str | Path, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write a safetensors file; metadata values that are not strings are stored as JSON.
    The header is written with sorted keys: safetensors orders it by a hash map seeded per
    process, so the same weights would give different bytes in every run."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = {
        str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        for k, v in (metadata or {}).items()
    }
    data = _canonical_safetensors(save(tensors, metadata=meta))
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _canonical_safetensors(blob: bytes) -> bytes:
    """The same file with its JSON header's keys sorted (offsets are relative to the data
    section, so only the header and its length change; padded to 8 bytes as the format says)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + blob[8 + n:]


def match_keys(
    model_keys: Mapping[str, Tensor], file_keys: Mapping[str, Tensor]
) -> dict[str, str] | None:
    """Map a model's state-dict keys back to the file's naming.

    Identity when the names agree. When a loader renamed the keys (spandrel converts
    ESRGAN's BasicSR names to the old layout), the order and shapes of the tensors still
    agree one to one; return that positional mapping, or None if shapes disagree.
    """
    if set(model_keys) == set(file_keys):
        return {k: k for k in model_keys}
    if len(model_keys) != len(file_keys):
        return None
    mapping = {}
    for (mk, mv), (fk, fv) in zip(model_keys.items(), file_keys.items()):
        if tuple(mv.shape) != tuple(fv.shape):
            return None
        mapping[mk] = fk
    return mapping


def describe_key_mismatch(missing: list[str], unexpected: list[str], limit: int = 5) -> str:
    """Readable one-line summary of a strict-load failure."""

    def head(keys: list[str]) -> str:
        shown = ", ".join(keys[:limit])
        return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {head(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
    return "; ".join(parts)
