"""`mcir demo`: the whole path (data -> model -> two retrains -> evaluation -> proof) in one
offline command on a built-in default, small enough for a few minutes on two CPU cores.

1. Data (`demo_data.py`): photos bundled with scikit-image, shrunk, written as an HR-only
   training folder (`data/train/`) and a benchmark folder (`data/test/HR/` +
   `LR_bicubic/X4/`). Training and test photos are disjoint.
2. Model: DCTLSA x4 pretrained on DIV2K when its weights are found under $MCIR_WEIGHTS
   (preset `dctlsa-x4`, or `DCTLSA/X4.pt`); otherwise a small EDSR trained from scratch
   for a few hundred steps on the training photos (said loudly: the start is then weak).
3. Two retrains from that same start, same seed and data order: MCIR (EMA negatives,
   SPN loss, the authors' mix init, the paper's periods fitted to the demo's few steps:
   `--negative-steps auto`) and plain fine-tuning (`negative_init="none"`).
   The SPN embedding is the pretrained VGG16 when torchvision's cache or
   `embedding_weights` has it, else a random VGG16 (said loudly: not the paper's loss).
4. Evaluation of the start and both retrains on the test folder, the paired comparison
   (table + evidence sentences), the visuals, `summary.md` and `report.html` (the same
   as one self-contained page, with the runs' training curves).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mcir_cli._helpers.fsutil import atomic_write_text, writable_target
from mcir_cli.compare.exports import md_escape, to_markdown, write_exports
from mcir_cli.compare.results import compare_results, render_evidence
from mcir_cli.data.datasets import discover
from mcir_cli.data.demo_data import SCALE, TEST_PHOTOS, TRAIN_PHOTOS, Say, make_data
from mcir_cli.errors import McirError
from mcir_cli.evaluate.benchmarks import Scoring, evaluate_labelled
from mcir_cli.losses.embeddings import vgg_cache_path
from mcir_cli.models.archs import build_edsr
from mcir_cli.models.checkpoint import save_safetensors
from mcir_cli.models.loading import load_model, resolve_weights
from mcir_cli.models.presets import get_preset
from mcir_cli.render.curves import default_ratio_band
from mcir_cli.render.plot import plot_runs
from mcir_cli.render.report import comparison_report, write_report
from mcir_cli.train.config import TrainConfig, fitted_steps
from mcir_cli.train.guard import lambda_hint
from mcir_cli.train.run import TrainResult, retrain
from mcir_cli.workflows.visual_sources import write_comparison_visuals

PAPER_LAMBDA = 1e-4
RANDOM_VGG_LAMBDA = 0.05  # puts a random VGG16's SPN term at ~2-4 % of the loss (measured)

RETRAIN_LABELS = {"plain": "plain fine-tuning", "mcir": "MCIR"}  # run name -> label in every table

OnStep = Callable[[str, int, int], None]  # (run name, step, total)


@dataclass
class DemoResult:
    output: Path
    model: str  # what the start model is, in words
    pretrained: bool  # True: real pretrained weights; False: trained from scratch here
    embedding: str  # the SPN embedding, in words
    embedding_pretrained: bool
    train_images: list[str]
    test_images: list[str]
    runs: dict[str, Path]  # "plain" / "mcir" (and "start" when trained here) -> run folder
    results: dict[str, Path]  # label -> evaluation JSON
    comparison: Any  # results.Comparison of start, plain, MCIR
    head_to_head: Any  # results.Comparison of plain (baseline) vs MCIR
    summary: Path
    report: Path  # report.html: everything on one self-contained page
    curves: Path  # curves.png: both retrains' training curves (`mcir plot`)
    comparison_json: Path
    visuals: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    lam: float = 1e-4
    contrast_ratio: float | None = None  # mean λ·l_neg/l_rec of the MCIR run


# --------------------------------------------------------------------------- choices


def find_pretrained() -> tuple[Path | None, str]:
    """DCTLSA x4 weights: via the `dctlsa-x4` preset and $MCIR_WEIGHTS, or (when that
    preset is not shipped) `DCTLSA/X4.pt` under a folder in $MCIR_WEIGHTS."""
    try:
        path = resolve_weights(get_preset("dctlsa-x4"))
        if path is not None:
            return path, "preset dctlsa-x4"
    except McirError:
        pass
    for root in filter(None, os.environ.get("MCIR_WEIGHTS", "").split(os.pathsep)):
        candidate = Path(root) / "DCTLSA" / "X4.pt"
        if candidate.is_file():
            return candidate, "$MCIR_WEIGHTS"
    return None, ""


def choose_embedding(embedding_weights: str | Path | None) -> tuple[str, str | None, bool]:
    """(embedding_init, embedding_weights, pretrained?) without touching the network:
    explicit weights, else torchvision's cache, else random."""
    if embedding_weights is not None:
        path = Path(embedding_weights).expanduser()
        if not path.is_file():
            raise McirError("embedding weights file not found", path)
        return "pretrained", str(path), True
    if vgg_cache_path("vgg16").is_file():
        return "pretrained", None, True
    return "random", None, False


