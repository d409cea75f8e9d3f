"""Scoring a run's weights on its --val folders, as `mcir evaluate` scores them, and what
the run writes about it (val.json, best.*)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mcir_cli import __version__
from mcir_cli.data.datasets import Dataset
from mcir_cli.errors import McirError
from mcir_cli.evaluate.benchmarks import conventions_for, score_dataset
from mcir_cli.train.ema import swapped_in
from mcir_cli.train.parts import Parts, set_train_mode


@dataclass
class Validation:
    step: int
    psnr: float  # the mean of the dataset means with several folders (how papers average)
    ssim: float
    conventions: Any
    datasets: dict[str, dict[str, float]] = field(default_factory=dict)

    def describe(self) -> str:
        text = self.conventions.describe()
        return text + (f"; mean of {', '.join(self.datasets)}" if len(self.datasets) > 1 else "")

    def entry(self) -> dict[str, Any]:
        return {"step": self.step, "psnr": self.psnr, "ssim": self.ssim, "datasets": self.datasets}


def validate(parts: Parts, step: int, *, tile: int | None, noise_sigma: float | None, train_bn: bool,
             run_dir: Path) -> Validation:
    """Score the weights that are written (the EMA when the run keeps one) on every
    validation folder."""
    conv = conventions_for(parts.task, parts.loaded.scale, grey=parts.loaded.in_channels == 1)
    per: dict[str, dict[str, float]] = {}
    with swapped_in(parts.model, parts.ema):
        try:
            for v in parts.vals:
                res = score_dataset(parts.loaded, v, conv, device=parts.device, tile=tile, noise_sigma=noise_sigma)
                per[v.name] = {"psnr": res["psnr"], "ssim": res["ssim"]}
        except torch.cuda.OutOfMemoryError:
            raise McirError("validation ran out of CUDA memory on whole images: give --tile N "
                            f"(the weights of step {step} are saved in {run_dir})") from None
        finally:
            set_train_mode(parts.model, train_bn)
    mean = {k: sum(d[k] for d in per.values()) / len(per) for k in ("psnr", "ssim")}
    return Validation(step, mean["psnr"], mean["ssim"], conv, per)


def val_header(result: Validation, vals: list[Dataset], tile: int | None, noise_sigma: float | None) -> dict[str, Any]:
    """What val.json says once about how every entry was measured."""
    conv = result.conventions
    header: dict[str, Any] = {
        "conventions": {**conv.as_dict(), "description": conv.describe()},
        "data": {v.name: str(v.root) for v in vals}, "tile": tile,
        "psnr_is": "the mean of the datasets' means" if len(vals) > 1 else "the dataset's mean",
    }
    if noise_sigma is not None:  # validation noise: seed 0, as `mcir evaluate`
        header["noise"] = {"sigma": noise_sigma, "seed": 0}
    return header


def weights_metadata(parts: Parts, cfg: Any, step: int, lam: float, best_psnr: float | None) -> dict[str, Any]:
    """The safetensors metadata of written weights: what they are and how they were made."""
    loaded = parts.loaded
    unstored = {"res_scale": loaded.net.res_scale} if hasattr(loaded.net, "set_res_scale") else {}
    return {
        "architecture": loaded.architecture,
        "scale": str(loaded.scale),
        **unstored,  # EDSR's res_scale: read back by models.settle_res_scale
        "preset": loaded.preset.name if loaded.preset else "",
        "mcir_version": __version__,
        "training": {
            "steps": step,
            "lambda": lam,
            "negative_init": cfg.negative_init,
            "negative_steps": list(cfg.negative_steps),
            "embedding": parts.notes.get("embedding", ""),
            "source_checkpoint": cfg.checkpoint,
            "best_val_psnr": best_psnr,
            "weights": f"EMA (decay {cfg.ema_decay:g})" if parts.ema is not None else "trained",
        },
    }


def file_weights(parts: Parts) -> dict[str, torch.Tensor]:
    """The weights to write, under the input checkpoint's key names (the EMA if kept)."""
    with swapped_in(parts.model, parts.ema):
        return {k: v.detach().clone() for k, v in parts.loaded.file_state_dict().items()}
