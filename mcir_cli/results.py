"""Evaluation results side by side: loading, convention checks, alignment, `Comparison`.

Input: result dicts as written by `evaluate.py` (one per model), of the form

    {"conventions": {"y_channel": bool, "crop_border": int, "quantize": "uint8"},
     "model": {"checkpoint": str, "sha256": str, "architecture": str, "scale": int,
               "label": str},
     "datasets": {"<name>": {"psnr": float, "ssim": float,
                             "images": [{"name": str, "psnr": float, "ssim": float}]}}}

The first result is the baseline; every later result is compared against it, image by
image (`stats.py`). Pure apart from `load_result`, which reads one JSON file; `exports.py`
and the CLI's `render.py` draw tables from the `Comparison`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcir_cli.errors import McirError
from mcir_cli.stats import PairedStats, paired_stats, score_delta, verdict

AVERAGE = "Average"
METRICS = ("psnr", "ssim")

_IGNORED_CONVENTION_KEYS = {"description"}  # derived text, not a setting
_SETTING_KEYS = ("task", "noise", "inference")  # "inference": tile, overlap, amp


# --------------------------------------------------------------------------- loading


def _number(value: Any) -> float:
    """A score from JSON: a number, or the strings "inf"/"Infinity"/"nan" (strict JSON
    writers cannot emit non-finite floats). Raises ValueError/TypeError otherwise."""
    if isinstance(value, bool):
        raise TypeError("boolean is not a score")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return float(value.strip().lower().replace("infinity", "inf"))
    raise TypeError(f"not a number: {value!r}")


def _validate_dataset(ds_name: str, ds: Any, bad: Callable[[str], McirError]) -> dict:
    """One dataset entry, checked and normalised (scores as floats, names unique)."""
    if not isinstance(ds, dict):
        raise bad(f"dataset '{ds_name}' is not an object")
    for key in ("psnr", "ssim", "images"):
        if key not in ds:
            raise bad(f"missing key 'datasets.{ds_name}.{key}'")
    if not isinstance(ds["images"], list):
        raise bad(f"'datasets.{ds_name}.images' is not a list")
    try:
        psnr, ssim = _number(ds["psnr"]), _number(ds["ssim"])
    except (TypeError, ValueError) as exc:
        raise bad(f"dataset '{ds_name}': {exc}") from None
    images = []
    seen: set[str] = set()
    for i, img in enumerate(ds["images"]):
        if not isinstance(img, dict) or not all(k in img for k in ("name", "psnr", "ssim")):
            raise bad(f"'datasets.{ds_name}.images[{i}]' needs name, psnr and ssim")
        name = str(img["name"])
        if name in seen:
            raise bad(f"dataset '{ds_name}' lists image '{name}' twice")
        seen.add(name)
        try:
            images.append({"name": name, "psnr": _number(img["psnr"]),
                           "ssim": _number(img["ssim"])})
        except (TypeError, ValueError) as exc:
            raise bad(f"dataset '{ds_name}', image '{name}': {exc}") from None
    return {"psnr": psnr, "ssim": ssim, "images": images}


def _validate(data: Any, source: str | Path | None) -> dict:
    """Check a result dict's structure and return a normalised copy (floats, label)."""

    def bad(problem: str) -> McirError:
        return McirError(f"not an mcir evaluation result: {problem}", source)

    if not isinstance(data, dict):
        raise bad("top level is not a JSON object")
    for key in ("conventions", "model", "datasets"):
        if key not in data:
            raise bad(f"missing key '{key}'")
    conv = data["conventions"]
    if not isinstance(conv, dict):
        raise bad("'conventions' is not an object")
    for key in ("y_channel", "crop_border", "quantize"):
        if key not in conv:
            raise bad(f"missing key 'conventions.{key}'")
    model = data["model"]
    if not isinstance(model, dict):
        raise bad("'model' is not an object")
    if "checkpoint" not in model and "label" not in model:
        raise bad("missing key 'model.checkpoint'")
    model = dict(model)
    label = model.get("label")
    if not isinstance(label, str) or not label.strip():
        ckpt = str(model.get("checkpoint") or "")
        label = Path(ckpt).stem or "model"
    model["label"] = label.strip()
    datasets = data["datasets"]
    if not isinstance(datasets, dict):
        raise bad("'datasets' is not an object")
    out_sets = {str(name): _validate_dataset(name, ds, bad) for name, ds in datasets.items()}
    out = dict(data)  # keeps extra keys evaluate writes (task, noise, mcir_version, ...)
    out.update(conventions=dict(conv), model=model, datasets=out_sets)
    return out