# --------------------------------------------------------------------------- the demo


@dataclass
class _Notes:
    """What the demo says as it goes (`say`) and keeps for its report (warnings)."""

    say: Say | None
    kept: list[str] = field(default_factory=list)

    def __call__(self, msg: str, kind: str = "info") -> None:
        if kind == "warn":
            self.kept.append(msg)
        if self.say:
            self.say(msg, kind)


def run_demo(
    output: str | Path,
    iters: int = 40,
    device: str = "auto",
    *,
    embedding_weights: str | Path | None = None,
    batch: int = 4,
    patch: int = 24,
    lr: float | None = None,
    lam: float | None = None,
    n_train: int = len(TRAIN_PHOTOS),
    n_test: int = len(TEST_PHOTOS),
    pretrain_iters: int = 300,
    top_k: int = 3,
    n_resamples: int = 10_000,
    seed: int = 0,
    use_pretrained: bool = True,
    say: Say | None = None,
    on_step: OnStep | None = None,
) -> DemoResult:
    """Run the demo into the new folder `output` (refused if it exists): data, a start
    model, plain and MCIR retrains from it, their evaluation, comparison and pictures."""
    out = Path(output)
    if out.exists():
        raise McirError("demo folder exists; choose a new --output (mcir never overwrites)", out)
    writable_target(out, "demo folder")
    if iters < 1:
        raise McirError(f"--iters must be at least 1 (got {iters})")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    note = _Notes(say)
    emb_init, emb_weights, emb_pretrained = choose_embedding(embedding_weights)
    out.mkdir(parents=True)

    train_dir, test_dir, train_names, test_names = make_data(out / "data", n_train, n_test, SCALE, note)
    note(f"data: {len(train_names)} training photos in {train_dir}, "
         f"{len(test_names)} test photos in {test_dir} (x{SCALE}, MATLAB bicubic)")
    timings["data"] = time.perf_counter() - t0

    start = _start_model(out, train_dir, note, use_pretrained=use_pretrained, patch=patch,
                         pretrain_iters=pretrain_iters, seed=seed, device=device, on_step=on_step)
    runs = {} if start.run is None else {"start": start.run}
    if start.seconds is not None:
        timings["pretrain"] = start.seconds
    lr = (1e-5 if start.pretrained else 1e-4) if lr is None else lr
    emb_text = "VGG16 relu1_2/2_2/3_3 with ImageNet weights (the authors' embedding)" if emb_pretrained else \
        "VGG16 with RANDOM weights"
    lam = _demo_lambda(lam, emb_pretrained, note)
    steps = fitted_steps(iters)
    common = dict(checkpoint=str(start.ckpt), scale=SCALE, task="sr", iters=iters, batch=batch, patch=patch,
                  lr=lr, schedule="constant", lam=lam, negative_steps=steps, embedding="vgg16",
                  embedding_weights=emb_weights, embedding_init=emb_init, seed=seed, device=device, cache="on")
    trained = _retrain_both(out, train_dir, common, note, on_step)
    for name, (res, seconds) in trained.items():
        runs[name], timings[f"retrain {name}"] = res.run_dir, seconds
    ratio = _check_ratio(trained["mcir"][0], note)
    scored = _score_and_compare(out, test_dir, start, runs, device=device, top_k=top_k,
                                n_resamples=n_resamples, seed=seed)
    timings.update(scored.seconds)
    timings["total"] = time.perf_counter() - t0
    result = DemoResult(
        output=out, model=start.text, pretrained=start.pretrained, embedding=emb_text,
        embedding_pretrained=emb_pretrained, train_images=train_names, test_images=test_names, runs=runs,
        results=scored.results, comparison=scored.comparison, head_to_head=scored.head_to_head,
        summary=out / "summary.md", report=out / "report.html", curves=out / "curves.png",
        comparison_json=scored.comparison_json, visuals=scored.visuals,
        notes=note.kept, timings=timings, lam=lam, contrast_ratio=ratio,
    )
    atomic_write_text(result.summary, summary_markdown(result, iters, batch, patch, lr, steps))
    _write_report(result, scored.strips)
    return result


