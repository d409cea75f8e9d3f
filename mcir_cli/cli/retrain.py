"""`mcir retrain`: flags -> a run configuration -> the training loop -> a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import TextColumn

from mcir_cli.choices import LOSSES, RATIO_BAND, SCHEDULES
from mcir_cli.cli.app import RES_SCALE_HELP, app, console, err_console, handle_errors, progress_bar
from mcir_cli.errors import McirError


@app.command()
@handle_errors
def retrain(
    ctx: typer.Context,
    data: list[Path] = typer.Option(None, "--data", help="Training folder (repeatable): HR-only, HR+LR or paired layouts.", rich_help_panel="Data"),
    checkpoint: Optional[Path] = typer.Option(None, help="Pretrained checkpoint (read only, never written).", rich_help_panel="Model"),
    model: Optional[str] = typer.Option(None, "--model", help="Preset (recipe defaults); see `mcir models`.", rich_help_panel="Model"),
    scale: Optional[int] = typer.Option(None, min=1, help="SR scale (checked against the checkpoint).", rich_help_panel="Model"),
    res_scale: Optional[float] = typer.Option(None, help=RES_SCALE_HELP, rich_help_panel="Model"),
    task: Optional[str] = typer.Option(None, help="sr | dehaze | derain | deblur | denoise | jpeg (default: from model/layout).", rich_help_panel="Data"),
    val: Optional[list[Path]] = typer.Option(None, "--val", help="Validation folder (repeatable); the best mean PSNR's weights are kept as best.*", rich_help_panel="Validation"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="New run folder (must not exist; default: a new ./runs/<preset or checkpoint>-<YYYYmmdd-HHMMSS>/).", rich_help_panel="Run control"),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this folder (bit-exact).", rich_help_panel="Run control"),
    iters: Optional[int] = typer.Option(None, help="Total optimizer steps (default: 1000; from scratch: the preset's).", rich_help_panel="Optimisation"),
    batch: Optional[int] = typer.Option(None, help="Patches per step (per rank) (default: preset or 16).", rich_help_panel="Optimisation"),
    patch: Optional[int] = typer.Option(None, help="Input patch size (LR pixels for SR) (default: preset or 48/128).", rich_help_panel="Optimisation"),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: a preset's: where its schedule ends (from scratch: its start); bare checkpoint: 1e-5).", rich_help_panel="Optimisation"),
    schedule: Optional[str] = typer.Option(None, help=f"{' | '.join(SCHEDULES)} (default: constant; from scratch: the preset's).", rich_help_panel="Optimisation"),
    warmup: Optional[int] = typer.Option(None, help="Linear warm-up steps (default: preset or 0).", rich_help_panel="Optimisation"),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the gradient norm to this value.", rich_help_panel="Optimisation"),
    ema_decay: Optional[float] = typer.Option(None, help="EMA of the weights, validated and written (default: the preset's, e.g. SwinIR 0.999; else 0 = off).", rich_help_panel="Optimisation"),
    loss: Optional[str] = typer.Option(None, help=f"Reconstruction loss: {' | '.join(LOSSES)} (default: preset or l1).", rich_help_panel="Optimisation"),
    lam: Optional[str] = typer.Option(None, "--lambda", help="SPN weight λ (default: preset or the paper's 1e-4), or 'auto': steer λ toward --ratio-band, within [λ/100, 100·λ] and never above a λ the collapse guard halved.", rich_help_panel="MCIR / SPN"),
    ratio_band: str = typer.Option(",".join(map(str, RATIO_BAND)), help="Contrast-ratio band λ·l_neg/l_rec for warnings and --lambda auto (mcir's heuristic: neither the paper nor the authors' code gives one).", rich_help_panel="MCIR / SPN"),
    negative_steps: Optional[str] = typer.Option(None, help="Update period s_i of each negative: a list (default: preset or the paper's 100,500,1000,2000), paper, or auto (the paper's ratios shrunk so the slowest updates 4 times in --iters; never faster than every 2 steps).", rich_help_panel="MCIR / SPN"),
    negative_weight: Optional[float] = typer.Option(None, help="EMA weight w of the old negative (default: preset or the paper's 0.1).", rich_help_panel="MCIR / SPN"),
    negative_init: Optional[str] = typer.Option(None, help="mix (authors' code, default: 0.1·random + 0.9·θ) | copy | random | frozen | none (plain fine-tuning).", rich_help_panel="MCIR / SPN"),
    negative_mix: Optional[float] = typer.Option(None, help="α of the mix init: θ' = α·θ_rand + (1−α)·θ (default: preset or 0.1).", rich_help_panel="MCIR / SPN"),
    batched_negatives: str = typer.Option("auto", help="auto | on | off: all negatives in one vmap call.", rich_help_panel="MCIR / SPN"),
    embedding: Optional[str] = typer.Option(None, help="vgg16 (authors' config, default) | vgg19 (AECR-Net) | pixel.", rich_help_panel="MCIR / SPN"),
    embedding_weights: Optional[Path] = typer.Option(None, help="Local VGG weights (.pth/.safetensors) when torchvision's cache is empty.", rich_help_panel="MCIR / SPN"),
    embedding_init: str = typer.Option("pretrained", help="pretrained | random (offline fallback; not the paper's loss).", rich_help_panel="MCIR / SPN"),
    noise_sigma: Optional[float] = typer.Option(None, help="Denoising: σ (0–255) of the noise added to clean patches.", rich_help_panel="Data"),
    jpeg_quality: Optional[str] = typer.Option(None, help="JPEG: quality (1–100) clean patches are compressed at, or a range for a blind model (10-95: one drawn per patch); clean validation images at the low end.", rich_help_panel="Data"),
    degradation: Optional[str] = typer.Option(None, help="realesrgan: SR inputs made on the fly from the HR images by Real-ESRGAN's second-order degradation; none: the folders' own LR (default: a preset's, e.g. realesrnet-x4plus; else none).", rich_help_panel="Data"),
    degradation_config: Optional[Path] = typer.Option(None, help="TOML with a \\[degradation] table (Real-ESRGAN's option names) changing the published defaults.", rich_help_panel="Data"),
    train_bn: bool = typer.Option(False, "--train-bn", help="Update BatchNorm running statistics (frozen by default).", rich_help_panel="Model"),
    seed: int = typer.Option(0, help="Seed for initialisation, patches and augmentation.", rich_help_panel="Optimisation"),
    device: str = typer.Option("auto", help="auto | cuda | cpu", rich_help_panel="Speed"),
    amp: Optional[str] = typer.Option(None, help="auto (default: fp32 everywhere) | bf16-negatives (negatives and VGG in bf16 on CUDA) | bf16 (the target too) | fp32.", rich_help_panel="Speed"),
    val_every: int = typer.Option(0, help="Validate every K steps (0: only at the end).", rich_help_panel="Validation"),
    save_every: int = typer.Option(0, help="Save a resumable state every K steps (0: at the end / on Ctrl-C).", rich_help_panel="Run control"),
    log_every: int = typer.Option(1, help="Log every K steps.", rich_help_panel="Run control"),
    workers: int = typer.Option(0, help="DataLoader worker processes.", rich_help_panel="Data"),
    cache: str = typer.Option("auto", help="auto | on | off: keep decoded training images in RAM.", rich_help_panel="Data"),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to RUN/tensorboard (needs tensorboard).", rich_help_panel="Run control"),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Allow a preset without pretrained weights (random init).", rich_help_panel="Model"),
    compile: str = typer.Option("auto", "--compile", help="auto | on | off: torch.compile the target, negatives and embedding (auto: CUDA runs of >= 10k steps).", rich_help_panel="Speed"),
    channels_last: str = typer.Option("auto", "--channels-last", help="auto | on | off: NHWC memory layout (auto: CUDA, convolution-dominated networks).", rich_help_panel="Speed"),
    collapse_factor: float = typer.Option(10.0, help="Collapse guard: a reconstruction error above this x its running median rolls back and halves λ (the lr in a plain run).", rich_help_panel="Run control"),
    val_drop: float = typer.Option(1.0, help="Collapse guard: a validation this many dB below the starting weights' rolls back too.", rich_help_panel="Run control"),
    tile: Optional[int] = typer.Option(None, help="Validate in tiles of this size (input pixels) to save GPU memory.", rich_help_panel="Validation"),
    config: Optional[Path] = typer.Option(None, "--config", help="A run file: run.toml (keys: these flags' names; a preset's [recipe]/[spn] tables) or a finished run's config.json; flags given here win.", rich_help_panel="Run control"),
) -> None:
    """Fine-tune a pretrained model with EMA negative models and the SPN loss (MCIR).

    Example: mcir retrain --checkpoint DCTLSA/X4.pt --data DIV2K/ --val Set5/ --iters 20000 -o runs/mcir

    The baseline to compare with: the same command with --negative-init none.
    """
    from mcir_cli.data.realesrgan.settings import degradation_flags
    from mcir_cli.train.config import load_run_config, make_config, parse_band, parse_lambda, parse_steps
    from mcir_cli.train.distributed import DistContext
    from mcir_cli.train.run import retrain as run_retrain

    dist = DistContext.from_env(device)
    if resume is not None:
        if config is not None:
            raise McirError("--resume continues the run as its config.json says; --config starts a new one")
        cfg = load_run_config(resume, iters, **_resume_settings(ctx, resume))
    else:
        lam_value, lam_auto = parse_lambda(lam) if lam is not None else (None, False)
        flags = dict(
            data=data, output=output, checkpoint=checkpoint, model=model, scale=scale, res_scale=res_scale,
            task=task, val=tuple(str(v) for v in val) if val else None, iters=iters, batch=batch, patch=patch, lr=lr,
            schedule=schedule, warmup=warmup, grad_clip=grad_clip, ema_decay=ema_decay, loss=loss,
            lam=lam_value, lam_auto=lam_auto, ratio_band=parse_band(ratio_band),
            negative_steps=parse_steps(negative_steps) if negative_steps is not None else None,
            negative_weight=negative_weight, negative_init=negative_init, negative_mix=negative_mix,
            batched_negatives=batched_negatives, embedding=embedding,
            embedding_weights=str(embedding_weights) if embedding_weights else None,
            embedding_init=embedding_init, seed=seed, device=device, amp=amp, train_bn=train_bn,
            noise_sigma=noise_sigma, jpeg_quality=jpeg_quality, val_every=val_every, save_every=save_every, log_every=log_every,
            workers=workers, cache=cache, tensorboard=tensorboard, allow_random_init=from_scratch,
            compile=compile, channels_last=channels_last, collapse_factor=collapse_factor, val_drop=val_drop,
            tile=tile, **degradation_flags(degradation, degradation_config),
        )
        if config is not None:
            flags = _with_run_file(ctx, flags, config)
        if not flags["data"]:
            raise McirError("give a training folder with --data DIR")
        if flags["checkpoint"] is None and flags["model"] is None:
            raise McirError("give a model: --checkpoint FILE and/or --model PRESET")
        if flags["output"] is None:
            flags["output"] = _default_output(flags["model"], flags["checkpoint"], dist)
        cfg = make_config(flags.pop("data"), flags.pop("output"), checkpoint=flags.pop("checkpoint"),
                          model=flags.pop("model"), scale=flags.pop("scale"), **flags)
    on_step, stop_bar = _progress_line(cfg.iters, dist.is_main, plain=cfg.negative_init == "none")
    try:
        result = run_retrain(cfg, on_step=on_step, resume=resume is not None, dist=dist)
    finally:
        stop_bar()
        dist.close()
    if dist.is_main:
        _render_summary(result, cfg.lam_auto)
    if result.stop_kind is not None:  # a script's `mcir retrain && ...` must not carry on
        raise typer.Exit(result.exit_code)


def _default_output(model: str | None, checkpoint: Path | None, dist) -> Path:
    """No --output: a new ./runs/<name>-<date>-<time>/, chosen by rank 0, said on rank 0."""
    from mcir_cli.train.rundir import default_run_folder

    output = Path(dist.agree(str(default_run_folder(model, checkpoint))))
    if dist.is_main:
        err_console.print(f"no --output: the run folder will be {output}", highlight=False, soft_wrap=True)
    return output


# TrainConfig fields whose flag has another parameter name
_PARAM_OF = {"lam_auto": "lam", "allow_random_init": "from_scratch", "degradation_settings": "degradation_config"}


def _with_run_file(ctx: typer.Context, flags: dict, path: Path) -> dict:
    """The run file's values under the flags given on the command line."""
    from mcir_cli.train.config import load_config_file

    merged = dict(flags)
    for key, value in load_config_file(path).items():
        if not _given(ctx, _PARAM_OF.get(key, key)) or key not in flags:
            merged[key] = value
        elif key == "lam" and flags["lam"] is None:  # --lambda auto starts from the file's λ
            merged[key] = value
    return merged


