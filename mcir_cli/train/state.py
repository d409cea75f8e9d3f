"""What a run saves and restores: its counters (`RunState`), the full resume state
(state.pt), config.json's description of the run, and the warnings said at its start."""

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


def cpu_copy(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def run_state_dict(run: Any) -> dict[str, Any]:
    p, st = run.parts, run.state
    state = {
        "step": st.step, "model": p.model.net.state_dict(), "optimizer": p.optimizer.state_dict(),
        "scheduler": p.scheduler.state_dict(), "collapses": st.collapses, "best_psnr": st.best_psnr,
        "best_step": st.best_step, "start_psnr": st.start_psnr, "lr_scale": st.lr_scale,
        "rng_cpu": torch.get_rng_state(), "world_size": run.dist.world_size, "samples_seen": st.samples,
        "compiled": st.compiled, **run.lam.state_dict(), **run.guard.state_dict(),
    }
    if torch.cuda.is_available() and p.device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(p.device)
    if p.bank is not None:
        state["negatives"] = p.bank.state_dict()
    if p.ema is not None:
        state["ema"] = p.ema
    return state


def load_run_state(run: Any, state: dict[str, Any], rollback: bool = False) -> None:
    """Put a saved state (state.pt, or a rollback snapshot) into a run. A resume also
    checks --iters, takes the best from val.json, trims the log and records what changed."""
    p, st = run.parts, run.state
    st.step = int(state["step"])
    p.model.net.load_state_dict(state["model"])
    p.optimizer.load_state_dict(state["optimizer"])
    p.scheduler.load_state_dict(state["scheduler"])
    run.lam.load_state_dict(state)
    run.guard.load_state_dict(state)
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and p.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng_cuda"], p.device)
    if p.bank is not None:
        p.bank.load_state_dict(state["negatives"])
    if p.ema is not None:
        with torch.no_grad():
            for k, v in p.ema.items():
                v.copy_(state["ema"][k])
    if rollback:
        return
    st.collapses, st.lr_scale = int(state["collapses"]), float(state.get("lr_scale", 1.0))
    st.best_psnr, st.best_step, st.start_psnr = state["best_psnr"], state.get("best_step"), state.get("start_psnr")
    st.samples = int(state.get("samples_seen", st.step * run.cfg.batch * run.dist.world_size))
    st.compiled = state.get("compiled")
    # the rollback point of the interrupted run, so a collapse soon after a resume rolls
    # back exactly where the uninterrupted run would have
    run.rollback.latest = cpu_copy(state["rollback"]) if "rollback" in state else None
    if state.get("world_size", 1) != run.dist.world_size and run.dist.is_main:
        log.info("resuming a run of %d ranks on %d: data position re-derived from the step",
                 state.get("world_size", 1), run.dist.world_size)
    if run.cfg.iters < st.step:
        raise McirError(f"--iters {run.cfg.iters} is below the {st.step} steps this run has done", run.folder.root)
    history = run.folder.validations(st.step)  # val.json is the record best.* follows
    if history:
        best = max(history, key=lambda h: float(h["psnr"]))
        st.best_psnr, st.best_step = float(best["psnr"]), int(best["step"])
        if st.start_psnr is None and history[0]["step"] == 0:
            st.start_psnr = float(history[0]["psnr"])
    # a kill between the final validation and the state saved after it: state.pt is stale
    run.stale_state = (state["best_psnr"], state.get("best_step")) != (st.best_psnr, st.best_step)
    run.folder.truncate_log(st.step)
    run.folder.record_resume(run.cfg, st.step)


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
                f"{where}; --negative-steps auto fits the periods to the run"))
    return out
