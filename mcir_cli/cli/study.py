"""`mcir study`: K seeds of plain fine-tuning vs MCIR (and variants), evaluated, with evidence."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from mcir_cli.cli.app import RES_SCALE_HELP, app, console, err_console, handle_errors, progress_bar
from mcir_cli.cli.render import add_paper_rows, print_paper_notes
from mcir_cli.compare.stats import p_phrase
from mcir_cli.compare.study_results import METHOD, NO_PAIRS, fmt_signed, study_number
from mcir_cli.errors import McirError


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise McirError(f"--seeds must be comma-separated integers such as 0,1,2 (got {text!r})") from None
    if not seeds:
        raise McirError("--seeds needs at least one seed")
    return seeds


@app.command()
@handle_errors
def study(
    ctx: typer.Context,
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Training folder (repeatable).", rich_help_panel="Data"),
    benchmark: Optional[list[Path]] = typer.Option(None, "--benchmark", help="Held-out benchmark folder every result is scored on (repeatable).", rich_help_panel="Data"),
    checkpoint: Optional[Path] = typer.Option(None, help="Start checkpoint every arm fine-tunes (read only).", rich_help_panel="Model"),
    model: Optional[str] = typer.Option(None, "--model", help="Preset (its recipe; its weights when --checkpoint is not given).", rich_help_panel="Model"),
    scale: Optional[int] = typer.Option(None, min=1, help="SR scale (default: the checkpoint's; checked against it).", rich_help_panel="Model"),
    res_scale: Optional[float] = typer.Option(None, help=RES_SCALE_HELP, rich_help_panel="Model"),
    task: Optional[str] = typer.Option(None, help="sr | dehaze | derain | deblur | denoise | jpeg (default: from model/layout).", rich_help_panel="Data"),
    jpeg_quality: Optional[str] = typer.Option(None, help="JPEG: training quality, or a range (10-95); clean benchmarks are scored at it (a range: its low end).", rich_help_panel="Data"),
    arm: Optional[list[str]] = typer.Option(None, "--arm", help="An arm (repeatable): plain | mcir | mcir-paper | mcir-fitted | mcir-copy, or NAME:key=value,... (e.g. lam1e3:lam=1e-3) (default: plain and mcir).", rich_help_panel="Arms"),
    seeds: str = typer.Option("0,1,2", help="Seeds; each seed gives every arm the same patches in the same order.", rich_help_panel="Arms"),
    iters: int = typer.Option(1000, help="Steps of every run.", rich_help_panel="Optimisation"),
    degradation: Optional[str] = typer.Option(None, help="realesrgan: every run's SR inputs made on the fly by Real-ESRGAN's degradation (default: a preset's); benchmark with `mcir data degrade` copies.", rich_help_panel="Data"),
    degradation_config: Optional[Path] = typer.Option(None, help="TOML with a \\[degradation] table changing the published defaults.", rich_help_panel="Data"),
    batch: Optional[int] = typer.Option(None, help="Patches per step (default: preset or 16).", rich_help_panel="Optimisation"),
    patch: Optional[int] = typer.Option(None, help="Input patch size (default: preset or 48/128).", rich_help_panel="Optimisation"),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: as `mcir retrain`: where a preset's schedule ends; bare checkpoint: 1e-5).", rich_help_panel="Optimisation"),
    lam: Optional[float] = typer.Option(None, "--lambda", help="λ of the MCIR arms (default: preset or the paper's 1e-4).", rich_help_panel="MCIR / SPN"),
    embedding_weights: Optional[Path] = typer.Option(None, help="Local VGG16 weights when torchvision's cache is empty.", rich_help_panel="MCIR / SPN"),
    embedding_init: str = typer.Option("pretrained", help="pretrained | random (offline fallback; not the paper's loss).", rich_help_panel="MCIR / SPN"),
    device: str = typer.Option("auto", help="auto | cuda | cpu", rich_help_panel="Speed"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="New study folder (must not exist).", rich_help_panel="Run control"),
    resume: Optional[Path] = typer.Option(None, help="Continue the study in this folder (finished arms are kept).", rich_help_panel="Run control"),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Train --model PRESET from a random initialisation per seed (shared by every arm of the seed), its recipe's lr schedule scaled to --iters.", rich_help_panel="Model"),
    val_every: int = typer.Option(0, help="Score the --val folders (default: the benchmarks) every N steps of every run: study.md and report.html draw each arm's curve, mean ± sd over seeds (0: only at the end).", rich_help_panel="Run control"),
    val: Optional[list[Path]] = typer.Option(None, "--val", help="Folder the curves of --val-every are scored on (repeatable; default: every benchmark). Small sets keep validation cheap.", rich_help_panel="Data"),
    save_every: int = typer.Option(0, help="Every run saves a resumable state every K steps (0: at the end and on a signal): what a killed unit's next process resumes from.", rich_help_panel="Run control"),
    plan_only: bool = typer.Option(False, "--plan-only", help="Write the new study's plan.json and stop (then run it with --resume S --shard I/N or --submit slurm).", rich_help_panel="Cluster"),
    shard: Optional[str] = typer.Option(None, help="With --resume: run units I, I+N, I+2N, ... then any unit still unclaimed; any number of processes, on machines sharing the folder, at once.", rich_help_panel="Cluster"),
    submit: Optional[str] = typer.Option(None, help="With --resume: one job per unfinished unit through submitit: slurm | local.", rich_help_panel="Cluster"),
    slurm_partition: Optional[str] = typer.Option(None, help="Slurm partition of the jobs.", rich_help_panel="Cluster"),
    gpus_per_unit: int = typer.Option(1, help="GPUs per job (one unit per job).", rich_help_panel="Cluster"),
    time: str = typer.Option("24:00:00", "--time", help="Time limit per job (Slurm's formats: 90, 4:00:00, 1-12:00:00); a job that reaches it is requeued and resumes.", rich_help_panel="Cluster"),
    slurm_option: Optional[list[str]] = typer.Option(None, help="More sbatch options KEY=VALUE (repeatable), e.g. account=proj qos=low cpus-per-task=8.", rich_help_panel="Cluster"),
) -> None:
    """Prove it: K seeds of plain fine-tuning vs MCIR at equal steps, scored on held-out benchmarks.

    Example: mcir study --checkpoint IMDN_x4.pth --data DIV2K/ --benchmark Set5/ --benchmark Set14/ --arm plain --arm mcir --arm mcir-fitted --iters 2000 -o studies/imdn
    """
    from mcir_cli.data.jpeg import parse_quality
    from mcir_cli.models.presets import check_task_name
    from mcir_cli.workflows.study import StudyPlan, create_study, load_plan, parse_arm, plan_paths
    from mcir_cli.workflows.study_units import study_units

    cluster = _cluster_request(ctx, resume, shard, submit, time, slurm_option)  # checked before any work
    if resume is not None:
        given = [next((o for o in p.opts if o.startswith("--")), p.name) for p in ctx.command.params
                 if p.name not in ("resume", *_CLUSTER_FLAGS)
                 and getattr(ctx.get_parameter_source(p.name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")]
        if given:
            raise McirError(f"--resume continues the study as its plan.json says (remove {', '.join(given)})", resume)
        plan = load_plan(resume)
    else:
        if output is None or not data or not benchmark:
            raise McirError("give --data TRAIN, --benchmark DIR (repeatable) and a new --output STUDY")
        if checkpoint is None and model is None and not from_scratch:
            raise McirError("give a start model: --checkpoint FILE and/or --model PRESET")
        check_task_name(task)
        if jpeg_quality is not None:
            parse_quality(jpeg_quality)
        common: dict[str, Any] = {k: v for k, v in (("batch", batch), ("patch", patch), ("lr", lr), ("lam", lam),
                                                     ("embedding_init", embedding_init), ("task", task),
                                                     ("jpeg_quality", jpeg_quality), ("res_scale", res_scale)) if v is not None}
        if save_every:
            common["save_every"] = save_every
        if embedding_weights is not None:
            common["embedding_weights"] = str(embedding_weights)
        from mcir_cli.data.realesrgan.settings import degradation_flags

        common.update({k: v for k, v in degradation_flags(degradation, degradation_config).items() if v is not None})
        arms = [parse_arm(a) for a in (arm or ["plain", "mcir"])]
        plan = StudyPlan(**plan_paths(output, data, benchmark, checkpoint, val or []), model=model, scale=scale, arms=arms,
                         seeds=_seeds(seeds), iters=iters, common=common, device=device, from_scratch=from_scratch,
                         val_every=val_every)
        if plan_only:
            create_study(plan)
            console.print(f"plan written: {Path(plan.output) / 'plan.json'} ({len(study_units(plan))} units: start rows "
                          f"and arm x seed); run them with mcir study --resume {plan.output} [--shard I/N | --submit slurm]",
                          highlight=False, soft_wrap=True)
            return
    if resume is not None and cluster.get("submit"):
        _submit(resume, cluster, slurm_partition, gpus_per_unit)
        return
    summary, report = _run(plan, resume, cluster.get("shard"))
    if summary is None:
        _render_shard(report, plan.output)
        return
    _render(summary, Path(plan.output))


def _run(plan: Any, resume: Optional[Path], shard: Optional[tuple[int, int]]) -> tuple[Optional[dict[str, Any]], Any]:
    """The study (or this process's shard of it) with progress bars; an interrupt exits
    128 + its signal (130 for Ctrl-C)."""
    from mcir_cli.workflows.study import run_study
    from mcir_cli.workflows.study_units import run_shard

    report = None
    with progress_bar() as bar:
        overall = bar.add_task("study", total=len(plan.arms) * len(plan.seeds) + 1)
        runs: dict[str, Any] = {}

        def on_event(name: str, done: int, total: int) -> None:
            bar.update(overall, completed=done - 1, description=f"study: {name}")
            if not err_console.is_terminal and name != "summary":
                err_console.print(f"study {done}/{total - 1}: {name}", highlight=False)

        def on_step(name: str, step: int) -> None:
            if name not in runs:
                runs[name] = bar.add_task(f"  {name}", total=plan.iters)
            bar.update(runs[name], completed=step)

        try:
            if shard is not None:
                report = run_shard(resume, shard, on_event, on_step)
                summary = report.summary
            else:
                summary = run_study(plan, on_event, on_step, resume=resume is not None)
        except KeyboardInterrupt as exc:
            err_console.print(f"[yellow]interrupted: finished units are kept; continue with "
                              f"mcir study --resume {plan.output}[/]", highlight=False, soft_wrap=True)
            stopped_by = getattr(exc, "signal", None)
            raise typer.Exit(128 + int(signal.Signals[stopped_by]) if stopped_by else 130) from None
    return summary, report


_CLUSTER_FLAGS = ("shard", "submit", "slurm_partition", "gpus_per_unit", "time", "slurm_option")


def _cluster_request(ctx: typer.Context, resume: Optional[Path], shard: Optional[str], submit: Optional[str],
                     time: str, slurm_option: Optional[list[str]]) -> dict[str, Any]:
    """--shard / --submit and their settings, checked before anything is written."""
    from mcir_cli.workflows.study_submit import CLUSTERS, parse_time
    from mcir_cli.workflows.study_units import parse_shard

    given = {n for n in _CLUSTER_FLAGS if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"}
    if given and resume is None:
        raise McirError("--shard and --submit run a planned study: mcir study ... --plan-only -o S, "
                        "then mcir study --resume S --shard I/N (or --submit slurm)")
    if shard is not None and submit is not None:
        raise McirError("give --shard (this process works) or --submit (jobs work), not both")
    if given - {"shard", "submit"} and submit is None:
        raise McirError(f"--{sorted(given - {'shard', 'submit'})[0].replace('_', '-')} needs --submit")
    if submit is not None and submit not in CLUSTERS:
        raise McirError(f"--submit must be one of {', '.join(CLUSTERS)} (got {submit!r})")
    options = {}
    for item in slurm_option or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise McirError(f"--slurm-option must be KEY=VALUE such as account=myproject (got {item!r})")
        options[key.strip().replace("-", "_")] = value.strip()
    return {"shard": parse_shard(shard) if shard is not None else None, "submit": submit,
            "time_min": parse_time(time), "options": options}


def _submit(study: Path, cluster: dict[str, Any], partition: Optional[str], gpus: int) -> None:
    from mcir_cli.workflows.study_submit import submit_study

    jobs = submit_study(study, cluster["submit"], partition, gpus, cluster["time_min"], cluster["options"])
    if not jobs:
        console.print(f"every unit of {study} is finished: mcir study --resume {study} writes the summary",
                      highlight=False, soft_wrap=True)
        return
    table = Table(title=f"{len(jobs)} job(s) submitted ({cluster['submit']})")
    table.add_column("unit")
    table.add_column("job")
    for unit, job in jobs:
        table.add_row(unit, str(job.job_id))
    console.print(table)
    console.print(f"logs: {Path(study) / 'submitit'}; the job that finishes the last unit writes study.json, "
                  f"study.md and report.html", highlight=False, soft_wrap=True)


def _render_shard(report: Any, study: str) -> None:
    ran = ", ".join(report.ran) or "none"
    console.print(f"ran: {ran}", highlight=False, soft_wrap=True)
    if report.held:
        console.print(f"still running in other processes: {', '.join(report.held)}; whoever finishes the last unit "
                      f"writes the summary (or: mcir study --resume {study})", highlight=False, soft_wrap=True)


def _render(summary: dict[str, Any], root: Path) -> None:
    datasets = summary["datasets"]
    conv = summary["conventions"].get("description", "")
    table = Table(title=f"{len(summary['plan']['seeds'])} seeds x {summary['plan']['iters']} steps "
                        "(PSNR/SSIM, mean over seeds)", caption=f"conventions: {conv}")
    table.add_column("model")
    for d in datasets:
        table.add_column(d, justify="right")
    for name, row in summary["table"].items():
        table.add_row(name, *(f"{row[d]['psnr']:.2f}/{row[d]['ssim']:.4f}" for d in datasets))
    add_paper_rows(table, summary.get("paper", []), datasets)
    console.print(table)
    print_paper_notes(summary.get("paper", []))
    console.print(f"training: {summary['recipe']}", highlight=False, soft_wrap=True)
    for name, u in summary["units"].items():
        if u["stopped"]:
            console.print(f"[yellow]{name}: stopped by a collapse at step {u['steps']} "
                          "(left out of the Δ statistics)[/]", highlight=False, soft_wrap=True)
    console.print(f"[bold]Evidence[/] ({METHOD}):", highlight=False, soft_wrap=True)
    for arm, info in summary["deltas"].items():
        if not info["datasets"]:
            console.print(f"  {arm}: {NO_PAIRS}", highlight=False, soft_wrap=True)
        for d, s in info["datasets"].items():
            lo, hi = s["ci"]
            console.print(f"  {arm} on {d}: {fmt_signed(s['mean'], 3)} dB [{fmt_signed(lo, 3)}, {fmt_signed(hi, 3)}], "
                          f"better on {s['win_rate']:.0%} of (seed, image) pairs, {s['seeds_better']}/{s['seeds']} "
                          f"seeds, {p_phrase(study_number(s['p']))} — {s['verdict']}", highlight=False, soft_wrap=True)
    console.print(f"written: {root / 'study.json'}, {root / 'study.md'}, {root / 'report.html'}", highlight=False)
