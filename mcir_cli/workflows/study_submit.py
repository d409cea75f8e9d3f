"""`mcir study --resume S --submit slurm`: one Slurm job per unfinished unit, through
submitit (the optional `cluster` extra), each job running the same claim-and-run code as
`--shard` (study_units.py).

Preemption and time limits (submitit's own protocol, core/job_environment.py): submitit
asks Slurm for its preemption signal (`--signal=USR2@90`; `$SUBMITIT_PREEMPT_SIGNAL`)
and handles it with checkpoint-and-requeue; it only logs SIGTERM. In a unit job mcir
makes that signal one of its stop signals: the run finishes its step and saves state.pt,
the unit's lock is released, and then submitit's handler runs: it calls `checkpoint()`
below (the same unit again), requeues the job (`scontrol requeue`) and exits; the
requeued job claims the unit and resumes its run folder bit-exactly. A SIGTERM alone
(scancel, or a preemption on a cluster that sends no user signal) also saves state, and
the job ends as not completed, never requeued by mcir (a cancelled job must stay
cancelled); a cluster whose PreemptMode is REQUEUE reruns it, and any later job or
shard resumes the unit. docs/distributed.md says the same for users."""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path
from typing import Any

from mcir_cli.errors import McirError
from mcir_cli.workflows.study import UnitStopped, load_plan, open_study
from mcir_cli.workflows.study_units import check_study_folder, claim_and_run, finish, result_path, study_units

CLUSTERS = ("slurm", "local")  # local: submitit's LocalExecutor (jobs as processes here; what the tests use)


class UnitJob:
    """One unit as a submitit job (picklable: the study folder and the unit's name)."""

    def __init__(self, study: str, unit: str) -> None:
        self.study, self.unit = study, unit

    def __call__(self) -> str:
        from submitit.core.job_environment import JobEnvironment
        from submitit.core.utils import UncompletedJobError

        plan = load_plan(self.study)
        open_study(plan)
        check_study_folder(plan)
        unit = next(u for u in study_units(plan) if u.name == self.unit)
        preempt = JobEnvironment._usr_sig()  # submitit's preemption signal
        requeue = signal.getsignal(preempt)  # submitit's checkpoint-and-requeue handler
        try:
            outcome = claim_and_run(plan, unit, preempt_signals=(preempt,))
        except UnitStopped as stop:
            if stop.signal == signal.Signals(preempt).name and callable(requeue):
                requeue(preempt, None)  # calls self.checkpoint(), requeues, exits
            raise UncompletedJobError(f"{stop} (not requeued: a {stop.signal} is a cancel; "
                                      f"mcir study --resume {self.study} --submit slurm takes it up)") from None
        summary = finish(plan)
        return f"{self.unit}: {outcome}" + ("; study complete, summary written" if summary else "")

    def checkpoint(self) -> Any:
        """submitit's requeue hook: the same unit again (its run resumes from state.pt)."""
        from submitit.core.utils import DelayedSubmission

        return DelayedSubmission(UnitJob(self.study, self.unit))


def parse_time(text: str) -> int:
    """A Slurm time limit in minutes: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise McirError(f"--time must be a Slurm time such as 90, 4:00:00 or 1-12:00:00 (got {text!r})")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = days * 1440 + a * 60 + (b or 0) + (1 if c else 0)
    elif c is not None:  # HH:MM:SS
        minutes = a * 60 + (b or 0) + (1 if c else 0)
    else:  # MM or MM:SS
        minutes = a + (1 if b else 0)
    if minutes < 1:
        raise McirError(f"--time must be at least one minute (got {text!r})")
    return minutes


def submit_study(study: str | Path, cluster: str = "slurm", partition: str | None = None, gpus_per_unit: int = 1,
                 time_min: int = 1440, options: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    """Submit one job per unfinished unit (a Slurm job array); returns (unit, job) pairs.
    Jobs log to S/submitit/<job id>_*.out|err."""
    if cluster not in CLUSTERS:
        raise McirError(f"--submit must be one of {', '.join(CLUSTERS)} (got {cluster!r})")
    plan = load_plan(study)
    open_study(plan)
    check_study_folder(plan)
    try:
        import submitit
    except ImportError:
        raise McirError("--submit needs submitit: pip install 'mcir[cluster]'") from None
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise McirError("--submit slurm: sbatch not found (submit from a Slurm login node)")
    todo = [u for u in study_units(plan) if not result_path(plan, u).exists()]
    if not todo:
        return []
    root = Path(plan.output)
    executor = submitit.AutoExecutor(folder=root / "submitit" / "%j", cluster=cluster)
    executor.update_parameters(timeout_min=time_min, gpus_per_node=gpus_per_unit, tasks_per_node=1, nodes=1,
                               name=f"mcir-{root.name}")
    if cluster == "slurm":
        executor.update_parameters(slurm_partition=partition, slurm_additional_parameters=dict(options or {}))
    with executor.batch():
        jobs = [executor.submit(UnitJob(str(root), u.name)) for u in todo]
    return [(u.name, job) for u, job in zip(todo, jobs)]
