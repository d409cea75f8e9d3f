"""A run folder (`--output RUN`): config.json (everything needed to rerun), log.jsonl
(every logged step and event), state.pt (full resume state), val.json (validation
history, which best.* follows), the retrained weights (model.safetensors, plus model.pth
in the input checkpoint's own layout) and a lock. Every write is atomic; the input
checkpoint is only ever read."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from mcir_cli._helpers.fsutil import atomic_torch_save, atomic_write_text, confined, write_json
from mcir_cli.errors import McirError
from mcir_cli.models.checkpoint import save_like, save_safetensors
from mcir_cli.models.loading import checkpoint_label
from mcir_cli.train.card import CARD_FILES, write_card
from mcir_cli.train.config import RESUME_SETTINGS, TrainConfig

log = logging.getLogger("mcir")

STATE_FILE = "state.pt"


class RunLog:
    """log.jsonl (one JSON object a line, flushed) and optional TensorBoard."""

    def __init__(self, path: Path, tensorboard: bool = False, resumed_at: int | None = None) -> None:
        self.path = path
        self.fh = open(path, "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # on resume, TensorBoard drops what was logged after the saved state (as
                # truncate_log does for log.jsonl), so the curves have no doubled steps
                purge = None if resumed_at is None else resumed_at + 1
                self.tb = SummaryWriter(str(path.parent / "tensorboard"), purge_step=purge)
            except ImportError:
                log.warning("--tensorboard: tensorboard is not installed (pip install tensorboard); logging to log.jsonl only")

    def write(self, record: dict[str, Any]) -> None:
        try:
            self.fh.write(json.dumps(record) + "\n")
            self.fh.flush()
        except OSError as exc:  # a full disk: one line naming the file (the last state.pt is intact)
            raise McirError(f"cannot write: {exc.strerror or exc}; the last saved state.pt is kept "
                            "(free space, then --resume)", self.path) from None
        if self.tb is None:
            return
        event = record.get("event")
        if event is None:
            group, keys = "train", [k for k in record if k != "step"]
        elif event == "val":
            group, keys = "val", ["psnr", "ssim"]
        else:
            return
        for k in keys:
            v = record.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(f"{group}/{k}", v, record["step"])
        self.tb.flush()

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


def default_run_folder(model: str | None, checkpoint: str | Path | None, now: datetime | None = None,
                       base: str | Path | None = None) -> Path:
    """Where a retrain without --output writes: `<base or cwd>/runs/<preset, else the
    checkpoint's label>-<YYYYmmdd-HHMMSS>` (as BasicSR's `experiments/<name>`), with -2,
    -3, ... when that exists. Under torchrun only rank 0's choice counts (the CLI
    broadcasts it: the ranks' clocks may straddle a second)."""
    name = model or (checkpoint_label(checkpoint) if checkpoint else "run")
    stem = f"{name.replace('/', '-')}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"
    runs = Path(base or Path.cwd()) / "runs"
    path, k = confined(runs, stem), 2
    while path.exists():
        path, k = confined(runs, f"{stem}-{k}"), k + 1
    return path


class RunFolder:
    """The files of one run; `is_main` False (DDP ranks > 0) makes every write a no-op."""

    def __init__(self, root: str | Path, is_main: bool = True) -> None:
        self.root = Path(root)
        self.is_main = is_main

    # ------------------------------------------------------------------ config.json
    def write_config(self, info: dict[str, Any]) -> None:
        """config.json of a run starting at step 0 (`retrain` created the folder)."""
        if not self.is_main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / "config.json", info)

    def is_unstarted(self) -> bool:
        """A run folder without a saved state (killed before its first save, or by a
        second Ctrl-C): a resume starts it afresh from step 0 instead of refusing it."""
        return (self.root / "config.json").exists() and not (self.root / STATE_FILE).exists()

    def info(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.root / "config.json").read_text())
        return {}

    def record_resume(self, cfg: TrainConfig, step: int) -> None:
        """config.json keeps what a resume changed (--iters and the RESUME_SETTINGS), each
        change in a history, so a later plain --resume continues with it."""
        path = self.root / "config.json"
        info = json.loads(path.read_text())
        changed = False
        for key in ("iters", *RESUME_SETTINGS):
            new, old = getattr(cfg, key), info["config"].get(key)
            if old != new:
                info.setdefault("resumes", []).append({"at_step": step, key: new, "was": old})
                info["config"][key] = new
                changed = True
        if changed and self.is_main:
            write_json(path, info)

    def resume_source(self, checkpoint: str | None) -> str | None:
        """The file that tells a resumed run its architecture (its weights come from
        state.pt): the starting checkpoint if it is still there -- also one a preset found
        through $MCIR_WEIGHTS, recorded in config.json -- else the run's own model.pth,
        written in the same layout."""
        recorded = (self.info().get("model") or {}).get("checkpoint_path")
        for candidate in (checkpoint, recorded):
            if candidate and Path(candidate).is_file():
                return str(candidate)
        own = self.root / "model.pth"
        if own.is_file():
            if self.is_main:
                log.info("the starting checkpoint %s is gone: the architecture comes from %s, the weights "
                         "from state.pt", checkpoint or recorded, own)
            return str(own)
        return checkpoint

    # ------------------------------------------------------------------ state.pt
    def save_state(self, state: dict[str, Any]) -> None:
        if self.is_main:
            atomic_torch_save(self.root / STATE_FILE, state)

    def load_state(self, device: torch.device) -> dict[str, Any]:
        path = self.root / STATE_FILE
        if not path.exists():
            raise McirError(f"no {STATE_FILE} to resume from", self.root)
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated (killed while copying), not a torch file
            raise McirError(f"{STATE_FILE} is damaged ({type(exc).__name__}); resume needs the last "
                            "saved state, or start a new run from model.pth", path) from None

    # ------------------------------------------------------------------ weights
    def write_weights(self, stem: str, loaded: Any, state_dict: dict[str, Any], meta: dict[str, Any]) -> dict[str, str]:
        """STEM.safetensors (+metadata) and STEM.pth in the input's own layout."""
        if not self.is_main:
            return {}
        st, pth = self.root / f"{stem}.safetensors", self.root / f"{stem}.pth"
        save_safetensors(state_dict, st, meta)
        if loaded.checkpoint is not None:
            save_like(loaded.checkpoint, state_dict, pth)
        else:
            atomic_torch_save(pth, {k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
        return {st.name: str(st), pth.name: str(pth)}

    def write_card(self, if_missing: bool = False) -> dict[str, str]:
        """README.md + openmodeldb.json beside the final weights (`mcir_cli.train.card`); a card
        that cannot be made is a warning, never the run's failure. `if_missing`: a resumed
        finished run completes a card a kill cut short."""
        if not self.is_main or (if_missing and all((self.root / n).is_file() for n in CARD_FILES)):
            return {}
        try:
            return {name: str(path) for name, path in write_card(self.root).items()}
        except (McirError, OSError, ValueError, KeyError) as exc:
            log.warning("model card not written (%s); `mcir card %s` retries", exc, self.root)
            return {}

    # ------------------------------------------------------------------ val.json
    def record_validation(self, entry: dict[str, Any], header: dict[str, Any]) -> None:
        """Add (or replace, on a resumed step) one validation in val.json; `best` is the
        history's maximum, which best.* follows."""
        if not self.is_main:
            return
        path = self.root / "val.json"
        history = json.loads(path.read_text()) if path.exists() else {**header, "history": []}
        history["history"] = [h for h in history["history"] if h["step"] < entry["step"]] + [entry]
        history["best"] = max(history["history"], key=lambda h: h["psnr"])
        write_json(path, history)

    def validations(self, up_to: int) -> list[dict[str, Any]]:
        """val.json's history up to a step, checked before any training: a damaged val.json
        is found now, not after the run."""
        path = self.root / "val.json"
        if not path.exists():
            return []
        try:
            history = [h for h in json.loads(path.read_text())["history"] if int(h["step"]) <= up_to]
            for h in history:
                float(h["psnr"])
        except (ValueError, KeyError, TypeError) as exc:
            raise McirError(f"val.json is damaged ({type(exc).__name__}); move it aside to resume "
                            "(best.* is then chosen anew)", path) from None
        return history

    # ------------------------------------------------------------------ log.jsonl
    def open_log(self, tensorboard: bool, resumed_at: int | None) -> RunLog | None:
        return RunLog(self.root / "log.jsonl", tensorboard, resumed_at) if self.is_main else None

    def truncate_log(self, step: int) -> None:
        """On resume, drop lines logged after the saved state (they will be logged again)."""
        path = self.root / "log.jsonl"
        if not self.is_main or not path.exists():
            return
        keep = []
        lines = path.read_text(encoding="utf-8").splitlines()
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a killed process
                continue
            if record.get("step", 0) <= step:
                keep.append(line)
        if len(keep) < len(lines):  # only rewritten when something is dropped
            atomic_write_text(path, "".join(line + "\n" for line in keep))

    # ------------------------------------------------------------------ lifetime
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One process at a time in a run folder: a second run in a folder that is
        training would interleave two runs' states. A POSIX flock on the folder itself
        (config.json is replaced on resume, the folder is not; the kernel drops the lock
        when the process dies, so a killed run leaves no stale lock)."""
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        if not self.is_main or not self.root.is_dir():
            yield
            return
        fd = os.open(self.root, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise McirError("another mcir process is training in this run folder; wait for it or stop it",
                                self.root) from None
            except OSError as exc:  # NFS emulates flock with POSIX locks, which a folder's fd cannot take
                log.warning("%s: this file system cannot lock a folder (%s); nothing keeps a second process out "
                            "of this run (a study's units are locked by files: docs/distributed.md)",
                            self.root, exc.strerror or type(exc).__name__)
            yield
        finally:
            os.close(fd)  # releases the lock

    def holds_nothing(self) -> bool:
        """Empty, but for temp files a killed process left."""
        return all(p.name.startswith(".") and p.name.endswith(".tmp") for p in self.root.iterdir())

    def remove_stale_temps(self) -> None:
        """Temp files a killed process left (`.NAME.XXXX.tmp`, fsutil's atomic writes):
        never a finished file, so removed under the lock before the run writes again."""
        if self.is_main and self.root.is_dir():
            for tmp in self.root.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def discard_if_unstarted(self) -> None:
        """A new run that failed before its first step leaves no folder behind (so the same
        --output works again). Only a folder without state.pt and without a logged step
        (a log of a run that got going is kept for diagnosis)."""
        if not self.is_main or not self.root.is_dir() or (self.root / STATE_FILE).exists():
            return
        log_file = self.root / "log.jsonl"
        if log_file.exists() and '"l_rec"' in log_file.read_text(encoding="utf-8", errors="replace"):
            return
        shutil.rmtree(self.root, ignore_errors=True)
