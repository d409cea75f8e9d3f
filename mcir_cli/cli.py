"""The `mcir` command line: a thin Typer layer over the Python API.

Each command parses flags, calls one API function, and renders the result with Rich.
User errors (`McirError`, and OS errors such as an unwritable folder) print one red line
and exit with code 2; anything else is a bug: one line, exit 1, the traceback with
MCIR_DEBUG=1.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mcir_cli.errors import McirError
from mcir_cli.fsutil import writable_target

# tables stay readable in pipes and logs, where Rich would otherwise wrap at 80 columns
_PIPE_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(width=_PIPE_WIDTH)
err_console = Console(stderr=True)

app = typer.Typer(
    name="mcir",
    help="Retrain image-restoration models with model contrastive learning (MCIR) and prove the gain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List presets and supported architectures; inspect checkpoints.")
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        import torch

        from mcir_cli import __version__

        console.print(f"mcir {__version__} (torch {torch.__version__})", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Retrain image-restoration models with model contrastive learning (MCIR) and prove the gain."""


def _setup_logging(verbose: bool = False) -> None:
    logger = logging.getLogger("mcir")
    if not logger.handlers:
        handler = RichHandler(console=err_console, show_path=False, show_time=False)
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one line and exit code 2; never a traceback for those."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            return func(*args, **kwargs)
        except McirError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except OSError as exc:  # a folder that cannot be written, a full disk, ...
            if os.environ.get("MCIR_DEBUG"):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or type(exc).__name__}", 2)
        except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback on request
            if os.environ.get("MCIR_DEBUG"):
                raise
            text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            _fail(f"unexpected {text} (MCIR_DEBUG=1 shows the traceback; please report it)", 1)

    return wrapper


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,  # no bar remnants in logs and pipes
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from mcir_cli.fsutil import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def results_table(result: dict[str, Any], title: str | None = None) -> Table:
    """A row per dataset with PSNR, SSIM and the image count, plus the average."""
    conv = result["conventions"]
    caption = f"conventions: {conv.get('description', conv)}"
    if result.get("noise"):  # synthetic noise is part of what the numbers mean
        caption += f"; Gaussian noise σ={result['noise']['sigma']:g} (0–255), seed {result['noise']['seed']}"
    table = Table(title=title, caption=caption)
    table.add_column("dataset")
    table.add_column("PSNR (dB)", justify="right")
    table.add_column("SSIM", justify="right")
    table.add_column("images", justify="right")
    rows = result["datasets"]
    for name, d in rows.items():
        table.add_row(name, f"{d['psnr']:.2f}", f"{d['ssim']:.4f}", str(len(d["images"])))
    if len(rows) > 1:
        avg_p = sum(d["psnr"] for d in rows.values()) / len(rows)
        avg_s = sum(d["ssim"] for d in rows.values()) / len(rows)
        n = sum(len(d["images"]) for d in rows.values())
        # the mean of the dataset means (how papers average benchmarks), not of all images
        table.add_row(f"[bold]mean of {len(rows)} datasets[/]", f"[bold]{avg_p:.2f}", f"[bold]{avg_s:.4f}", f"{n} in all")
    return table


# ------------------------------------------------------------------------- evaluate


