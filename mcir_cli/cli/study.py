"""`mcir study`: K seeds of plain fine-tuning vs MCIR (and variants), evaluated, with evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mcir_cli.cli.app import RES_SCALE_HELP, app, console, err_console, handle_errors
from mcir_cli.errors import McirError
from mcir_cli.stats import p_phrase
from mcir_cli.study_report import METHOD, fmt_signed, study_number


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
    scale: Optional[int] = typer.Option(None, help="SR scale (default: the checkpoint's; checked against it).", rich_help_panel="Model"),
    res_scale: Optional[float] = typer.Option(None, help=RES_SCALE_HELP, rich_help_panel="Model"),
    arm: Optional[list[str]] = typer.Option(None, "--arm", help="An arm (repeatable): plain | mcir | mcir-paper | mcir-fitted | mcir-copy, or NAME:key=value,... (e.g. lam1e3:lam=1e-3) (default: plain and mcir).", rich_help_panel="Arms"),
    seeds: str = typer.Option("0,1,2", help="Seeds; each seed gives every arm the same patches in the same order.", rich_help_panel="Arms"),
    iters: int = typer.Option(1000, help="Steps of every run.", rich_help_panel="Optimisation"),
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
    val_every: int = typer.Option(0, help="Score the benchmarks every N steps of every run: study.md and report.html draw each arm's curve, mean ± sd over seeds (0: only at the end).", rich_help_panel="Run control"),
) -> None:
    """Prove it: K seeds of plain fine-tuning vs MCIR at equal steps, scored on held-out benchmarks.

    Example: mcir study --checkpoint IMDN_x4.pth --data DIV2K/ --benchmark Set5/ --benchmark Set14/ --arm plain --arm mcir --arm mcir-fitted --iters 2000 -o studies/imdn
    """
    from mcir_cli.study import StudyPlan, load_plan, parse_arm, plan_paths, run_study

    if resume is not None:
        given = [next((o for o in p.opts if o.startswith("--")), p.name) for p in ctx.command.params
                 if p.name != "resume" and getattr(ctx.get_parameter_source(p.name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")]
        if given:
            raise McirError(f"--resume continues the study as its plan.json says (remove {', '.join(given)})", resume)
        plan = load_plan(resume)
    else:
        if output is None or not data or not benchmark:
            raise McirError("give --data TRAIN, --benchmark DIR (repeatable) and a new --output STUDY")
        if checkpoint is None and model is None and not from_scratch:
            raise McirError("give a start model: --checkpoint FILE and/or --model PRESET")
        common: dict[str, Any] = {k: v for k, v in (("batch", batch), ("patch", patch), ("lr", lr), ("lam", lam),
                                                     ("embedding_init", embedding_init), ("res_scale", res_scale)) if v is not None}
        if embedding_weights is not None:
            common["embedding_weights"] = str(embedding_weights)
        arms = [parse_arm(a) for a in (arm or ["plain", "mcir"])]
        plan = StudyPlan(**plan_paths(output, data, benchmark, checkpoint), model=model, scale=scale, arms=arms,
                         seeds=_seeds(seeds), iters=iters, common=common, device=device, from_scratch=from_scratch,
                         val_every=val_every)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
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
            summary = run_study(plan, on_event, on_step, resume=resume is not None)
        except KeyboardInterrupt:
            err_console.print(f"[yellow]interrupted: finished arms are kept; continue with "
                              f"mcir study --resume {plan.output}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
    _render(summary, Path(plan.output))


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
    console.print(table)
    console.print(f"training: {summary['recipe']}", highlight=False, soft_wrap=True)
    for name, u in summary["units"].items():
        if u["stopped"]:
            console.print(f"[yellow]{name}: stopped by a collapse at step {u['steps']} "
                          "(left out of the Δ statistics)[/]", highlight=False, soft_wrap=True)
    console.print(f"[bold]Evidence[/] ({METHOD}):", highlight=False, soft_wrap=True)
    for arm, info in summary["deltas"].items():
        for d, s in info["datasets"].items():
            lo, hi = s["ci"]
            console.print(f"  {arm} on {d}: {fmt_signed(s['mean'], 3)} dB [{fmt_signed(lo, 3)}, {fmt_signed(hi, 3)}], "
                          f"better on {s['win_rate']:.0%} of (seed, image) pairs, {s['seeds_better']}/{s['seeds']} "
                          f"seeds, {p_phrase(study_number(s['p']))} — {s['verdict']}", highlight=False, soft_wrap=True)
    console.print(f"written: {root / 'study.json'}, {root / 'study.md'}, {root / 'report.html'}", highlight=False)