def _write_report(r: DemoResult, strips: list[Path]) -> None:
    """report.html (both comparisons, the strips and the two retrains' curves) and
    curves.png (the curves alone, as `mcir plot` draws them)."""
    runs = {label: r.runs[key] for key, label in RETRAIN_LABELS.items()}
    plot_runs(list(runs.values()), r.curves, labels=list(runs))
    write_report(r.report, comparison_report(
        r.comparison, strips=strips, strips_root=r.output / "visuals", runs=runs, title="mcir demo",
        notes=r.notes, extra=[("MCIR vs plain fine-tuning (baseline: plain)", r.head_to_head)]))


@dataclass(frozen=True)
class _Start:
    """The model both retrains start from."""

    ckpt: Path
    label: str  # its row in every table
    text: str  # what it is, in words
    pretrained: bool  # True: real pretrained weights; False: trained from scratch here
    run: Path | None = None  # the run that trained it here
    seconds: float | None = None  # how long that took


def _start_model(out: Path, train_dir: Path, note: _Notes, *, use_pretrained: bool, patch: int,
                 pretrain_iters: int, seed: int, device: str, on_step: OnStep | None) -> _Start:
    """DCTLSA x4 pretrained when $MCIR_WEIGHTS has it, else a small EDSR trained here."""
    pretrained_path, found_by = find_pretrained() if use_pretrained else (None, "")
    if pretrained_path is not None:
        text = f"DCTLSA x4 pretrained on DIV2K ({pretrained_path}, found via {found_by})"
        note(f"model: {text}")
        return _Start(pretrained_path, "DCTLSA (start)", text, pretrained=True)
    t = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_edsr(scale=SCALE, n_resblocks=4, n_feats=32)
    init = out / "runs" / "scratch-init.safetensors"
    save_safetensors(net.state_dict(), init, {"architecture": "EDSR", "note": "mcir demo random init"})
    text = (f"a small EDSR (4 blocks x 32 features) trained from scratch here for "
            f"{pretrain_iters} steps (no pretrained weights found: set $MCIR_WEIGHTS to "
            "a folder holding DCTLSA/X4.pt for the real thing)")
    note("no pretrained model found offline: " + text
         + " -- a weak start, so the numbers show the mechanics, not the paper's gain", "warn")
    cfg = TrainConfig(data=[str(train_dir)], output=str(out / "runs" / "start"), checkpoint=str(init),
                      scale=SCALE, task="sr", iters=pretrain_iters, batch=8, patch=patch, lr=5e-4,
                      schedule="cosine", eta_min=5e-5, negative_init="none", seed=seed,
                      device=device, cache="on")
    res = retrain(cfg, on_step=(lambda s: on_step("start", s.step, pretrain_iters)) if on_step else None)
    return _Start(res.run_dir / "model.safetensors", "EDSR-small (start)", text, pretrained=False,
                  run=res.run_dir, seconds=time.perf_counter() - t)