@app.command()
@handle_errors
def evaluate(
    data: list[Path] = typer.Option(..., "--data", help="Benchmark folder (repeatable)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint (.pth/.pt/.ckpt/.safetensors); architecture auto-detected."),
    model: Optional[str] = typer.Option(None, "--model", help="Preset name (see `mcir models`) or a preset .toml."),
    restored: Optional[Path] = typer.Option(None, help="Score images already restored by any method instead of a model."),
    bicubic: bool = typer.Option(False, "--bicubic", help="Score the bicubic baseline (MATLAB imresize of the LR) instead of a model."),
    scale: Optional[int] = typer.Option(None, help="SR scale (defaults to the model's)."),
    task: Optional[str] = typer.Option(None, help="sr | dehaze | derain | deblur | denoise (default: from the model or folder layout)."),
    y_channel: Optional[bool] = typer.Option(None, "--y-channel/--rgb", help="Score on Y (BT.601) or RGB (default: Y for SR, RGB otherwise)."),
    crop_border: Optional[int] = typer.Option(None, help="Pixels cropped from each edge (default: scale for SR, 0 otherwise)."),
    noise_sigma: Optional[float] = typer.Option(None, help="Denoising: Gaussian noise σ on the 0–255 scale added to clean images."),
    noise_seed: int = typer.Option(0, help="Seed of the added noise."),
    tile: Optional[int] = typer.Option(None, help="Tile size (input pixels) for large images; tiles see less context, so attention models score slightly differently."),
    tile_overlap: int = typer.Option(32, help="Overlap between tiles (input pixels)."),
    device: str = typer.Option("auto", help="auto | cuda | cpu"),
    amp: Optional[str] = typer.Option(None, help="bf16: autocast on CUDA (scores then differ slightly from fp32); default fp32."),
    save_images: Optional[Path] = typer.Option(None, help="Write restored images to this folder."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results as JSON."),
) -> None:
    """Score a model (or restored images) on benchmark folders with BasicSR's PSNR/SSIM."""
    from mcir_cli.evaluate import evaluate_bicubic, evaluate_model, evaluate_restored
    from mcir_cli.models import load_model

    _check_scoring_flags(task, crop_border, noise_sigma, tile, tile_overlap)
    sources = [flag for flag, given in (("--checkpoint/--model", checkpoint or model), ("--restored", restored),
                                        ("--bicubic", bicubic)) if given]
    if len(sources) > 1:
        raise McirError(f"score one thing at a time: {' and '.join(sources)} were both given")
    if bicubic and task not in (None, "sr"):
        raise McirError("--bicubic is the SR baseline; it has no meaning for --task " + task)
    if amp not in (None, "bf16", "fp32", "none"):
        raise McirError(f"--amp must be bf16 or fp32 (got {amp!r})")
    if save_images is not None:
        if save_images.exists() and not save_images.is_dir():
            raise McirError("--save-images must be a folder, this is a file", save_images)
        if save_images.exists() and any(save_images.iterdir()):
            raise McirError("--save-images folder exists and is not empty; choose a new one", save_images)
        writable_target(save_images, "--save-images folder")
    if output is not None:
        if output.exists():
            raise McirError("output file exists; choose a new name (mcir never overwrites results)", output)
        writable_target(output, "results")
    with _progress() as bar:
        tasks: dict[str, Any] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        if bicubic:
            result = evaluate_bicubic(data, scale=scale, y_channel=y_channel, crop_border=crop_border, progress=progress)
        elif restored is not None:
            result = evaluate_restored(
                restored, data, scale=scale, task=task, y_channel=y_channel,
                crop_border=crop_border, progress=progress,
            )
        else:
            loaded = load_model(checkpoint, model, scale)
            result = evaluate_model(
                loaded, data, task=task, y_channel=y_channel, crop_border=crop_border,
                device=device, tile=tile, overlap=tile_overlap, amp=amp,
                save_images=save_images, noise_sigma=noise_sigma, noise_seed=noise_seed,
                progress=progress,
            )
    info = result["model"]
    title = f"{info['label']} ({info['architecture']}, x{info['scale']})"
    console.print(results_table(result, title))
    for note in result.get("notes", []):
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if output is not None:
        _write_json(output, result)
        console.print(f"results written to {output}")


def _check_scoring_flags(task: str | None, crop_border: int | None, noise_sigma: float | None,
                         tile: int | None = None, tile_overlap: int = 0) -> None:
    """Flags of evaluate/compare, refused in one line before any work."""
    from mcir_cli.models import check_noise_sigma, check_task_name

    check_task_name(task)
    check_noise_sigma(noise_sigma)
    if crop_border is not None and crop_border < 0:
        raise McirError(f"--crop-border must be >= 0 (got {crop_border})")
    if tile is not None and tile < 8:
        raise McirError(f"--tile must be at least 8 pixels (got {tile})")
    if tile_overlap < 0:
        raise McirError(f"--tile-overlap must be >= 0 (got {tile_overlap})")
    if tile is not None and tile_overlap >= tile:
        raise McirError(f"--tile-overlap {tile_overlap} must be smaller than --tile {tile}")


def _ratio_band(text: str) -> tuple[float, float]:
    try:
        band = tuple(float(x) for x in text.split(","))
    except ValueError:
        band = ()
    if len(band) != 2:
        raise McirError(f"--ratio-band must be two numbers low,high such as 0.01,0.10 (got {text!r})")
    return band  # type: ignore[return-value]


# -------------------------------------------------------------------------- retrain


def _lambda(value: str) -> tuple[float, bool]:
    if value == "auto":
        return 1e-4, True
    try:
        return float(value), False
    except ValueError:
        raise McirError(f"--lambda must be a number or 'auto' (got {value!r})") from None


@app.command()
@handle_errors
def retrain(
    ctx: typer.Context,
    data: list[Path] = typer.Option(None, "--data", help="Training folder (repeatable): HR-only, HR+LR or paired layouts."),
    checkpoint: Optional[Path] = typer.Option(None, help="Pretrained checkpoint (read only, never written)."),
    model: Optional[str] = typer.Option(None, "--model", help="Preset (recipe defaults); see `mcir models`."),
    scale: Optional[int] = typer.Option(None, help="SR scale (checked against the checkpoint)."),
    task: Optional[str] = typer.Option(None, help="sr | dehaze | derain | deblur | denoise (default: from model/layout)."),
    val: Optional[list[Path]] = typer.Option(None, "--val", help="Validation folder (repeatable); the best mean PSNR's weights are kept as best.*"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="New run folder (must not exist)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this folder (bit-exact)."),
    iters: Optional[int] = typer.Option(None, help="Total optimizer steps (default: 1000; from scratch: the preset's)."),
    batch: Optional[int] = typer.Option(None, help="Patches per step (per rank) (default: preset or 16)."),
    patch: Optional[int] = typer.Option(None, help="Input patch size (LR pixels for SR) (default: preset or 48/128)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: a preset's: where its schedule ends (from scratch: its start); bare checkpoint: 1e-5)."),
    schedule: Optional[str] = typer.Option(None, help="constant | multistep | cosine (default: constant; from scratch: the preset's)."),
    warmup: Optional[int] = typer.Option(None, help="Linear warm-up steps (default: preset or 0)."),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the gradient norm to this value."),
    ema_decay: Optional[float] = typer.Option(None, help="EMA of the weights, validated and written (default: the preset's, e.g. SwinIR 0.999; else 0 = off)."),
    loss: Optional[str] = typer.Option(None, help="Reconstruction loss: l1 | charbonnier | mse | psnr | ssim (default: preset or l1)."),
    lam: Optional[str] = typer.Option(None, "--lambda", help="SPN weight λ (default: preset or the paper's 1e-4), or 'auto' to hold the contrast ratio in band."),
    ratio_band: str = typer.Option("0.01,0.10", help="Contrast-ratio band λ·l_neg/l_rec for warnings and --lambda auto."),
    negative_steps: Optional[str] = typer.Option(None, help="Update period s_i of each negative (default: preset or the paper's 100,500,1000,2000)."),
    negative_weight: Optional[float] = typer.Option(None, help="EMA weight w of the old negative (default: preset or the paper's 0.1)."),
    negative_init: Optional[str] = typer.Option(None, help="mix (authors' code, default) | copy | random | frozen | none (plain fine-tuning)."),
    negative_mix: Optional[float] = typer.Option(None, help="α of the mix init: θ' = α·θ_rand + (1−α)·θ (default: preset or 0.1)."),
    batched_negatives: str = typer.Option("auto", help="auto | on | off: all negatives in one vmap call."),
    embedding: Optional[str] = typer.Option(None, help="vgg16 (authors' config, default) | vgg19 (AECR-Net) | pixel."),
    embedding_weights: Optional[Path] = typer.Option(None, help="Local VGG weights (.pth/.safetensors) when torchvision's cache is empty."),
    embedding_init: str = typer.Option("pretrained", help="pretrained | random (offline fallback; not the paper's loss)."),
    noise_sigma: Optional[float] = typer.Option(None, help="Denoising: σ (0–255) of the noise added to clean patches."),
    train_bn: bool = typer.Option(False, "--train-bn", help="Update BatchNorm running statistics (frozen by default)."),
    seed: int = typer.Option(0, help="Seed for initialisation, patches and augmentation."),
    device: str = typer.Option("auto", help="auto | cuda | cpu"),
    amp: Optional[str] = typer.Option(None, help="auto (default: target fp32; negatives and VGG bf16 on CUDA) | bf16 (the target too) | fp32."),
    val_every: int = typer.Option(0, help="Validate every K steps (0: only at the end)."),
    save_every: int = typer.Option(0, help="Save a resumable state every K steps (0: at the end / on Ctrl-C)."),
    log_every: int = typer.Option(1, help="Log every K steps."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    cache: str = typer.Option("auto", help="auto | on | off: keep decoded training images in RAM."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to RUN/tensorboard (needs tensorboard)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Allow a preset without pretrained weights (random init)."),
    compile: str = typer.Option("auto", "--compile", help="auto | on | off: torch.compile the target, negatives and embedding (auto: CUDA runs of >= 10k steps)."),
    channels_last: str = typer.Option("auto", "--channels-last", help="auto | on | off: NHWC memory layout (auto: CUDA, convolution-dominated networks)."),
    collapse_factor: float = typer.Option(10.0, help="Collapse guard: l_rec above this x its running median rolls back and halves λ."),
    tile: Optional[int] = typer.Option(None, help="Validate in tiles of this size (input pixels) to save GPU memory."),
) -> None:
    """Fine-tune a pretrained model with EMA negative models and the SPN loss (MCIR)."""
    from mcir_cli.distributed import DistContext
    from mcir_cli.train import RESUME_SETTINGS, load_run_config, make_config, parse_steps, validate_config
    from mcir_cli.train import retrain as run_retrain

    dist = DistContext.from_env(device)
    if resume is not None:
        # every flag on the command line besides --resume and --iters would be silently
        # ignored (the run continues as its config.json says): refuse them by name
        given = [
            next((o for o in p.opts if o.startswith("--")), p.name)
            for p in ctx.command.params
            if p.name not in ("resume", "iters", *RESUME_SETTINGS)
            and getattr(ctx.get_parameter_source(p.name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")
        ]
        if given:
            raise McirError(f"--resume continues the run as configured in its config.json; only --iters, "
                            f"--workers, --save-every, --log-every, --val-every and --tensorboard may change "
                            f"(remove {', '.join(given)})", resume)
        chosen = {k: v for k, v in (("workers", workers), ("save_every", save_every), ("log_every", log_every),
                                    ("val_every", val_every), ("tensorboard", tensorboard))
                  if getattr(ctx.get_parameter_source(k), "name", "") in ("COMMANDLINE", "ENVIRONMENT")}
        cfg = load_run_config(resume, iters, **chosen)
        is_resume = True
    else:
        if not data:
            raise McirError("give a training folder with --data DIR")
        if output is None:
            raise McirError("give a new run folder with --output RUN")
        if checkpoint is None and model is None:
            raise McirError("give a model: --checkpoint FILE and/or --model PRESET")
        lam_value, lam_auto = _lambda(lam) if lam is not None else (None, False)
        cfg = make_config(
            data, output, checkpoint=checkpoint, model=model, scale=scale,
            task=task, val=tuple(str(v) for v in val) if val else None, iters=iters, batch=batch, patch=patch, lr=lr,
            schedule=schedule, warmup=warmup, grad_clip=grad_clip, ema_decay=ema_decay, loss=loss,
            lam=lam_value, lam_auto=lam_auto, ratio_band=_ratio_band(ratio_band),
            negative_steps=parse_steps(negative_steps) if negative_steps is not None else None,
            negative_weight=negative_weight, negative_init=negative_init, negative_mix=negative_mix,
            batched_negatives=batched_negatives, embedding=embedding,
            embedding_weights=str(embedding_weights) if embedding_weights else None,
            embedding_init=embedding_init, seed=seed, device=device, amp=amp, train_bn=train_bn,
            noise_sigma=noise_sigma, val_every=val_every, save_every=save_every, log_every=log_every,
            workers=workers, cache=cache, tensorboard=tensorboard, allow_random_init=from_scratch,
            compile=compile, channels_last=channels_last, collapse_factor=collapse_factor, tile=tile,
        )
        is_resume = False
    validate_config(cfg)

    # the bar starts with the first step (errors before it print no empty bar); in pipes
    # and logs a plain line every tenth of the run instead
    bar = Progress(
        TextColumn("[bold]retrain"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=err_console,
    )
    live = dist.is_main and err_console.is_terminal
    job = None
    every = max(1, cfg.iters // 10)

    def on_step(s) -> None:
        nonlocal job
        info = f"l_rec {s.l_rec:.4f}  ratio {s.ratio:.1%}  λ {s.lam:.2g}  {s.it_s:.2f} it/s"
        if live:
            if job is None:
                bar.start()
                job = bar.add_task("retrain", total=cfg.iters, info="")
            bar.update(job, completed=s.step, info=info)
        elif dist.is_main and (s.step % every == 0 or s.step == cfg.iters):
            err_console.print(f"retrain {s.step}/{cfg.iters}  {info}", highlight=False)

    try:
        result = run_retrain(cfg, on_step=on_step, resume=is_resume, dist=dist)
    finally:
        if job is not None:
            bar.stop()
        dist.close()
    if not dist.is_main:
        return
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
    if result.mean_ratio is not None:
        lo, hi = result.ratio_band
        inside = lo <= result.mean_ratio <= hi
        colour = "green" if inside else "yellow"
        retry = "try another --lambda" if cfg.lam_auto else "try another --lambda or --lambda auto"
        advice = "" if inside else f" — outside the band the authors advise; {retry}"
        console.print(
            f"  contrast ratio λ·l_neg/l_rec: mean [{colour}]{result.mean_ratio:.2%}[/] "
            f"(band {lo:.0%}–{hi:.0%}){advice}", highlight=False,
        )
    if result.stop_kind is not None:  # a script's `mcir retrain && ...` must not carry on
        raise typer.Exit(130 if result.stop_kind == "signal" else 1)


# ------------------------------------------------------------------------- compare


def _compare_inputs(results: list[Path], checkpoint: list[Path], data: list[Path], model_flags: dict[str, Any]) -> str:
    """Which of the two ways to call `compare` this is: 'json' or 'checkpoint'."""
    if results and checkpoint:
        raise McirError("give result JSONs or --checkpoint files, not both")
    if checkpoint:
        if len(checkpoint) < 2:
            raise McirError("compare needs at least two --checkpoint files (the first is the baseline)")
        if not data:
            raise McirError("--checkpoint needs benchmark folders: add --data DIR (repeatable)")
        return "checkpoint"
    if not results:
        raise McirError("give two or more result JSONs (from `mcir evaluate --output`), or "
                        "--checkpoint A --checkpoint B --data DIR")
    given = [flag for flag, value in model_flags.items() if value]
    if given:
        raise McirError(f"{', '.join(given)} only apply with --checkpoint; result JSONs were "
                        "scored already (their conventions are checked)")
    return "json"


@app.command()
@handle_errors
def compare(
    results: Optional[list[Path]] = typer.Argument(None, help="Result JSONs from `mcir evaluate --output` (the first is the baseline)."),
    checkpoint: Optional[list[Path]] = typer.Option(None, "--checkpoint", help="Instead of JSONs: checkpoints to evaluate with identical conventions (repeatable; the first is the baseline)."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="With --checkpoint: benchmark folder (repeatable)."),
    scale: Optional[int] = typer.Option(None, help="With --checkpoint: SR scale (checked against the checkpoints)."),
    task: Optional[str] = typer.Option(None, help="With --checkpoint: sr | dehaze | derain | deblur | denoise."),
    y_channel: Optional[bool] = typer.Option(None, "--y-channel/--rgb", help="With --checkpoint: score on Y (BT.601) or RGB (default: Y for SR)."),
    crop_border: Optional[int] = typer.Option(None, help="With --checkpoint: pixels cropped from each edge (default: scale for SR)."),
    device: str = typer.Option("auto", help="auto | cuda | cpu (evaluation and visuals)."),
    tile: Optional[int] = typer.Option(None, help="Tile size (input pixels) for large images."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the comparison as JSON (new file)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write a Markdown report (new file)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write per-image scores and deltas as CSV (new file)."),
    latex: Optional[Path] = typer.Option(None, "--latex", help="Write a booktabs LaTeX table (new file)."),
    visuals: Optional[Path] = typer.Option(None, "--visuals", help="Folder (new or empty) for comparison strips and Δ bar charts."),
    label: Optional[list[str]] = typer.Option(None, "--label", help="Names for the models, in order (repeatable; default: from the file names)."),
    top_k: int = typer.Option(3, help="Strips for the k images per dataset with the largest |Δ PSNR|."),
    resamples: int = typer.Option(10_000, help="Bootstrap / permutation resamples."),
    seed: int = typer.Option(0, help="Seed of the resampling."),
) -> None:
    """Compare a baseline with retrained models image by image: table, Δ, 95 % CI, p, visuals."""
    from mcir_cli import compare as cmp

    mode = _compare_inputs(results or [], checkpoint or [], data or [], {
        "--data": data, "--scale": scale is not None, "--task": task is not None,
        "--y-channel/--rgb": y_channel is not None, "--crop-border": crop_border is not None,
    })
    _check_scoring_flags(task, crop_border, None, tile)
    if resamples < 1:
        raise McirError(f"--resamples must be at least 1 (got {resamples})")
    if top_k < 1:
        raise McirError(f"--top-k must be at least 1 (got {top_k})")
    exports = cmp.check_export_paths({"json": json_out, "markdown": markdown, "csv": csv_out, "latex": latex})
    if visuals is not None and visuals.exists():
        if not visuals.is_dir():
            raise McirError("--visuals must be a folder, this is a file", visuals)
        if any(visuals.iterdir()):
            raise McirError("--visuals folder exists and is not empty; choose a new one", visuals)
    if visuals is not None:
        writable_target(visuals, "--visuals folder")

    loaded: list[Any] = []
    datasets: dict[str, Any] | None = None
    sources: list[Path] = []
    if mode == "json":
        sources = list(results or [])
        result_dicts = [cmp.load_result(p) for p in sources]
    else:
        with _progress() as bar:
            tasks: dict[str, Any] = {}

            def progress(label: str, name: str, done: int, total: int) -> None:
                key = f"{label}: {name}"
                if key not in tasks:
                    tasks[key] = bar.add_task(key, total=total)
                bar.update(tasks[key], completed=done)

            result_dicts, loaded, datasets = cmp.evaluate_checkpoints(
                list(checkpoint or []), list(data or []), scale=scale, task=task, y_channel=y_channel,
                crop_border=crop_border, device=device, tile=tile, progress=progress,
            )
    if label:
        if len(label) != len(result_dicts):
            raise McirError(f"--label given {len(label)} time(s) for {len(result_dicts)} models; name every model, in order")
        for res, name in zip(result_dicts, label):
            res["model"]["label"] = name
    comparison = cmp.compare_results(result_dicts, n_resamples=resamples, seed=seed)
    console.print(cmp.render_table(comparison))
    for msg in comparison.dropped.messages():
        err_console.print(f"[yellow]{msg}[/]", highlight=False)
    console.print(f"[bold]Evidence[/] (paired over images; 95 % bootstrap CI, {resamples} resamples, "
                  f"seed {seed}; sign-flip permutation p):", highlight=False)
    for line in cmp.render_evidence(comparison):
        console.print(f"  {line}", highlight=False, soft_wrap=True)

    for path in cmp.write_exports(comparison, exports):
        console.print(f"written: {path}", highlight=False)
    if visuals is not None:
        from mcir_cli.visuals import VisualsUnavailable, load_visual_sources, write_comparison_visuals

        try:
            if mode == "json":
                loaded, datasets = load_visual_sources(result_dicts, sources)
            with _progress() as bar:
                job = bar.add_task("visuals", total=None)
                out = write_comparison_visuals(
                    comparison, loaded, datasets or {}, visuals, top_k, device=device, tile=tile,
                    noise=result_dicts[0].get("noise"),
                    progress=lambda done, total: bar.update(job, completed=done, total=total),
                )
        except VisualsUnavailable as exc:  # asked for and not made: the exit code says so
            raise McirError(f"--visuals could not be made ({exc}); the table and exports above are complete") from None
        for msg in out["skipped"]:
            err_console.print(f"[yellow]{msg}[/]", highlight=False)
        console.print(f"visuals: {len(out['strips'])} strips and {len(out['charts'])} charts in {visuals}",
                      highlight=False)


# ---------------------------------------------------------------------------- demo


@app.command()
@handle_errors
def demo(
    output: Path = typer.Option(Path("mcir-demo"), "--output", "-o", help="New folder for everything the demo makes (must not exist)."),
    iters: int = typer.Option(40, help="Steps of each of the two retrains."),
    device: str = typer.Option("auto", help="auto | cuda | cpu"),
    embedding_weights: Optional[Path] = typer.Option(None, help="Local torchvision VGG16 weights for the SPN embedding when torchvision's cache is empty."),
) -> None:
    """The whole path offline in a few minutes: data, a model, MCIR vs plain retraining, proof."""
    import time

    from mcir_cli import compare as cmp
    from mcir_cli.demo import run_demo

    t0 = time.perf_counter()

    def say(message: str, kind: str) -> None:
        style = "bold yellow" if kind == "warn" else "cyan"
        err_console.print(f"[{style}]{message}[/]", highlight=False, soft_wrap=True)

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True,
    ) as bar:
        jobs: dict[str, Any] = {}

        def on_step(name: str, step: int, total: int) -> None:
            if name not in jobs:
                jobs[name] = bar.add_task(f"train {name}", total=total)
            bar.update(jobs[name], completed=step)

        result = run_demo(output, iters=iters, device=device, embedding_weights=embedding_weights,
                          say=say, on_step=on_step)
    console.print(cmp.render_table(result.comparison))
    console.print("[bold]Evidence[/] (paired over images; 95 % bootstrap CI; sign-flip permutation p):")
    for line in cmp.render_evidence(result.comparison):
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    console.print("[bold]MCIR vs plain fine-tuning[/] (baseline: plain):")
    for line in cmp.render_evidence(result.head_to_head):
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    for message in result.notes:
        err_console.print(f"[bold yellow]note:[/] {message}", highlight=False, soft_wrap=True)
    console.print(f"start model: {result.model}", highlight=False, soft_wrap=True)
    console.print(f"report: {result.summary}   visuals: {result.output / 'visuals'}   "
                  f"runs: {', '.join(str(p) for p in result.runs.values())}", highlight=False, soft_wrap=True)
    console.print(f"done in {time.perf_counter() - t0:.0f} s", highlight=False)


# --------------------------------------------------------------------------- models


def _weights_cell(preset) -> str:
    """The preset's pretrained file, green when found under $MCIR_WEIGHTS."""
    from mcir_cli.models import resolve_weights

    if not preset.weights_file:
        return "-"
    if resolve_weights(preset):  # said in words too: colour is lost in pipes and logs
        return f"[green]{preset.weights_file} (found)[/]"
    return f"[dim]{preset.weights_file} (not found)[/]"


def _short_source(source: str) -> str:
    """'https://github.com/owner/repo/blob/...' -> 'owner/repo' for a narrow table."""
    import re

    m = re.search(r"github\.com/([^/\s]+/[^/\s]+)", source)
    return m.group(1) if m else source[:40]


@models_app.callback(invoke_without_command=True)
@handle_errors
def models_list(ctx: typer.Context) -> None:
    """Presets (the paper's baselines and the shipped recipes) and detectable architectures."""
    if ctx.invoked_subcommand is not None:
        return
    import spandrel

    from mcir_cli import archs
    from mcir_cli.models import list_presets

    table = Table(title="presets (use with --model NAME)", caption="weights: the file a preset loads from a folder in $MCIR_WEIGHTS")
    for col in ("name", "task", "scale", "architecture", "params", "weights", "recipe source"):
        table.add_column(
            col,
            justify="right" if col in ("scale", "params") else "left",
            no_wrap=col in ("name", "task", "scale", "params"),
            overflow="fold",
        )
    for p in list_presets():
        table.add_row(
            p.name, p.task, f"x{p.scale}" if p.task == "sr" else "-", p.architecture,
            f"{p.params:,}" if p.params else "?", _weights_cell(p), _short_source(p.source),
        )
    console.print(table)
    archs.register()
    ours = set(archs.BUILDERS)
    names = sorted(a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures())
    console.print(
        "[bold]auto-detected architectures[/] (--checkpoint FILE): "
        + ", ".join(f"[cyan]{n}[/]" if n in ours else n for n in names)
        + "  ([cyan]cyan[/]: built into mcir)",
        highlight=False,
    )


@models_app.command("inspect")
@handle_errors
def models_inspect(file: Path = typer.Argument(..., help="A checkpoint file.")) -> None:
    """What a checkpoint is: architecture, scale, channels, parameters, wrapper."""
    from mcir_cli.models import load_checkpoint_model

    loaded = load_checkpoint_model(file)
    ckpt = loaded.checkpoint
    assert ckpt is not None
    table = Table(show_header=False, title=str(file))
    rows = [
        ("architecture", loaded.architecture),
        ("scale", f"x{loaded.scale}"),
        ("channels", f"{loaded.in_channels} in, {loaded.out_channels} out"),
        ("parameters", f"{loaded.num_params:,}"),
        ("wrapper", ckpt.describe_wrapper()),
        ("EMA copy", "yes" if ckpt.is_ema else "no"),
        ("format", ckpt.format),
        ("size requirement", f"min {loaded.min_size}, multiple of {loaded.multiple_of}"),
    ]
    if ckpt.metadata:
        rows.append(("metadata", "\n".join(f"{k} = {v[:100]}" for k, v in ckpt.metadata.items())))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


# click's usage errors (unknown option, missing value), from whichever click typer uses
_UsageError = typer.BadParameter.__mro__[1]


def main() -> None:
    """The `mcir` entry point: usage errors are one line, like every other error."""
    try:
        code = app(standalone_mode=False)
    except _UsageError as exc:
        if not exc.format_message():  # no arguments: the help was shown
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else " (see mcir --help)"
        err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}{where}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("[yellow]aborted[/]")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