def _given(ctx: typer.Context, name: str) -> bool:
    return getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")


def _resume_settings(ctx: typer.Context, resume: Path) -> dict:
    """What a resume may change (config.RESUME_SETTINGS); every other flag on the command
    line would be silently ignored (the run continues as its config.json says): refused."""
    from mcir_cli.train.config import RESUME_SETTINGS

    given = [next((o for o in p.opts if o.startswith("--")), p.name) for p in ctx.command.params
             if p.name not in ("resume", "iters", *RESUME_SETTINGS) and _given(ctx, p.name)]
    if given:
        raise McirError(f"--resume continues the run as configured in its config.json; only --iters, "
                        f"--workers, --save-every, --log-every, --val-every and --tensorboard may change "
                        f"(remove {', '.join(given)})", resume)
    return {k: ctx.params[k] for k in RESUME_SETTINGS if _given(ctx, k)}


def _progress_line(iters: int, is_main: bool, plain: bool = False):
    """(on_step, stop): a bar that starts with the first step (errors before it print no
    empty bar); in pipes and logs a plain line every tenth of the run instead. A plain run
    (no negatives) shows no contrast ratio or λ: neither acts there."""
    bar = progress_bar(TextColumn("{task.fields[info]}"), transient=False, quiet_in_pipes=False)
    live = is_main and err_console.is_terminal
    job = None
    every = max(1, iters // 10)

    def on_step(s) -> None:
        nonlocal job
        spn = "" if plain else f"  ratio {s.ratio:.1%}  λ {s.lam:.2g}"
        info = f"l_rec {s.l_rec:.4f}{spn}  {s.it_s:.2f} it/s"
        if live:
            if job is None:
                bar.start()
                job = bar.add_task("retrain", total=iters, info="")
            bar.update(job, completed=s.step, info=info)
        elif is_main and (s.step % every == 0 or s.step == iters):
            err_console.print(f"retrain {s.step}/{iters}  {info}", highlight=False)

    def stop() -> None:
        if job is not None:
            bar.stop()

    return on_step, stop


def _render_summary(result, lam_auto: bool) -> None:
    if result.stopped_early:
        err_console.print(f"[yellow]{escape(result.stopped_early)}[/]")
    done = "retrained" if not result.stopped_early else "stopped"
    console.print(f"[bold green]{done}[/] {result.steps} step{'s' if result.steps != 1 else ''} -> {result.run_dir}")
    for name, path in sorted(result.outputs.items()):
        console.print(f"  {name}: {path}")
    if result.best_psnr is not None:
        at = ("the starting weights: no step beat them" if result.best_step == 0 else f"step {result.best_step}")
        conv = f" ({result.val_conventions})" if result.val_conventions else ""
        console.print(f"  best validation PSNR: {result.best_psnr:.2f} dB at {at}{conv}", highlight=False)
    if result.collapses:
        console.print(f"  [yellow]collapse guard: {result.collapses} event{'s' if result.collapses != 1 else ''} "
                      "(rolled back; see the collapse lines in log.jsonl)[/]", highlight=False)
    if result.mean_ratio is not None:
        lo, hi = result.ratio_band
        inside = lo <= result.mean_ratio <= hi
        colour = "green" if inside else "yellow"
        from mcir_cli.train.guard import lambda_hint

        hint = lambda_hint(result.ratio_per_lambda or 0.0, result.ratio_band)
        advice = "" if inside else f" — outside mcir's heuristic band; {hint}" + ("" if lam_auto else " (or --lambda auto)")
        console.print(
            f"  contrast ratio λ·l_neg/l_rec: mean [{colour}]{result.mean_ratio:.2%}[/] "
            f"(band {lo:.0%}–{hi:.0%}, mcir's heuristic, not from the paper){advice}", highlight=False, soft_wrap=True,
        )