def _demo_lambda(lam: float | None, emb_pretrained: bool, note: _Notes) -> float:
    if not emb_pretrained:
        note("the pretrained VGG16 weights are not available offline (torchvision cache empty, no "
             "--embedding-weights): the SPN term uses a RANDOM VGG16 and is NOT the paper's loss", "warn")
    if lam is not None:
        return lam
    if emb_pretrained:
        return PAPER_LAMBDA
    note(f"λ raised from the paper's {PAPER_LAMBDA:g} to {RANDOM_VGG_LAMBDA:g}: a random VGG16's "
         "features are far smaller, and at 1e-4 the SPN term would be ~0.005 % of the "
         "loss (mcir's heuristic band for the contrast ratio is 1–10 %; the paper gives none)", "warn")
    return RANDOM_VGG_LAMBDA


def _retrain_both(out: Path, train_dir: Path, common: dict[str, Any], note: _Notes,
                  on_step: OnStep | None) -> dict[str, tuple[TrainResult, float]]:
    """Plain fine-tuning and MCIR from the same start, seed and patches (`common`: their
    TrainConfig settings): each one's result and seconds."""

    iters, steps = common["iters"], common["negative_steps"]
    done: dict[str, tuple[TrainResult, float]] = {}
    for name, init_kind in (("plain", "none"), ("mcir", "mix")):
        t = time.perf_counter()
        cfg = TrainConfig(data=[str(train_dir)], output=str(out / "runs" / name), negative_init=init_kind, **common)
        what = "plain fine-tuning (L1 only)" if init_kind == "none" else (
            f"MCIR (L1 - λ·SPN, 4 EMA negatives, periods {'/'.join(map(str, steps))})")
        note(f"retrain {name}: {what}, {iters} steps, batch {common['batch']}, patch {common['patch']}, "
             f"lr {common['lr']:g}")
        res = retrain(cfg, on_step=(lambda s, n=name: on_step(n, s.step, iters)) if on_step else None)
        if res.stopped_early:
            note(f"{name}: {res.stopped_early}", "warn")
        done[name] = res, time.perf_counter() - t
    return done


@dataclass(frozen=True)
class _Scored:
    """The start and both retrains evaluated, compared and drawn."""

    results: dict[str, Path]  # label -> evaluation JSON
    comparison: Any  # results.Comparison of start, plain, MCIR
    head_to_head: Any  # results.Comparison of plain (baseline) vs MCIR
    comparison_json: Path
    visuals: list[Path]  # strips and charts
    strips: list[Path]
    seconds: dict[str, float]  # "evaluate", "compare + visuals"


def _score_and_compare(out: Path, test_dir: Path, start: _Start, runs: dict[str, Path], *, device: str,
                       top_k: int, n_resamples: int, seed: int) -> _Scored:
    """Evaluate the start and both retrains, compare them, draw the pictures."""
    t = time.perf_counter()
    labels = {"start": start.label, **RETRAIN_LABELS}
    ckpts = {"start": Path(start.ckpt), "plain": runs["plain"] / "model.safetensors",
             "mcir": runs["mcir"] / "model.safetensors"}
    models, results, result_files = {}, {}, {}
    for key in ("start", "plain", "mcir"):
        model = load_model(ckpts[key])
        path = out / "results" / f"{key}.json"
        res = evaluate_labelled(model, [test_dir], Scoring(task="sr", device=device), labels[key], out=path)
        models[key], results[key], result_files[labels[key]] = model, res, path
    seconds = {"evaluate": time.perf_counter() - t}
    t = time.perf_counter()
    comp = compare_results([results["start"], results["plain"], results["mcir"]], n_resamples=n_resamples, seed=seed)
    h2h = compare_results([results["plain"], results["mcir"]], n_resamples=n_resamples, seed=seed)
    datasets = {name: _dataset(root) for name, root in results["start"]["data"].items()}
    vis_dir = out / "visuals"
    main_vis = write_comparison_visuals(comp, [models["start"], models["plain"], models["mcir"]],
                                        datasets, vis_dir, top_k, device=device)
    h2h_vis = write_comparison_visuals(h2h, [models["plain"], models["mcir"]], datasets,
                                       vis_dir / "mcir-vs-plain", top_k, device=device)
    visuals = [*main_vis["strips"], *main_vis["charts"], *h2h_vis["strips"], *h2h_vis["charts"]]
    comparison_json = write_exports(comp, {"json": out / "comparison.json"})[0]
    seconds["compare + visuals"] = time.perf_counter() - t
    return _Scored(result_files, comp, h2h, comparison_json, visuals, [*main_vis["strips"], *h2h_vis["strips"]],
                   seconds)


