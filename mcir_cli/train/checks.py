"""What a valid run configuration is: every setting's range and choices, checked when a
`config.TrainConfig` is built, so that bad flags are one-line errors before anything is
read or written."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mcir_cli.choices import (
    AMP_MODES,
    AUTO_ON_OFF,
    EMBEDDING_INITS,
    EMBEDDINGS,
    LOSSES,
    NEGATIVE_INITS,
    OPTIMIZERS,
    SCHEDULES,
)
from mcir_cli.data.jpeg import check_task, parse_quality
from mcir_cli.data.realesrgan.settings import check_degradation
from mcir_cli.errors import McirError
from mcir_cli.models.presets import check_noise_sigma, check_task_name

if TYPE_CHECKING:
    from mcir_cli.train.config import TrainConfig



def _check_choice(flag: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise McirError(f"{flag} must be one of {', '.join(str(a) for a in allowed if a)} (got {value!r})")


def _check_numbers(cfg: TrainConfig) -> None:
    if cfg.iters < 1:
        raise McirError(f"--iters must be at least 1 (got {cfg.iters})")
    if cfg.batch < 1 or cfg.patch < 1:
        raise McirError("--batch and --patch must be positive")
    if not math.isfinite(cfg.lam) or cfg.lam < 0:
        raise McirError(f"--lambda must be a number >= 0 (got {cfg.lam}); the SPN term is subtracted already")
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise McirError(f"--lr must be a positive number (got {cfg.lr})")
    if cfg.grad_clip is not None and not (math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0):
        raise McirError(f"--grad-clip must be a positive number (got {cfg.grad_clip}); leave it out for no clipping")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise McirError(f"--ema-decay must be in [0, 1) (got {cfg.ema_decay}); 0 turns the EMA off")
    if not 0.0 <= cfg.negative_mix <= 1.0:
        raise McirError(f"--negative-mix must be in [0, 1] (got {cfg.negative_mix})")
    if not cfg.negative_steps or any(int(s) != s or s < 1 for s in cfg.negative_steps):
        raise McirError(f"--negative-steps must be positive integers (got {list(cfg.negative_steps)})")
    if not 0.0 <= cfg.negative_weight <= 1.0:
        raise McirError(f"--negative-weight must be in [0, 1] (got {cfg.negative_weight})")
    if cfg.log_every < 1:
        raise McirError(f"--log-every must be at least 1 (got {cfg.log_every})")
    for flag, value in (("--val-every", cfg.val_every), ("--save-every", cfg.save_every), ("--workers", cfg.workers), ("--warmup", cfg.warmup)):
        if value < 0:
            raise McirError(f"{flag} must be >= 0 (got {value})")
    if len(cfg.ratio_band) != 2 or not 0 <= cfg.ratio_band[0] < cfg.ratio_band[1]:
        raise McirError(f"--ratio-band must be two numbers low,high with 0 <= low < high (got {cfg.ratio_band})")
    if cfg.tile is not None and cfg.tile < 8:
        raise McirError(f"--tile must be at least 8 pixels (got {cfg.tile})")
    if cfg.collapse_factor <= 1:
        raise McirError(f"--collapse-factor must be above 1 (got {cfg.collapse_factor})")
    if not (math.isfinite(cfg.val_drop) and cfg.val_drop > 0):
        raise McirError(f"--val-drop must be a positive number of dB (got {cfg.val_drop})")


def validate_config(cfg: TrainConfig) -> None:
    """Bad flags are one-line errors before anything is read or written."""
    _check_numbers(cfg)
    check_noise_sigma(cfg.noise_sigma)
    check_task_name(cfg.task)
    if cfg.jpeg_quality is not None:
        parse_quality(cfg.jpeg_quality)
        check_task(cfg.task)
    check_degradation(cfg.degradation, cfg.degradation_settings, cfg.task)
    _check_choice("--loss", str(cfg.loss).lower(), LOSSES)
    _check_choice("--embedding", str(cfg.embedding).lower(), EMBEDDINGS)
    _check_choice("--negative-init", cfg.negative_init, (*NEGATIVE_INITS, "none"))
    _check_choice("--schedule", cfg.schedule, SCHEDULES)
    _check_choice("--optimizer", cfg.optimizer, OPTIMIZERS)
    for flag, value in (("--compile", cfg.compile), ("--channels-last", cfg.channels_last),
                        ("--batched-negatives", cfg.batched_negatives), ("--cache", cfg.cache)):
        _check_choice(flag, value, AUTO_ON_OFF)
    _check_choice("--embedding-init", cfg.embedding_init, EMBEDDING_INITS)
    _check_choice("--amp", cfg.amp, (None, *AMP_MODES, "none"))
    if cfg.lam_auto and cfg.loss == "psnr":
        raise McirError("--lambda auto steers λ·l_neg/l_rec, which needs a positive reconstruction loss; "
                        "the PSNR loss is signed (give a fixed --lambda)")
