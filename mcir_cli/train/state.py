"""What a run saves and restores beyond its parts: its counters (`RunState`), what a
resume checks, config.json's description of the run, and the warnings said at its start."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mcir_cli import __version__
from mcir_cli._helpers.fsutil import sha256_file
from mcir_cli.errors import McirError
from mcir_cli.train.config import TrainConfig
from mcir_cli.train.ema import start_share
from mcir_cli.train.rundir import RunFolder

log = logging.getLogger("mcir")


@dataclass
class RunState:
    """The counters of a run (weights, optimizer and negatives live in its Parts)."""

    step: int = 0
    samples: int = 0  # the data position: samples drawn so far, collapsed steps' included
    collapses: int = 0
    lr_scale: float = 1.0  # halved by a collapse of a plain run
    best_psnr: float | None = None
    best_step: int | None = None
    start_psnr: float | None = None  # the starting weights' validation, the guard's reference
    compiled: bool | None = None  # decided at the run's start; a resume keeps it

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "samples_seen": self.samples, "collapses": self.collapses,
                "lr_scale": self.lr_scale, "best_psnr": self.best_psnr, "best_step": self.best_step,
                "start_psnr": self.start_psnr, "compiled": self.compiled}

    def load_state_dict(self, state: dict[str, Any], samples_per_step: int) -> None:
        """`samples_per_step`: the global batch, for states older than the data position."""
        self.step = int(state["step"])
        self.samples = int(state.get("samples_seen", self.step * samples_per_step))
        self.collapses, self.lr_scale = int(state["collapses"]), float(state.get("lr_scale", 1.0))
        self.best_psnr, self.best_step = state["best_psnr"], state.get("best_step")
        self.start_psnr, self.compiled = state.get("start_psnr"), state.get("compiled")


def cpu_copy(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def check_resume(cfg: TrainConfig, counters: RunState, state: dict[str, Any], folder: RunFolder,
                 world_size: int, is_main: bool) -> bool:
    """What a resume does beyond loading the values: checks --iters, takes the best from
    val.json (the record best.* follows), trims the log and records what changed. True
    when state.pt is stale (a kill between the final validation and the save after it)."""
    if state.get("world_size", 1) != world_size and is_main:
        log.info("resuming a run of %d ranks on %d: data position re-derived from the step",
                 state.get("world_size", 1), world_size)
    if cfg.iters < counters.step:
        raise McirError(f"--iters {cfg.iters} is below the {counters.step} steps this run has done", folder.root)
    history = folder.validations(counters.step)
    if history:
        best = max(history, key=lambda h: float(h["psnr"]))
        counters.best_psnr, counters.best_step = float(best["psnr"]), int(best["step"])
        if counters.start_psnr is None and history[0]["step"] == 0:
            counters.start_psnr = float(history[0]["psnr"])
    folder.truncate_log(counters.step)
    folder.record_resume(cfg, counters.step)
    return (state["best_psnr"], state.get("best_step")) != (counters.best_psnr, counters.best_step)


def run_info(cfg: TrainConfig, parts: Any, dist: Any) -> dict[str, Any]:
    """config.json: the configuration and what the run found (model, task, embedding)."""
    loaded = parts.loaded
    source = loaded.checkpoint.path if loaded.checkpoint is not None else None
    return {
        "config": cfg.to_json(), "mcir_version": __version__, "torch_version": torch.__version__,
        "model": {
            "architecture": loaded.architecture, "scale": loaded.scale,
            # where the starting weights were found (also via a preset and $MCIR_WEIGHTS)
            "checkpoint_path": str(source.absolute()) if source else None,
            "checkpoint_sha256": sha256_file(source) if source else None,
            "params": loaded.num_params, "io": loaded.restorer.io.as_dict(),
        },
        "embedding": parts.notes["embedding"], "task": parts.task,
        "batchnorm": {"layers": parts.n_bn, "running_stats": "updated" if cfg.train_bn else "frozen"},
        "global_batch": cfg.batch * dist.world_size, "world_size": dist.world_size,
    }


def start_warnings(cfg: TrainConfig, parts: Any) -> list[tuple[int, str]]:
    """(level, message): what makes a run not the method the user expects, said before it
    starts, with numbers."""
    out: list[tuple[int, str]] = []
    if cfg.recipe_note:
        out.append((logging.INFO, f"recipe: {cfg.recipe_note}"))
    if cfg.amp in ("bf16", "bf16-negatives") and parts.device.type != "cuda":
        out.append((logging.WARNING, f"--amp {cfg.amp} is a CUDA setting: this {parts.device.type} run is fp32"))
    if parts.ema is not None:
        out.append((logging.INFO, f"EMA of the weights (decay {cfg.ema_decay:g}): model.* and best.* hold the EMA, "
                                  "validation scores it"))
        share = start_share(cfg.ema_decay, cfg.iters)
        if share > 0.1:
            out.append((logging.WARNING, f"EMA decay {cfg.ema_decay:g} over {cfg.iters} steps keeps {share:.0%} of the "
                                         "starting weights in model.* and best.* (--ema-decay 0 turns it off)"))
    if parts.bank is None:
        return out
    if cfg.embedding_init == "random" and cfg.embedding != "pixel":
        out.append((logging.WARNING, f"SPN embedding: {parts.notes['embedding']}"))
    if parts.bank.updates_enabled:
        idle = [(s, cfg.iters // s) for s in cfg.negative_steps if cfg.iters // s < 2]
        if idle:
            where = "their mix initialisation (0.1·random + 0.9·θ: close to a random negative)" \
                if cfg.negative_init == "mix" else "the starting weights"
            out.append((logging.WARNING, "negatives with update periods " + ", ".join(
                f"{s} ({n} update{'s' if n != 1 else ''})" for s, n in idle) + f" in a {cfg.iters}-step run stay at "
                f"{where}; --negative-steps auto (in a study: --arm NAME:negative_steps=auto) fits the periods "
                "to the run"))
    return out