def _check_ratio(mcir: TrainResult, note: _Notes) -> float | None:
    """The MCIR run's mean contrast ratio (`TrainResult.mean_ratio`), with a warning
    outside mcir's heuristic band that names a λ to try (`guard.lambda_hint`, from the
    run's mean l_neg/l_rec: each step's ratio over its own λ)."""

    ratio = mcir.mean_ratio
    band = default_ratio_band()
    if ratio is not None and not band[0] <= ratio <= band[1]:
        hint = lambda_hint(mcir.ratio_per_lambda or 0.0, band)
        note(f"the MCIR run's mean contrast ratio λ·l_neg/l_rec was {ratio:.3%}, outside the "
             f"{band[0]:.0%}–{band[1]:.0%} band of mcir's heuristic (not the paper's): the SPN term had "
             + ("little effect" if ratio < band[0] else "a large weight") + f"; {hint}", "warn")
    return ratio


def _dataset(root: str) -> Any:
    return discover(root, SCALE, "sr")


def summary_markdown(r: DemoResult, iters: int, batch: int, patch: int, lr: float,
                     steps: tuple[int, ...]) -> str:
    """The demo's report: setup, the table and evidence, MCIR vs plain, pictures, notes."""
    def rel(p: Path) -> str:
        return Path(os.path.relpath(p, r.output)).as_posix()

    lines = ["# mcir demo", ""]
    if r.notes:
        lines += [f"> **Note:** {n}" for n in r.notes] + [""]
    lines += [
        "## Setup", "",
        f"- Start model: {r.model}.",
        f"- Training data: {len(r.train_images)} scikit-image photos ({', '.join(r.train_images)}), "
        f"HR-only, LR made on the fly (MATLAB bicubic x{SCALE}).",
        f"- Test data: {len(r.test_images)} other photos ({', '.join(r.test_images)}), "
        f"`data/test/HR` + `LR_bicubic/X{SCALE}`.",
        f"- Both retrains: {iters} steps, batch {batch}, LR patch {patch}, Adam lr {lr:g}, "
        "same seed and the same patches in the same order.",
        "- plain fine-tuning: L1 only (`negative_init=none`).",
        f"- MCIR: L1 − λ·SPN with λ = {r.lam:g}"
        + (f" (mean contrast ratio λ·l_neg/l_rec {r.contrast_ratio:.2%})" if r.contrast_ratio is not None else "")
        + ", 4 EMA negatives (w = 0.1, update periods "
        f"{'/'.join(map(str, steps))} = the paper's 100/500/1000/2000 fitted to {iters} steps), "
        f"embedding {r.embedding}.",
        "",
    ]
    body = to_markdown(r.comparison).replace("## PSNR/SSIM", "## Start vs both retrains", 1)
    lines += [body.rstrip(), ""]
    lines += ["## MCIR vs plain fine-tuning (baseline: plain)", ""]
    lines += [f"- {md_escape(s)}" for s in render_evidence(r.head_to_head)]
    lines += ["", "## Pictures", "",
              "Per image: LQ (upscaled) | baseline | retrained | GT | |retrained − baseline| "
              "(one heat scale per set), for the images with the largest |Δ PSNR|.", ""]
    for p in r.visuals:
        lines.append(f"![{rel(p)}]({rel(p)})")
    lines += ["", "## Files", "", f"- `{rel(r.report)}`: this report as one self-contained page, with the "
              "retrains' training curves (open it in a browser)", f"- `{rel(r.curves)}`: the training curves "
              "of both retrains (`mcir plot runs/plain runs/mcir`)"]
    for name, run in r.runs.items():
        lines.append(f"- run `{name}`: `{rel(run)}/` (model.safetensors, config.json, log.jsonl)")
    for label, path in r.results.items():
        lines.append(f"- evaluation of {label}: `{rel(path)}`")
    lines.append(f"- comparison: `{rel(r.comparison_json)}`; redo it with "
                 f"`mcir compare {' '.join(rel(p) for p in r.results.values())}`")
    lines += ["", "## Time", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in r.timings.items()]
    return "\n".join(lines) + "\n"
