"""The retraining loop: L = L_rec − λ·L_neg with EMA negatives, observable and resumable.

`Run` holds one run's parts, folder, guard and counters; `Run.train()` is the loop and
reads top to bottom. What the loop calls lives in the modules named after it: config,
parts, step, guard, validation, rundir, state."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mcir_cli._helpers.fsutil import writable_target
from mcir_cli.choices import RATIO_BAND
from mcir_cli.data.datasets import RankIndices
from mcir_cli.errors import McirError
from mcir_cli.losses.reconstruction import error_magnitude
from mcir_cli.models.inference import resolve_device
from mcir_cli.train.config import TrainConfig
from mcir_cli.train.distributed import DistContext
from mcir_cli.train.guard import (
    CollapseGuard,
    Decision,
    LambdaControl,
    Rollback,
    collapse_decision,
    contrast_ratio,
    validation_collapse,
)
from mcir_cli.train.parts import build_parts, compile_parts
from mcir_cli.train.rundir import RunFolder
from mcir_cli.train.schedule import learning_rate, set_lr
from mcir_cli.train.state import RunState, check_resume, cpu_copy, run_info, start_warnings
from mcir_cli.train.step import StepLosses, spn_step
from mcir_cli.train.validation import file_weights, val_header, validate, weights_metadata

log = logging.getLogger("mcir")


@dataclass
class StepRecord:
    """One logged step: what log.jsonl holds and `on_step` receives."""

    step: int
    l_rec: float
    l_neg: float
    ratio: float
    lam: float
    lr: float
    grad_norm: float
    it_s: float
    neg_psnr: tuple[float, ...] = ()


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    stopped_early: str | None = None
    best_psnr: float | None = None
    best_step: int | None = None  # 0: no step beat the starting weights
    final_psnr: float | None = None
    collapses: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    mean_ratio: float | None = None  # mean contrast ratio λ·l_neg/|l_rec| over the run's steps
    ratio_per_lambda: float | None = None  # mean l_neg/|l_rec|: the λ to try (guard.lambda_hint)
    ratio_band: tuple[float, float] = RATIO_BAND
    stop_kind: str | None = None  # "signal" or "collapses" when the run stopped before --iters
    stop_signal: str | None = None  # which signal stopped it (e.g. "SIGTERM"); None on another rank

    @property
    def exit_code(self) -> int:
        """0 for a finished run; 128 + the signal's number (the shell's convention: 130 for
        Ctrl-C, 143 for SIGTERM); 1 for a stop by the collapse guard."""
        if self.stop_kind is None:
            return 0
        if self.stop_kind == "signal":
            return 128 + int(signal.Signals[self.stop_signal or "SIGINT"])
        return 1
    val_conventions: str | None = None  # how the validation PSNR was measured


class Run:
    """One run: built (or resumed) in __init__, trained by `train()`."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, on_step: Callable[[StepRecord], None] | None = None,
                 dist: Any = None, preempt_signals: tuple[int, ...] = ()) -> None:
        self.cfg, self.on_step, self.preempt_signals = cfg, on_step, tuple(preempt_signals)
        self.dist = dist or DistContext.single()
        self.folder = RunFolder(cfg.output, self.dist.is_main)
        device = self.dist.device if self.dist.world_size > 1 else resolve_device(cfg.device)
        fresh = not resume or self.folder.is_unstarted()
        if resume and fresh:
            log.warning("%s has no saved state (stopped before its first save): the run starts again from step 0",
                        self.folder.root)
            self.folder.truncate_log(-1)
        start = cfg.checkpoint if fresh else self.folder.resume_source(cfg.checkpoint)
        self.parts = build_parts(cfg, start, device, self.dist)
        self.guard = CollapseGuard(cfg.collapse_factor)
        self.lam = LambdaControl(cfg.lam, cfg.lam_auto, tuple(cfg.ratio_band))
        self.rollback = Rollback(every=max(1, min(100, cfg.iters // 20 or 1)))
        self.state = RunState()
        self.stale_state = False  # set by a resume whose state.pt missed the last validation
        self.stop_request: str | None = None
        if fresh:
            self.folder.write_config(run_info(cfg, self.parts, self.dist))
        else:
            self.resume_from(self.folder.load_state(device))
        self.dist.barrier()
        self.state.compiled = compile_parts(self.parts, cfg, cfg.iters - self.state.step, self.state.compiled)
        if self.dist.is_main:
            if fresh:
                for level, message in start_warnings(cfg, self.parts):
                    log.log(level, "%s", message)
            n = self.dist.world_size
            log.info("global batch %d = %d per rank x %d rank(s); %s; %s; %s", cfg.batch * n, cfg.batch, n,
                     self.parts.notes["precision"], self.parts.notes["compile"], self.parts.notes["layout"])

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        cfg, st = self.cfg, self.state
        result = TrainResult(self.folder.root, st.step, ratio_band=tuple(cfg.ratio_band))
        if st.step >= cfg.iters:  # a resume of a finished run: complete what a kill cut short
            return self.finish_finished(result)
        logger = self.folder.open_log(cfg.tensorboard, st.step if st.step > 0 else None)
        with self.signals(), contextlib.closing(logger) if logger else contextlib.nullcontext():
            if st.step == 0:
                self.log(logger, {"event": "start", "step": 0, **self.start_record()})
                if self.parts.vals:  # the starting weights are best.*'s first candidate
                    st.start_psnr = self.validate(logger, result)
            if self.rollback.latest is None:
                self.rollback.take(st.step, self.snapshot(), force=True)
            data, t_last, since = self.batches(), time.perf_counter(), 0
            while st.step < cfg.iters:
                lq, gt, *quality = next(data)  # + FBCNN's quality-factor targets when trained
                st.samples += cfg.batch * self.dist.world_size  # the data never rewinds
                set_lr(self.parts.optimizer, learning_rate(cfg, st.step, st.lr_scale))
                s = spn_step(self.parts, lq, gt, self.lam.lam, cfg.grad_clip, cfg.ema_decay,
                             quality[0] if quality else None)
                s.loss, s.l_rec, s.l_neg = self.dist.mean([s.loss, s.l_rec, s.l_neg])
                ratio = contrast_ratio(self.lam.lam, s.l_neg, s.l_rec) if self.parts.bank else 0.0
                error = error_magnitude(cfg.loss, s.l_rec)
                reason, bad_step = self.guard.check(s.loss, s.grad_norm, error, ratio), st.step + 1
                if reason is None:
                    st.step += 1
                    since += 1
                    self.guard.accept(error, ratio)
                    self.after_step(s, ratio, logger)
                    if cfg.log_every and (st.step % cfg.log_every == 0 or st.step == cfg.iters):
                        t_last, since = self.log_step(logger, s, ratio, t_last, since)
                    if cfg.val_every and st.step % cfg.val_every == 0 and st.step < cfg.iters:
                        reason, bad_step = self.validation_reason(logger, result), st.step
                decision = self.on_collapse(reason, bad_step, logger, result)
                if decision == "stop":
                    break
                if decision == "roll back":  # the next step starts from the restored state
                    data = self.batches()
                    continue
                if cfg.save_every and st.step % cfg.save_every == 0:
                    self.save_state()
                if self.dist.any(self.stop_request is not None):
                    result.stop_kind, result.stop_signal = "signal", self.stop_request
                    result.stopped_early = (f"{self.stop_request or 'signal on another rank'} at step {st.step}: "
                                            f"state saved, continue with --resume {self.folder.root}")
                    break
            self.finish(logger, result)
        return result

    # ------------------------------------------------------------------ loop pieces
    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches from the current data position. Sample indices depend only on the
        position and (step, rank), so a resumed run, on any number of ranks, continues the
        same stream of patches; after a collapse the stream moves on past the bad batch."""
        cfg, W = self.cfg, self.dist.world_size
        indices = RankIndices(self.state.samples, max(1, cfg.iters - self.state.step), cfg.batch, W, self.dist.rank)
        loader = torch.utils.data.DataLoader(
            self.parts.patches, batch_size=cfg.batch, sampler=indices, num_workers=cfg.workers,
            pin_memory=self.parts.device.type == "cuda", persistent_workers=cfg.workers > 0, drop_last=True,
            generator=torch.Generator(),  # keeps the global RNG (drop-path) untouched
        )
        yield from self.parts.degrader.batches(loader) if self.parts.degrader else loader

    def after_step(self, s: StepLosses, ratio: float, logger: Any) -> None:
        """Negatives' EMA updates, λ control, the rollback snapshot, the DDP sync check."""
        st, bank = self.state, self.parts.bank
        if bank is not None:
            for i in bank.update(st.step, self.parts.model):
                self.log(logger, {"event": "negative_update", "step": st.step, "index": i,
                                  "period": self.cfg.negative_steps[i]})
            self.lam.observe(ratio)
            message = self.lam.warning(max(50, self.cfg.iters // 10))
            if message:
                log.warning("%s", message)
                self.log(logger, {"event": "ratio_warning", "step": st.step, "ratio": ratio, "message": message})
        if st.step % self.rollback.every == 0 and not self.guard.dominated:  # never inside a dominance streak
            self.rollback.take(st.step, self.snapshot())
        checks = self.dist.check_sync(self.parts, st.step)
        if checks is not None:
            self.log(logger, {"event": "sync_check", "step": st.step, "ranks": len(checks), "checksums": checks})

    def validation_reason(self, logger: Any, result: TrainResult) -> str | None:
        """Validate; a score far below the start's is a collapse. Rank 0 validates and
        every rank rolls back with it."""
        reason = validation_collapse(self.validate(logger, result), self.state.start_psnr, self.cfg.val_drop)
        if self.dist.any(reason is not None):
            return reason or "validation collapse on rank 0"
        return None

    def on_collapse(self, reason: str | None, bad_step: int, logger: Any, result: TrainResult) -> Decision:
        """The one collapse handler. Nothing to do without a `reason`; else roll back to
        the last good state, weaken what drove the run (λ; the lr in a plain run, where λ
        does nothing), say so, and stop once the run has collapsed --max-collapses times."""
        st = self.state
        if reason is None:
            return "continue"
        st.collapses += 1
        target = self.rollback.target(bad_step - self.guard.dominated)  # back past a dominance streak
        self.roll_back(target)
        self.rollback.rolled_back_to(target)
        if self.parts.bank is not None and self.lam.lam > 0:
            self.lam.on_collapse()
            action = f"λ halved to {self.lam.lam:.3g}"
        else:
            st.lr_scale /= 2
            action = f"lr halved to {self.cfg.lr * st.lr_scale:.3g}"
        self.guard.forget_dominance()
        self.log(logger, {"event": "collapse", "step": bad_step, "reason": reason, "rolled_back_to": st.step,
                          "lambda": self.lam.lam, "lr_scale": st.lr_scale, "count": st.collapses})
        if self.dist.is_main:
            log.warning("collapse at step %d (%s): rolled back to step %d, %s", bad_step, reason, st.step, action)
        decision = collapse_decision(reason, st.collapses, self.cfg.max_collapses)
        if decision == "stop":
            result.stop_kind = "collapses"
            result.stopped_early = (f"stopped after {st.collapses} collapses (last: {reason}); "
                                    f"the weights of step {st.step} were saved")
        return decision

    def log_step(self, logger: Any, s: StepLosses, ratio: float, t_last: float, since: int) -> tuple[float, int]:
        now = time.perf_counter()
        stats = StepRecord(self.state.step, s.l_rec, s.l_neg, ratio, self.lam.lam,
                          learning_rate(self.cfg, self.state.step, self.state.lr_scale), s.grad_norm, since / max(now - t_last, 1e-9),
                          s.neg_psnr)
        record = dataclasses.asdict(stats)
        record["neg_psnr"] = list(record["neg_psnr"])
        if not record["neg_psnr"]:
            del record["neg_psnr"]
        self.log(logger, record)
        if self.on_step and self.dist.is_main:
            self.on_step(stats)
        return now, 0

    def validate(self, logger: Any, result: TrainResult) -> float | None:
        """Score the written weights; val.json and best.* follow (main rank only)."""
        cfg, st = self.cfg, self.state
        if not self.parts.vals or not self.dist.is_main:
            return None
        v = validate(self.parts, st.step, tile=cfg.tile, noise_sigma=cfg.noise_sigma, train_bn=cfg.train_bn,
                     run_dir=self.folder.root)
        result.val_conventions = v.describe()
        self.log(logger, {"event": "val", **v.entry(), "conventions": v.conventions.describe()})
        if st.best_psnr is None or v.psnr > st.best_psnr:
            st.best_psnr, st.best_step = v.psnr, st.step
            result.outputs.update(self.write_weights("best"))
        self.folder.record_validation(v.entry(), val_header(v, self.parts.vals, cfg.tile, cfg.noise_sigma))
        return v.psnr

    def finish(self, logger: Any, result: TrainResult) -> None:
        """Weights first (a validation that fails must not cost the training), then the
        final validation, then the state again (it must know this validation's best)."""
        st = self.state
        checks = self.dist.check_sync(self.parts, st.step, force=True)
        if checks is not None:
            self.log(logger, {"event": "sync_check", "step": st.step, "ranks": len(checks), "checksums": checks})
        self.save_state()
        result.outputs.update(self.write_weights("model"))
        result.final_psnr = self.validate(logger, result)
        if result.final_psnr is not None:
            self.save_state()
            reason = validation_collapse(result.final_psnr, st.start_psnr, self.cfg.val_drop)
            if reason and result.stop_kind is None:
                result.stop_kind = "collapses"
                result.stopped_early = (f"{reason}: model.* holds these final weights; best.* holds step "
                                        f"{st.best_step}'s ({st.best_psnr:.2f} dB)")
        self.fill_result(result)
        result.outputs.update(self.folder.write_card())
        self.log(logger, {"event": "end", "step": st.step, "stopped_early": result.stopped_early,
                          "best_psnr": st.best_psnr, "collapses": st.collapses, "mean_ratio": result.mean_ratio,
                          "stop": result.stop_kind})

    def finish_finished(self, result: TrainResult) -> TrainResult:
        """A resume at or past --iters: nothing to train, but a run killed during its final
        save gets its model.* (and final validation) now."""
        root = self.folder.root
        if self.dist.is_main:
            missing = [n for n in ("model.safetensors", "model.pth") if not (root / n).is_file()]
            validated = any(h["step"] == self.state.step for h in self.folder.validations(self.state.step))
            if missing or (self.parts.vals and not validated):
                log.info("the run is at step %d of %d: completing its final save (%s)", self.state.step,
                         self.cfg.iters, ", ".join(missing) or "final validation")
                logger = self.folder.open_log(False, self.state.step)
                with contextlib.closing(logger):
                    self.finish(logger, result)
                return result
            if self.stale_state:
                self.save_state()
            self.folder.write_card(if_missing=True)
            log.info("the run is already at step %d of %d: nothing to train (--iters N goes further)",
                     self.state.step, self.cfg.iters)
        self.fill_result(result)
        return result

    def fill_result(self, result: TrainResult) -> None:
        st = self.state
        result.steps, result.best_psnr, result.best_step = st.step, st.best_psnr, st.best_step
        result.collapses, result.mean_ratio = st.collapses, self.lam.mean_ratio  # resumes included
        result.ratio_per_lambda = self.lam.ratio_per_lambda

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """state.pt: the parts', the counters', λ control's and the guard's own state
        dicts, side by side (one flat dict, the layout older runs saved)."""
        return {**self.parts.state_dict(), **self.state.state_dict(), **self.lam.state_dict(),
                **self.guard.state_dict(), "world_size": self.dist.world_size}

    def resume_from(self, state: dict[str, Any]) -> None:
        self.parts.load_state_dict(state)
        self.state.load_state_dict(state, samples_per_step=self.cfg.batch * self.dist.world_size)
        self.lam.load_state_dict(state)
        self.guard.load_state_dict(state)
        # the rollback point of the interrupted run, so a collapse soon after a resume rolls
        # back exactly where the uninterrupted run would have
        self.rollback.latest = cpu_copy(state["rollback"]) if "rollback" in state else None
        self.stale_state = check_resume(self.cfg, self.state, state, self.folder, self.dist.world_size,
                                        self.dist.is_main)

    def snapshot(self) -> dict[str, Any]:
        """The last good in-memory state, for the collapse guard (CPU copies)."""
        return cpu_copy(self.state_dict())

    def roll_back(self, snapshot: dict[str, Any]) -> None:
        """Back to a snapshot's parts (weights, optimizer, negatives, RNG), guard history
        and step; λ control, the collapse count, the lr scale, the best validation and
        the data position stay where they are."""
        snapshot = cpu_copy(snapshot)  # a copy: the optimizer would share its tensors
        self.parts.load_state_dict(snapshot)
        self.guard.load_state_dict(snapshot)
        self.state.step = int(snapshot["step"])

    def save_state(self) -> None:
        state = self.state_dict()
        if self.rollback.latest is not None and self.rollback.latest["step"] != self.state.step:
            state["rollback"] = self.rollback.latest  # only between snapshot steps (a stop, an odd --save-every)
        self.folder.save_state(state)

    def write_weights(self, stem: str) -> dict[str, str]:
        if not self.dist.is_main:
            return {}
        meta = weights_metadata(self.parts, self.cfg, self.state.step, self.lam.lam, self.state.best_psnr)
        return self.folder.write_weights(stem, self.parts.loaded, file_weights(self.parts), meta)

    def start_record(self) -> dict[str, Any]:
        cfg, p = self.cfg, self.parts
        return {"embedding": p.notes["embedding"], "batchnorm_layers": p.n_bn,
                "batchnorm_running_stats": "updated" if cfg.train_bn else "frozen", "negatives": cfg.negative_init,
                "negative_steps": list(cfg.negative_steps), "global_batch": cfg.batch * self.dist.world_size,
                "recipe": cfg.recipe_note, "compile": p.notes["compile"], "layout": p.notes["layout"],
                "ema_decay": cfg.ema_decay, "amp": p.notes["precision"]}

    def log(self, logger: Any, record: dict[str, Any]) -> None:
        if logger is not None:
            logger.write(record)

    def request_stop(self, signum: int, frame: Any = None) -> None:
        """The SIGINT/SIGTERM handler: save and stop at the end of this step; a second
        signal stops at once. Under a scheduler (`preempt_signals`, its preemption signals)
        no signal aborts (it may send several; its SIGKILL is the abort) and a preemption
        signal is the one recorded (the caller requeues on it)."""
        if self.stop_request is not None and not self.preempt_signals:
            raise KeyboardInterrupt
        if self.stop_request is None or signum in self.preempt_signals:
            self.stop_request = signal.Signals(signum).name
        log.warning("%s received: saving at the end of this step%s", self.stop_request,
                    "" if self.preempt_signals else " (press again to abort)")

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM, *self.preempt_signals):
            with contextlib.suppress(ValueError):  # not the main thread
                previous[sig] = signal.signal(sig, self.request_stop)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def retrain(cfg: TrainConfig, on_step: Callable[[StepRecord], None] | None = None, resume: bool = False,
            dist: Any = None, preempt_signals: tuple[int, ...] = ()) -> TrainResult:
    """Retrain a model with MCIR (or plainly with negative_init='none'): a new run folder,
    or `resume` the one in cfg.output. The folder is locked for the whole run.
    `preempt_signals`: a scheduler's signals that also save and stop (see Run.request_stop)."""
    out = Path(cfg.output)
    folder = RunFolder(out, dist is None or dist.is_main)
    # an empty folder holds nothing to lose (also one a run killed at its very start left,
    # with at most a temp file of its first write)
    if not resume and folder.is_main and out.exists() and (not out.is_dir() or not folder.holds_nothing()):
        raise McirError("output folder exists; choose a new --output (or --resume it)", out)
    writable_target(out, "run folder")
    if not resume and folder.is_main:
        out.mkdir(parents=True, exist_ok=True)
    try:
        with folder.lock():
            folder.remove_stale_temps()
            return Run(cfg, resume=resume, on_step=on_step, dist=dist, preempt_signals=preempt_signals).train()
    except torch.cuda.OutOfMemoryError:
        folder.discard_if_unstarted()
        raise McirError(f"CUDA out of memory at batch {cfg.batch} x patch {cfg.patch}: try a smaller --batch or --patch") from None
    except BaseException:
        if not resume:
            folder.discard_if_unstarted()
        raise
