"""A study as independent units, the unit of distribution: each start row (the pretrained
start, or one seed's initialisation, which also writes init/s<seed>.safetensors) and each
arm x seed. Any number of processes, on one machine or on many that share the study
folder, work on one study at once (`mcir study --resume S --shard I/N`, Slurm jobs):

- a unit is claimed with an exclusive `flock` on `units/<unit>.lock` (opened read-write:
  NFS emulates flock with POSIX locks, which need it); the kernel releases it when its
  process dies, so a dead unit is taken up by the next process, which resumes its run
  folder bit-exactly (retrain's resume);
- a unit is finished when `results/<unit>.json` exists (an atomic write): never rerun;
- `units/<unit>.jsonl` records every claim, stop and finish (host, pid, time), appended
  only by the lock's holder;
- whoever finishes the last unit writes study.json, study.md and report.html under
  `units/summary.lock` (atomic writes; a second finisher rewrites the same figures).

Which file systems make the lock safe across machines: docs/distributed.md."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcir_cli.errors import McirError
from mcir_cli.train.config import RESUME_SETTINGS
from mcir_cli.workflows.study import (
    Arm,
    OnEvent,
    StudyPlan,
    UnitStopped,
    evaluate_unit,
    load_plan,
    open_study,
    train_unit,
    write_init,
    write_summary,
)

UNITS = "units"  # the study's folder of unit locks and claim logs


@dataclass(frozen=True)
class Unit:
    name: str  # results/<name>.json; runs/<name>/ for an arm
    seed: int
    arm: Arm | None = None  # None: a start row


@dataclass
class WorkReport:
    """What one process did: the units it ran, those other processes held, the summary
    (when it finished the study)."""

    ran: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None


def study_units(plan: StudyPlan) -> list[Unit]:
    """Every unit in a fixed order: the start rows, then arm x seed (seed-major)."""
    starts = [Unit(plan.start_name(s), s) for s in (plan.seeds if plan.from_scratch else plan.seeds[:1])]
    return starts + [Unit(plan.run_name(a, s), s, a) for s in plan.seeds for a in plan.arms]


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise McirError(f"--shard must be I/N, such as 0/4 (got {text!r})")
    i, n = int(m[1]), int(m[2])
    if not 0 <= i < n:
        raise McirError(f"--shard {text.strip()}: needs 0 <= I < N (e.g. 0/{max(n, 1)} to {max(n, 1) - 1}/{max(n, 1)})")
    return i, n


def shard_order(units: list[Unit], shard: tuple[int, int] | None) -> list[Unit]:
    """Shard I/N's own units (I, I+N, I+2N, ...) first, then every other unit, which it
    helps with when no process has claimed it."""
    if shard is None:
        return list(units)
    own = units[shard[0]::shard[1]]
    return own + [u for u in units if u not in own]


@contextlib.contextmanager
def file_lock(path: Path, wait: bool) -> Iterator[bool]:
    """An exclusive flock on `path` for the block: True when held, False when another
    process holds it (`wait` False). The kernel releases it when the process dies."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one process per study
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            held = True
        except BlockingIOError:
            held = False
        except OSError as exc:
            raise McirError(f"cannot lock ({exc.strerror or type(exc).__name__}): this file system does not "
                            "support flock; see docs/distributed.md", path) from None
        yield held
    finally:
        os.close(fd)  # releases the lock


def _lock(plan: StudyPlan, name: str, wait: bool) -> contextlib.AbstractContextManager[bool]:
    """units/<name>.lock (the folder made on first use: studies planned before it existed)."""
    folder = Path(plan.output) / UNITS
    folder.mkdir(exist_ok=True)
    return file_lock(folder / f"{name}.lock", wait)