def load_result(path: str | Path) -> dict:
    """Read and validate one evaluation result JSON; returns a normalised dict (scores as
    floats, `model.label` filled from the checkpoint stem when missing). Raises McirError
    (one line naming the file) for a missing, unreadable, invalid or incomplete file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise McirError("no such file", path) from None
    except IsADirectoryError:
        raise McirError("is a folder, expected an evaluation result JSON", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise McirError(f"cannot read: {exc}", path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise McirError(f"invalid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}",
                        path) from None
    out = _validate(data, path)
    out["_source"] = str(path)  # tells results of the same label apart in messages
    return out


# --------------------------------------------------------------------------- checks


def _distinct_tails(paths: list[str]) -> list[str]:
    """The shortest path endings that tell the files apart (a/X4.json, b/X4.json)."""
    parts = [Path(p).parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        tails = ["/".join(p[-k:]) for p in parts]
        if len(set(tails)) == len(tails):
            return tails
    return list(paths)


def _labels(results: list[dict]) -> list[str]:
    """Display labels, made unique when two results share one: by the end of their file
    paths ("X4 (a/X4.json)") when known, else by number ("x (2)")."""
    raw = [str(r.get("model", {}).get("label") or f"model {i + 1}") for i, r in enumerate(results)]
    out: list[str] = []
    for i, lab in enumerate(raw):
        if raw.count(lab) > 1:
            same = [j for j, other in enumerate(raw) if other == lab]
            sources = [results[j].get("_source") for j in same]
            if all(sources) and len(set(sources)) == len(sources):
                lab = f"{lab} ({_distinct_tails(sources)[same.index(i)]})"
            else:
                lab = f"{lab} ({raw[: i + 1].count(lab)})"
        out.append(lab)
    return out


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}"
    return str(value)


def check_conventions(results: list[dict]) -> dict:
    """Raise McirError unless every result was scored with the same conventions; returns
    the shared conventions dict."""
    if not results:
        raise McirError("nothing to compare: no results given")
    labels = _labels(results)
    first = results[0]
    problems = []
    for lab, res in zip(labels[1:], results[1:]):
        a_conv, b_conv = first["conventions"], res["conventions"]
        for key in sorted((set(a_conv) | set(b_conv)) - _IGNORED_CONVENTION_KEYS):
            a, b = a_conv.get(key, "<missing>"), b_conv.get(key, "<missing>")
            if a != b:
                problems.append(f"{key}: {a} ({labels[0]}) vs {b} ({lab})")
        sa, sb = first.get("model", {}).get("scale"), res.get("model", {}).get("scale")
        if sa is not None and sb is not None and sa != sb:  # x4 vs x2 outputs: not one benchmark
            problems.append(f"scale: x{sa} ({labels[0]}) vs x{sb} ({lab})")
        # settings outside `conventions` that also change the numbers, checked when both
        # results record them (evaluate writes "task", and "noise" for synthetic noise)
        for key in _SETTING_KEYS:
            if key in first and key in res and first[key] != res[key]:
                problems.append(f"{key}: {_show(first[key])} ({labels[0]}) vs "
                                f"{_show(res[key])} ({lab})")
    if problems:
        raise McirError("results were scored with different conventions, so their numbers "
                        "are not comparable (" + "; ".join(problems) + "); re-evaluate with "
                        "the same settings")
    return {k: v for k, v in first["conventions"].items() if k not in _IGNORED_CONVENTION_KEYS}


# --------------------------------------------------------------------------- alignment


@dataclass
class Dropped:
    """What `align` left out so that every model is scored on the same images."""

    labels: list[str]
    # dataset name -> labels of the results that lack it (dataset dropped entirely)
    datasets: dict[str, list[str]] = field(default_factory=dict)
    # dataset name -> images dropped from each result (same order as `labels`)
    images: dict[str, list[int]] = field(default_factory=dict)
    # common datasets that had no image in common (dropped entirely)
    empty: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.datasets or self.images or self.empty)

    def messages(self) -> list[str]:
        """One plain sentence per thing dropped, for the CLI to print."""
        out = []
        for ds, missing in self.datasets.items():
            out.append(f"{ds}: left out, not evaluated for {', '.join(missing)}.")
        for ds in self.empty:
            out.append(f"{ds}: left out, no image names in common.")
        for ds, counts in self.images.items():
            parts = [f"{n} from {lab}" for lab, n in zip(self.labels, counts) if n]
            out.append(f"{ds}: compared on the common images only; dropped "
                       + ", ".join(parts) + ".")
        return out

    def to_dict(self) -> dict:
        return {"datasets": self.datasets, "empty": self.empty,
                "images": {ds: dict(zip(self.labels, c)) for ds, c in self.images.items()}}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def align(results: list[dict]) -> tuple[list[dict], Dropped]:
    """Restrict every result to the datasets present in all of them and, per dataset, to
    the image names present in all of them (sorted by name). A dataset whose image set
    changed for a result gets its mean PSNR/SSIM recomputed over the kept images; when
    nothing was dropped the file's own means are kept. Raises McirError when no dataset
    with common images remains."""
    if not results:
        raise McirError("nothing to compare: no results given")
    labels = _labels(results)
    dropped = Dropped(labels=labels)
    all_names = list(dict.fromkeys(ds for res in results for ds in res["datasets"]))
    common = [ds for ds in results[0]["datasets"] if all(ds in r["datasets"] for r in results)]
    for ds in (ds for ds in all_names if ds not in common):
        dropped.datasets[ds] = [lab for lab, r in zip(labels, results) if ds not in r["datasets"]]

    aligned = [{**r, "conventions": dict(r["conventions"]), "model": dict(r["model"]),
                "datasets": {}} for r in results]
    for ds in common:
        name_sets = [{img["name"] for img in r["datasets"][ds]["images"]} for r in results]
        keep = sorted(set.intersection(*name_sets))
        if not keep:
            dropped.empty.append(ds)
            continue
        counts = [len(s) - len(keep) for s in name_sets]
        if any(counts):
            dropped.images[ds] = counts
        for res, out, n_drop in zip(results, aligned, counts):
            out["datasets"][ds] = _kept(res["datasets"][ds], keep, recompute=bool(n_drop))
    if not aligned[0]["datasets"]:
        raise McirError("the results have no dataset with images in common, nothing to compare")
    return aligned, dropped


def _kept(src: dict, keep: list[str], recompute: bool) -> dict:
    """A dataset entry restricted to the image names `keep`, in that order; its means
    recomputed over them when images were dropped, else the file's own."""
    by_name = {img["name"]: img for img in src["images"]}
    images = [dict(by_name[n]) for n in keep]
    if recompute:
        psnr, ssim = _mean([i["psnr"] for i in images]), _mean([i["ssim"] for i in images])
    else:
        psnr, ssim = float(src["psnr"]), float(src["ssim"])
    return {"psnr": psnr, "ssim": ssim, "images": images}


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
    results = [_validate(r, None) for r in results]
    conventions = check_conventions(results)
    aligned, dropped = align(results)
    labels = _labels(results)
    datasets = list(aligned[0]["datasets"])

    scores: dict[str, dict[str, Score]] = {}
    for lab, res in zip(labels, aligned):
        row = {ds: Score(res["datasets"][ds]["psnr"], res["datasets"][ds]["ssim"]) for ds in datasets}
        row[AVERAGE] = Score(_mean([row[ds].psnr for ds in datasets]),
                             _mean([row[ds].ssim for ds in datasets]))
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
                      n_resamples=n_resamples, seed=seed)


# --------------------------------------------------------------------------- text


def conventions_text(conv: dict) -> str:
    """E.g. 'PSNR/SSIM on Y (BT.601), border 4 px, uint8 (BasicSR)'."""
    channel = "Y (BT.601)" if conv.get("y_channel") else "RGB"
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
