"""Evaluation results side by side: `Comparison` (table, Δ, paired statistics) and the
evidence sentences.

Input: result dicts as `result_files.load_result` returns them (one per model). The first
result is the baseline; `alignment.py` checks that every result was scored the same way
and restricts them to the images all of them hold, and every later result is compared
against the baseline image by image (`stats.py`). Pure; `exports.py` and the CLI's
`render.py` draw tables from the `Comparison`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mcir_cli.compare.alignment import Dropped, align, check_conventions, display_labels, mean_or_nan
from mcir_cli.compare.files import validate_result
from mcir_cli.compare.stats import PairedStats, paired_stats, score_delta, verdict
from mcir_cli.errors import McirError
from mcir_cli.models.paper import merged_rows

AVERAGE = "Average"
METRICS = ("psnr", "ssim")


# --------------------------------------------------------------------------- comparison


@dataclass
class Score:
    psnr: float
    ssim: float


@dataclass
class Comparison:
    """Everything `mcir compare` reports. `models[0]` is the baseline."""

    models: list[str]  # display labels, unique
    model_info: list[dict]  # the results' "model" dicts
    datasets: list[str]  # common datasets, in the baseline's order
    conventions: dict
    scores: dict[str, dict[str, Score]]  # label -> dataset or AVERAGE -> means
    deltas: dict[str, dict[str, Score]]  # later label -> dataset or AVERAGE -> (it - baseline)
    stats: list[PairedStats]  # per later model, dataset and metric (PSNR first)
    images: dict[str, list[str]]  # dataset -> common image names (sorted)
    image_scores: dict[str, dict[str, dict[str, list[float]]]]  # ds -> label -> metric -> values
    dropped: Dropped
    n_resamples: int
    seed: int
    # the MCIR paper's printed figures for these datasets (`paper.paper_rows`): shown beside
    # the measured rows, never part of scores, deltas or stats
    paper: list[dict] = field(default_factory=list)

    @property
    def baseline(self) -> str:
        return self.models[0]

    @property
    def columns(self) -> list[str]:
        """Table columns: the datasets then the average."""
        return [*self.datasets, AVERAGE]

    def stat(self, dataset: str, label: str | None = None, metric: str = "psnr") -> PairedStats:
        """Stats of `label` (default: the last model) vs the baseline."""
        label = label or self.models[-1]
        for s in self.stats:
            if s.dataset == dataset and s.new_label == label and s.metric == metric:
                return s
        raise KeyError((dataset, label, metric))

    def image_deltas(self, dataset: str, label: str | None = None,
                     metric: str = "psnr") -> dict[str, float]:
        """Per-image `label - baseline` (default: the last model); both-infinite = 0."""
        label = label or self.models[-1]
        base = self.image_scores[dataset][self.baseline][metric]
        new = self.image_scores[dataset][label][metric]
        return {n: score_delta(a, b) for n, a, b in zip(self.images[dataset], base, new)}

    def best(self, column: str, metric: str) -> float:
        """Best (highest) finite-or-inf value of a column; NaN-safe."""
        vals = [getattr(self.scores[m][column], metric) for m in self.models]
        vals = [v for v in vals if not math.isnan(v)]
        return max(vals) if vals else float("nan")

    def is_best(self, column: str, metric: str, value: float) -> bool:
        """Best as displayed (2 decimals for PSNR, 4 for SSIM): values that round to the
        same shown number tie, so every table marks all of them."""
        if len(self.models) < 2 or math.isnan(value):
            return False
        digits = 2 if metric == "psnr" else 4
        best = self.best(column, metric)
        if math.isinf(best) or math.isinf(value):
            return value == best
        return round(value, digits) == round(best, digits)

    def delta_label(self, label: str) -> str:
        """The name of `label`'s Δ row: plain "Δ" when there is only one."""
        return "Δ" if len(self.models) == 2 else f"Δ {label}"


def compare_results(results: list[dict], n_resamples: int = 10_000, seed: int = 0) -> Comparison:
    """Check conventions, align, and compute the table, deltas and paired statistics of
    every later result against the first. The average column is the paper's convention:
    the mean of the per-dataset means."""
    if len(results) < 2:
        raise McirError("compare needs at least two results (a baseline and a retrained model)")
    results = [validate_result(r, None) for r in results]
    conventions = check_conventions(results)
    aligned, dropped = align(results)
    labels = display_labels(results)
    datasets = list(aligned[0]["datasets"])

    scores: dict[str, dict[str, Score]] = {}
    for lab, res in zip(labels, aligned):
        row = {ds: Score(res["datasets"][ds]["psnr"], res["datasets"][ds]["ssim"]) for ds in datasets}
        row[AVERAGE] = Score(mean_or_nan([row[ds].psnr for ds in datasets]),
                             mean_or_nan([row[ds].ssim for ds in datasets]))
        scores[lab] = row
    deltas = {lab: {col: Score(score_delta(scores[labels[0]][col].psnr, scores[lab][col].psnr),
                               score_delta(scores[labels[0]][col].ssim, scores[lab][col].ssim))
                    for col in [*datasets, AVERAGE]}
              for lab in labels[1:]}

    images = {ds: [img["name"] for img in aligned[0]["datasets"][ds]["images"]] for ds in datasets}
    image_scores = {ds: {lab: {m: [img[m] for img in res["datasets"][ds]["images"]] for m in METRICS}
                         for lab, res in zip(labels, aligned)}
                    for ds in datasets}
    stats = [paired_stats(np.array(image_scores[ds][labels[0]][m]), np.array(image_scores[ds][lab][m]),
                          n_resamples=n_resamples, seed=seed, dataset=ds, metric=m,
                          base_label=labels[0], new_label=lab)
             for lab in labels[1:] for ds in datasets for m in METRICS]
    return Comparison(models=labels, model_info=[dict(r["model"]) for r in aligned],
                      datasets=datasets, conventions=conventions, scores=scores, deltas=deltas,
                      stats=stats, images=images, image_scores=image_scores, dropped=dropped,
                      n_resamples=n_resamples, seed=seed, paper=merged_rows(aligned))


# --------------------------------------------------------------------------- text


def conventions_text(conv: dict) -> str:
    """E.g. 'PSNR/SSIM on Y (BT.601), border 4 px, uint8 (BasicSR)'."""
    channel = "grey (no Y conversion)" if conv.get("grey") else "Y (BT.601)" if conv.get("y_channel") else "RGB"
    border = int(conv.get("crop_border", 0) or 0)
    crop = f"border {border} px" if border else "no border crop"
    quant = conv.get("quantize")
    quant_txt = f"{quant} (BasicSR)" if quant == "uint8" else (f"{quant}" if quant else "no quantisation")
    return f"PSNR/SSIM on {channel}, {crop}, {quant_txt}"


def render_evidence(comparison: Comparison, metrics: tuple[str, ...] = ("psnr",)) -> list[str]:
    """The verdict sentences (plain text), one per later model and dataset (PSNR by
    default); the models are named when there are more than two."""
    many = len(comparison.models) > 2
    return [verdict(s, with_labels=many) for s in comparison.stats if s.metric in metrics]