def _record(root: Path, unit: str, event: str, **fields: Any) -> None:
    """One line of units/<unit>.jsonl; only the holder of the unit's lock appends."""
    line = json.dumps({"event": event, "host": socket.gethostname(), "pid": os.getpid(),
                       "time": round(time.time(), 3), **fields})
    with open(root / UNITS / f"{unit}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def unit_log(root: str | Path, unit: str) -> list[dict[str, Any]]:
    """The claim log of a unit (what each process did with it, in order)."""
    path = Path(root) / UNITS / f"{unit}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def result_path(plan: StudyPlan, unit: Unit) -> Path:
    return Path(plan.output) / "results" / f"{unit.name}.json"


def _ensure_init(plan: StudyPlan, seed: int) -> Path:
    """The seed's initialisation, written by the first process that needs it (a start row
    or an arm of the seed), under its own lock."""
    with _lock(plan, f"init-s{seed}", wait=True):
        return write_init(plan, seed)


def run_unit(plan: StudyPlan, unit: Unit, on_step: Callable[[int], None] | None = None,
             preempt_signals: tuple[int, ...] = ()) -> None:
    """Run one unit to its result file (the caller holds its lock)."""
    if unit.arm is None:
        weights = _ensure_init(plan, unit.seed) if plan.from_scratch else plan.checkpoint
        evaluate_unit(plan, weights, unit.name, result_path(plan, unit))
        return
    if plan.from_scratch:
        _ensure_init(plan, unit.seed)
    run, training = train_unit(plan, unit.arm, unit.seed, on_step, preempt_signals)
    evaluate_unit(plan, run / "model.safetensors", unit.name, result_path(plan, unit), training)


def claim_and_run(plan: StudyPlan, unit: Unit, wait: bool = False, on_step: Callable[[int], None] | None = None,
                  preempt_signals: tuple[int, ...] = ()) -> str:
    """'finished' (already), 'held' (another process has it) or 'ran' (run here)."""
    root = Path(plan.output)
    if result_path(plan, unit).exists():
        return "finished"
    with _lock(plan, unit.name, wait) as held:
        if not held:
            return "held"
        if result_path(plan, unit).exists():  # finished while we waited for the lock
            return "finished"
        _record(root, unit.name, "claim")
        try:
            run_unit(plan, unit, on_step, preempt_signals)
        except UnitStopped as stop:
            _record(root, unit.name, "stopped", signal=stop.signal, step=stop.step)
            raise
        except BaseException as exc:
            _record(root, unit.name, "failed", error=type(exc).__name__)
            raise
        _record(root, unit.name, "done")
    return "ran"


def finish(plan: StudyPlan) -> dict[str, Any] | None:
    """The summary, written when every unit is finished (by whichever process gets here
    last; the lock keeps two finishers from interleaving); None while units remain."""
    if not all(result_path(plan, u).exists() for u in study_units(plan)):
        return None
    with _lock(plan, "summary", wait=True):
        return write_summary(plan)


def work(plan: StudyPlan, shard: tuple[int, int] | None = None, wait: bool = False, on_event: OnEvent | None = None,
         on_step: Callable[[str, int], None] | None = None, preempt_signals: tuple[int, ...] = ()) -> WorkReport:
    """Claim and run the study's unfinished units (a shard's own first), then write the
    summary if the study is complete. `wait`: also wait for units other processes hold
    (taking them up if those die); otherwise they are left to their holders."""
    check_study_folder(plan)
    report = WorkReport()
    order = shard_order(study_units(plan), shard)
    arms = [u for u in order if u.arm is not None]
    for unit in order:
        if on_event and unit.arm is not None:
            on_event(unit.name, arms.index(unit) + 1, len(arms) + 1)
        step_cb = (lambda step, n=unit.name: on_step(n, step)) if on_step else None
        outcome = claim_and_run(plan, unit, False, step_cb, preempt_signals)
        if outcome != "finished":
            (report.ran if outcome == "ran" else report.held).append(unit.name)
    for unit in [u for u in order if u.name in report.held] if wait else ():
        step_cb = (lambda step, n=unit.name: on_step(n, step)) if on_step else None
        if claim_and_run(plan, unit, True, step_cb, preempt_signals) == "ran":
            report.ran.append(unit.name)
        report.held.remove(unit.name)
    report.summary = finish(plan)
    return report


def check_study_folder(plan: StudyPlan) -> None:
    """Nothing in the folder that is not this plan's: every result and run folder is a
    unit of the plan, and every run folder's config.json is the plan's for that unit (a
    folder copied from another study would be resumed as if it were this one's)."""
    root = Path(plan.output)
    units = {u.name: u for u in study_units(plan)}
    for path in sorted((root / "results").glob("*.json")):
        if path.stem not in units:
            raise McirError(f"not a unit of this study's plan (its units: {', '.join(units)})", path)
    for run in sorted(p for p in (root / "runs").glob("*") if p.is_dir()):
        unit = units.get(run.name)
        if unit is None or unit.arm is None:
            raise McirError(f"not a unit of this study's plan (its units: {', '.join(units)})", run)
        if (run / "config.json").exists():
            _check_unit_config(plan, unit, run / "config.json")


def _check_unit_config(plan: StudyPlan, unit: Unit, path: Path) -> None:
    try:
        saved = json.loads(path.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise McirError(f"config.json is damaged ({type(exc).__name__})", path) from None
    assert unit.arm is not None
    want = json.loads(json.dumps(plan.config(unit.arm, unit.seed).to_json()))
    # a field the saved config lacks is one an older mcir did not have: its default applies;
    # recipe_note is prose about the numbers compared here, worded differently across versions
    differ = sorted(k for k in want if k in saved and k not in (*RESUME_SETTINGS, "recipe_note")
                    and saved[k] != want[k])
    if differ:
        raise McirError(f"this run folder is not the plan's {unit.name} (another study's? its "
                        f"{', '.join(differ)} differ from the plan's); move it away or choose a new study", path)


def run_shard(study: str | Path, shard: tuple[int, int] | None, on_event: OnEvent | None = None,
              on_step: Callable[[str, int], None] | None = None) -> WorkReport:
    """`mcir study --resume S --shard I/N`: this process's share of a planned study, then
    any unit still unclaimed; units other processes hold are left to them."""
    plan = load_plan(study)
    open_study(plan)
    return work(plan, shard, on_event=on_event, on_step=on_step)
