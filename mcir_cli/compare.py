"""Comparing evaluation results: paired statistics, tables and exports.

Input: result dicts as written by `evaluate.py` (one per model), of the form

    {"conventions": {"y_channel": bool, "crop_border": int, "quantize": "uint8"},
     "model": {"checkpoint": str, "sha256": str, "architecture": str, "scale": int,
               "label": str},
     "datasets": {"<name>": {"psnr": float, "ssim": float,
                             "images": [{"name": str, "psnr": float, "ssim": float}]}}}

The first result is the baseline; every later result is compared against it, image by
image (paired): mean delta, a 95 % paired-bootstrap confidence interval, the share of
images that improved and a sign-flip permutation p-value. Everything here is pure (no
printing, no files written) apart from `load_result`, which reads one JSON file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcir_cli.errors import McirError
from mcir_cli.fsutil import writable_target

AVERAGE = "Average"
METRICS = ("psnr", "ssim")
JSON_FORMAT = "mcir.compare/1"
_EXACT_MAX_N = 16  # exact sign-flip enumeration up to 2**16 patterns
_CHUNK = 4_000_000  # elements per resampling chunk (bounds memory for large datasets)


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
    out_sets: dict[str, dict] = {}
    for ds_name, ds in datasets.items():
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
        out_sets[str(ds_name)] = {"psnr": psnr, "ssim": ssim, "images": images}
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
    return _validate(data, path)


# --------------------------------------------------------------------------- checks


def _labels(results: list[dict]) -> list[str]:
    """Display labels, made unique ("x", "x (2)") when two results share one."""
    raw = [str(r.get("model", {}).get("label") or f"model {i + 1}") for i, r in enumerate(results)]
    out: list[str] = []
    for i, lab in enumerate(raw):
        if raw.count(lab) > 1:
            lab = f"{lab} ({raw[: i + 1].count(lab)})"
        out.append(lab)
    return out


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


_IGNORED_CONVENTION_KEYS = {"description"}  # derived text, not a setting
_SETTING_KEYS = ("task", "noise", "inference")  # "inference": tile, overlap, amp


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}"
    return str(value)


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
    first_order = list(results[0]["datasets"])
    all_names: list[str] = []
    for res in results:
        for ds in res["datasets"]:
            if ds not in all_names:
                all_names.append(ds)
    common = [ds for ds in first_order if all(ds in r["datasets"] for r in results)]
    for ds in all_names:
        if ds not in common:
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
        keep_set = set(keep)
        for res, out, n_drop in zip(results, aligned, counts):
            src = res["datasets"][ds]
            by_name = {img["name"]: img for img in src["images"] if img["name"] in keep_set}
            images = [dict(by_name[n]) for n in keep]
            if n_drop:
                psnr = _mean([i["psnr"] for i in images])
                ssim = _mean([i["ssim"] for i in images])
            else:
                psnr, ssim = float(src["psnr"]), float(src["ssim"])
            out["datasets"][ds] = {"psnr": psnr, "ssim": ssim, "images": images}
    if not aligned[0]["datasets"]:
        raise McirError("the results have no dataset with images in common, nothing to compare")
    return aligned, dropped


# --------------------------------------------------------------------------- statistics


@dataclass
class PairedStats:
    """Paired comparison of one metric on one dataset: `new` vs `base`, image by image."""

    n: int  # images used
    mean_delta: float  # mean of new - base
    ci_low: float  # 95 % paired bootstrap percentile interval of the mean delta
    ci_high: float
    win_rate: float  # share of images with delta > 0
    wins: int
    p_value: float  # two-sided sign-flip permutation test of the mean delta
    exact: bool  # p from full enumeration of the 2**n sign patterns
    n_resamples: int
    seed: int
    skipped: int = 0  # images with a non-finite delta (PSNR inf on one side only)
    dataset: str = ""
    metric: str = "psnr"
    base_label: str = ""
    new_label: str = ""

    @property
    def significant(self) -> bool:
        """CI excludes 0 and p < 0.05."""
        return self.n > 1 and (self.ci_low > 0 or self.ci_high < 0) and self.p_value < 0.05

    def to_dict(self) -> dict:
        return asdict(self)


def deltas_of(base: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-image `new - base`, with both-infinite (identical-image PSNR on both sides)
    counted as 0; images whose delta is still not finite are skipped. Returns
    (finite deltas, number skipped)."""
    base = np.asarray(base, dtype=np.float64).reshape(-1)
    new = np.asarray(new, dtype=np.float64).reshape(-1)
    if base.shape != new.shape:
        raise ValueError(f"paired arrays differ in length: {base.size} vs {new.size}")
    with np.errstate(invalid="ignore"):
        delta = new - base
    both_inf = np.isinf(base) & np.isinf(new) & (np.sign(base) == np.sign(new))
    delta[both_inf] = 0.0
    finite = np.isfinite(delta)
    return delta[finite], int((~finite).sum())


def _bootstrap_ci(d: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    n = d.size
    if n == 1 or np.all(d == d[0]):
        return float(d[0]), float(d[0])
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    step = max(1, _CHUNK // n)
    for start in range(0, n_resamples, step):
        k = min(step, n_resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        means[start : start + k] = d[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _sign_flip_p(d: np.ndarray, n_resamples: int, seed: int) -> tuple[float, bool]:
    n = d.size
    observed = abs(d.mean())
    if n <= _EXACT_MAX_N:
        patterns = np.arange(2**n, dtype=np.int64)[:, None]
        signs = ((patterns >> np.arange(n)) & 1) * 2 - 1
        perm = np.abs(signs @ d / n)
        count = int((perm >= observed - 1e-12).sum())
        return count / 2**n, True
    rng = np.random.default_rng(seed)
    count = 0
    step = max(1, _CHUNK // n)
    for start in range(0, n_resamples, step):
        k = min(step, n_resamples - start)
        signs = rng.integers(0, 2, size=(k, n)) * 2 - 1
        perm = np.abs(signs @ d / n)
        count += int((perm >= observed - 1e-12).sum())
    return (count + 1) / (n_resamples + 1), False


def paired_stats(base: np.ndarray, new: np.ndarray, n_resamples: int = 10_000, seed: int = 0,
                 *, dataset: str = "", metric: str = "psnr", base_label: str = "",
                 new_label: str = "") -> PairedStats:
    """Paired statistics of `new - base` over images (see PairedStats). Infinite PSNR on
    both sides counts as delta 0; infinite on one side only is skipped (`skipped`).
    With no usable image every number is NaN and n = 0."""
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    d, skipped = deltas_of(base, new)
    common = dict(n_resamples=n_resamples, seed=seed, skipped=skipped, dataset=dataset,
                  metric=metric, base_label=base_label, new_label=new_label)
    if d.size == 0:
        nan = float("nan")
        return PairedStats(n=0, mean_delta=nan, ci_low=nan, ci_high=nan, win_rate=nan,
                           wins=0, p_value=nan, exact=True, **common)
    wins = int((d > 0).sum())
    low, high = _bootstrap_ci(d, n_resamples, seed)
    p, exact = _sign_flip_p(d, n_resamples, seed)
    return PairedStats(n=int(d.size), mean_delta=float(d.mean()), ci_low=low, ci_high=high,
                       win_rate=wins / d.size, wins=wins, p_value=float(p), exact=exact,
                       **common)


def _fmt_delta(x: float, metric: str) -> str:
    return f"{x:+.4f}" if metric == "ssim" else f"{x:+.2f} dB"


def _fmt_ci(x: float, metric: str) -> str:
    return f"{x:+.4f}" if metric == "ssim" else f"{x:+.2f}"


def _fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict(stats: PairedStats, with_labels: bool = False) -> str:
    """One plain sentence stating the gain, its 95 % CI, the win count, p and what that
    means. `with_labels` names the two models (useful with more than two results)."""
    head = stats.dataset or stats.metric.upper()
    if with_labels and (stats.new_label or stats.base_label):
        head = f"{stats.new_label} vs {stats.base_label}, {head}"
    if stats.metric != "psnr":
        head = f"{head} ({stats.metric.upper()})"
    note = ""
    if stats.skipped:
        note = (f" ({stats.skipped} image{'s' if stats.skipped != 1 else ''} skipped: "
                f"{stats.metric.upper()} infinite on one side only.)")
    if stats.n == 0:
        return f"{head}: no image with a finite difference to compare.{note}"
    m = stats.metric
    if stats.n == 1:
        return (f"{head}: {_fmt_delta(stats.mean_delta, m)} on the only image — a single "
                f"image cannot show whether the difference is real.{note}")
    if stats.mean_delta == 0 and stats.ci_low == 0 and stats.ci_high == 0:
        return f"{head}: identical scores on all {stats.n} images (Δ 0).{note}"
    text = (f"{head}: {_fmt_delta(stats.mean_delta, m)} [95 % CI {_fmt_ci(stats.ci_low, m)}, "
            f"{_fmt_ci(stats.ci_high, m)}], better on {stats.wins} of {stats.n} images, "
            f"{_fmt_p(stats.p_value)}")
    if stats.significant:
        kind = "improvement" if stats.mean_delta > 0 else "regression"
        text += f" — a real {kind} (CI excludes 0, p < 0.05)."
    else:
        excludes = stats.ci_low > 0 or stats.ci_high < 0
        min_p = 2 / 2**stats.n
        if min_p >= 0.05:
            text += (f" — too few images to call: with {stats.n} images no difference can reach "
                     f"p < 0.05 (the smallest possible p is {min_p:.3g})")
            if excludes:
                text += "; the CI excludes 0, but a bootstrap over so few images is optimistic"
        elif excludes:
            text += (" — not established at 5 %: the bootstrap CI excludes 0 but the permutation "
                     "test does not (p ≥ 0.05)")
        else:
            text += " — not distinguishable from noise at 5 %"
        text += "."
    return text + note


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
        return {n: _delta(a, b) for n, a, b in zip(self.images[dataset], base, new)}

    def best(self, column: str, metric: str) -> float:
        """Best (highest) finite-or-inf value of a column; NaN-safe."""
        vals = [getattr(self.scores[m][column], metric) for m in self.models]
        vals = [v for v in vals if not math.isnan(v)]
        return max(vals) if vals else float("nan")


def _delta(a: float, b: float) -> float:
    if math.isinf(a) and math.isinf(b) and (a > 0) == (b > 0):
        return 0.0
    return b - a


def _avg(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


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
        row[AVERAGE] = Score(_avg([row[ds].psnr for ds in datasets]),
                             _avg([row[ds].ssim for ds in datasets]))
        scores[lab] = row
    deltas = {lab: {col: Score(_delta(scores[labels[0]][col].psnr, scores[lab][col].psnr),
                               _delta(scores[labels[0]][col].ssim, scores[lab][col].ssim))
                    for col in [*datasets, AVERAGE]}
              for lab in labels[1:]}

    images = {ds: [img["name"] for img in aligned[0]["datasets"][ds]["images"]] for ds in datasets}
    image_scores = {ds: {lab: {m: [img[m] for img in res["datasets"][ds]["images"]] for m in METRICS}
                         for lab, res in zip(labels, aligned)}
                    for ds in datasets}
    stats = []
    for lab in labels[1:]:
        for ds in datasets:
            for m in METRICS:
                stats.append(paired_stats(np.array(image_scores[ds][labels[0]][m]),
                                          np.array(image_scores[ds][lab][m]),
                                          n_resamples=n_resamples, seed=seed, dataset=ds,
                                          metric=m, base_label=labels[0], new_label=lab))
    return Comparison(models=labels, model_info=[dict(r["model"]) for r in aligned],
                      datasets=datasets, conventions=conventions, scores=scores, deltas=deltas,
                      stats=stats, images=images, image_scores=image_scores, dropped=dropped,
                      n_resamples=n_resamples, seed=seed)


# --------------------------------------------------------------------------- text pieces


def conventions_text(conv: dict) -> str:
    """E.g. 'PSNR/SSIM on Y (BT.601), border 4 px, uint8 (BasicSR)'."""
    channel = "Y (BT.601)" if conv.get("y_channel") else "RGB"
    border = int(conv.get("crop_border", 0) or 0)
    crop = f"border {border} px" if border else "no border crop"
    quant = conv.get("quantize")
    quant_txt = f"{quant} (BasicSR)" if quant == "uint8" else (f"{quant}" if quant else "no quantisation")
    return f"PSNR/SSIM on {channel}, {crop}, {quant_txt}"


def _fmt_psnr(x: float) -> str:
    return "inf" if math.isinf(x) and x > 0 else ("n/a" if math.isnan(x) else f"{x:.2f}")


def _fmt_ssim(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def _fmt_dpsnr(x: float) -> str:
    return "n/a" if math.isnan(x) else (f"{x:+.2f}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf"))


def _fmt_dssim(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.4f}"


def _delta_label(comp: Comparison, lab: str) -> str:
    return "Δ" if len(comp.models) == 2 else f"Δ {lab}"


def render_evidence(comparison: Comparison, metrics: tuple[str, ...] = ("psnr",)) -> list[str]:
    """The verdict sentences, one per later model and dataset (PSNR by default)."""
    many = len(comparison.models) > 2
    return [verdict(s, with_labels=many) for s in comparison.stats if s.metric in metrics]


def render_table(comparison: Comparison):
    """A rich Table: a row per model, a column per dataset ("PSNR/SSIM", best in bold),
    the average, and Δ rows (green > 0, red < 0); the caption states the conventions."""
    from rich.table import Table
    from rich.text import Text

    comp = comparison
    table = Table(title="PSNR/SSIM", caption=conventions_text(comp.conventions))
    table.add_column("Model", style="bold")
    for col in comp.columns:
        table.add_column(col, justify="right")
    for lab in comp.models:
        cells = [Text(lab)]
        for col in comp.columns:
            s = comp.scores[lab][col]
            t = Text()
            t.append(_fmt_psnr(s.psnr), style="bold" if _is_best(comp, col, "psnr", s.psnr) else "")
            t.append("/")
            t.append(_fmt_ssim(s.ssim), style="bold" if _is_best(comp, col, "ssim", s.ssim) else "")
            cells.append(t)
        table.add_row(*cells)
    table.add_section()  # a rule between the model rows and the delta rows
    for lab in comp.models[1:]:
        cells = [Text(_delta_label(comp, lab))]
        for col in comp.columns:
            d = comp.deltas[lab][col]
            t = Text()
            t.append(_fmt_dpsnr(d.psnr), style=_colour(d.psnr))
            t.append("/")
            t.append(_fmt_dssim(d.ssim), style=_colour(d.ssim))
            cells.append(t)
        table.add_row(*cells)
    return table


def _colour(x: float) -> str:
    if math.isnan(x) or x == 0:
        return ""
    return "green" if x > 0 else "red"


def _is_best(comp: Comparison, col: str, metric: str, value: float) -> bool:
    """Best as displayed: values that round to the same shown number tie (all bold)."""
    if len(comp.models) < 2 or math.isnan(value):
        return False
    digits = 2 if metric == "psnr" else 4
    best = comp.best(col, metric)
    if math.isinf(best) or math.isinf(value):
        return value == best
    return round(value, digits) == round(best, digits)


# --------------------------------------------------------------------------- exports


def _jsonable(x: Any) -> Any:
    """Strict JSON: non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def to_dict(comparison: Comparison) -> dict:
    comp = comparison
    return _jsonable({
        "format": JSON_FORMAT,
        "conventions": comp.conventions,
        "conventions_text": conventions_text(comp.conventions),
        "baseline": comp.baseline,
        "models": [{**info, "label": lab} for lab, info in zip(comp.models, comp.model_info)],
        "datasets": comp.datasets,
        "table": {lab: {col: asdict(s) for col, s in row.items()} for lab, row in comp.scores.items()},
        "deltas": {lab: {col: asdict(s) for col, s in row.items()} for lab, row in comp.deltas.items()},
        "stats": [s.to_dict() for s in comp.stats],
        "evidence": render_evidence(comp),
        "dropped": comp.dropped.to_dict(),
        "dropped_messages": comp.dropped.messages(),
        "images": {ds: [{"name": name,
                         **{f"{m}": {lab: comp.image_scores[ds][lab][m][i] for lab in comp.models}
                            for m in METRICS}}
                        for i, name in enumerate(names)]
                   for ds, names in comp.images.items()},
        "bootstrap": {"n_resamples": comp.n_resamples, "seed": comp.seed, "ci": 0.95},
    })


def to_json(comparison: Comparison) -> str:
    """Strict JSON (non-finite numbers written as the strings "inf"/"-inf"/"nan")."""
    return json.dumps(to_dict(comparison), indent=2, allow_nan=False) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def to_markdown(comparison: Comparison) -> str:
    """A Markdown report: the table (best in bold), Δ rows, the evidence sentences and
    what was dropped."""
    comp = comparison
    lines = ["## PSNR/SSIM", "", f"{conventions_text(comp.conventions)}; baseline: "
             f"{_md_escape(comp.baseline)}.", ""]
    lines.append("| Model | " + " | ".join(_md_escape(c) for c in comp.columns) + " |")
    lines.append("|---|" + "---:|" * len(comp.columns))
    for lab in comp.models:
        cells = []
        for col in comp.columns:
            s = comp.scores[lab][col]
            p, q = _fmt_psnr(s.psnr), _fmt_ssim(s.ssim)
            if _is_best(comp, col, "psnr", s.psnr):
                p = f"**{p}**"
            if _is_best(comp, col, "ssim", s.ssim):
                q = f"**{q}**"
            cells.append(f"{p} / {q}")
        lines.append(f"| {_md_escape(lab)} | " + " | ".join(cells) + " |")
    for lab in comp.models[1:]:
        cells = [f"{_fmt_dpsnr(comp.deltas[lab][c].psnr)} / {_fmt_dssim(comp.deltas[lab][c].ssim)}"
                 for c in comp.columns]
        lines.append(f"| {_md_escape(_delta_label(comp, lab))} | " + " | ".join(cells) + " |")
    lines += ["", f"### Evidence (paired over images; 95 % bootstrap CI, {comp.n_resamples} "
                  f"resamples, seed {comp.seed}; sign-flip permutation p)", ""]
    lines += [f"- {_md_escape(s)}" for s in render_evidence(comp)]
    if comp.dropped:
        lines += ["", "### Left out", ""]
        lines += [f"- {_md_escape(s)}" for s in comp.dropped.messages()]
    return "\n".join(lines) + "\n"


def _csv_num(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def to_csv(comparison: Comparison) -> str:
    """One row per (dataset, image): psnr_<label> and ssim_<label> for every model, then
    delta_psnr_<label> and delta_ssim_<label> (label - baseline) for every later model,
    and a last column `conventions` saying how every number was measured."""
    comp = comparison
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["dataset", "image"]
    header += [f"psnr_{lab}" for lab in comp.models] + [f"ssim_{lab}" for lab in comp.models]
    for lab in comp.models[1:]:
        header += [f"delta_psnr_{lab}", f"delta_ssim_{lab}"]
    w.writerow(header + ["conventions"])
    conv = conventions_text(comp.conventions)
    for ds in comp.datasets:
        sc = comp.image_scores[ds]
        for i, name in enumerate(comp.images[ds]):
            row = [ds, name]
            row += [_csv_num(sc[lab]["psnr"][i]) for lab in comp.models]
            row += [_csv_num(sc[lab]["ssim"][i]) for lab in comp.models]
            for lab in comp.models[1:]:
                row += [_csv_num(_delta(sc[comp.baseline]["psnr"][i], sc[lab]["psnr"][i])),
                        _csv_num(_delta(sc[comp.baseline]["ssim"][i], sc[lab]["ssim"][i]))]
            w.writerow(row + [conv])
    return buf.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "Δ": r"$\Delta$", "<": r"\textless{}", ">": r"\textgreater{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(comparison: Comparison, label: str = "tab:mcir-compare") -> str:
    """A booktabs table in the layout of the paper's Table 1: a row per model, PSNR/SSIM
    per dataset and the average, best in \\textbf, Δ rows, a caption naming the
    conventions. Needs \\usepackage{booktabs}."""
    comp = comparison
    conv = comp.conventions
    channel = "the Y channel (BT.601)" if conv.get("y_channel") else "RGB"
    border = int(conv.get("crop_border", 0) or 0)
    crop = f"{border} border pixels cropped" if border else "no border cropped"
    quant = conv.get("quantize")
    quant_txt = f"images quantised to {quant} (BasicSR conventions)" if quant else "no quantisation"
    caption = (f"PSNR (dB)/SSIM on {channel}, {crop}, {quant_txt}. Best in bold. "
               f"$\\Delta$: difference to {comp.baseline}. Average: mean of the per-dataset means.")
    lines = ["% requires \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering",
             f"\\caption{{{_latex_caption(caption)}}}", f"\\label{{{label}}}",
             "\\begin{tabular}{l" + "c" * len(comp.columns) + "}", "\\toprule",
             "Model & " + " & ".join(latex_escape(c) for c in comp.columns) + " \\\\", "\\midrule"]
    for lab in comp.models:
        cells = []
        for col in comp.columns:
            s = comp.scores[lab][col]
            p, q = _latex_num(_fmt_psnr(s.psnr)), _fmt_ssim(s.ssim)
            if _is_best(comp, col, "psnr", s.psnr):
                p = f"\\textbf{{{p}}}"
            if _is_best(comp, col, "ssim", s.ssim):
                q = f"\\textbf{{{q}}}"
            cells.append(f"{p}/{q}")
        lines.append(f"{latex_escape(lab)} & " + " & ".join(cells) + " \\\\")
    lines.append("\\midrule")
    for lab in comp.models[1:]:
        name = "$\\Delta$" if len(comp.models) == 2 else f"$\\Delta$ {latex_escape(lab)}"
        cells = [f"{_latex_num(_fmt_dpsnr(comp.deltas[lab][c].psnr))}/{_fmt_dssim(comp.deltas[lab][c].ssim)}"
                 for c in comp.columns]
        lines.append(f"{name} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _latex_num(s: str) -> str:
    return {"inf": "$\\infty$", "+inf": "$+\\infty$", "-inf": "$-\\infty$"}.get(s, s)


def _latex_caption(caption: str) -> str:
    # Escape everything except the math we put in on purpose.
    marker = "\x00DELTA\x00"
    text = caption.replace("$\\Delta$", marker)
    return latex_escape(text).replace(marker, "$\\Delta$")


# --------------------------------------------------------------------------- files

EXPORTS = {"json": to_json, "markdown": to_markdown, "csv": to_csv, "latex": to_latex}


def check_export_paths(paths: dict[str, str | Path | None]) -> dict[str, Path]:
    """The export targets given ({"json": path or None, ...}), refused with a one-line
    McirError when one exists already (mcir never overwrites a file) or two coincide."""
    out = {kind: Path(p) for kind, p in paths.items() if p is not None}
    for kind, path in out.items():
        if kind not in EXPORTS:
            raise ValueError(f"unknown export {kind!r}")
        if path.exists():
            raise McirError(f"--{kind} file exists; choose a new name (mcir never overwrites "
                            "results)", path)
        writable_target(path, f"--{kind} file")
    seen: dict[Path, str] = {}
    for kind, path in out.items():
        key = path.resolve()
        if key in seen:
            raise McirError(f"--{seen[key]} and --{kind} name the same file", path)
        seen[key] = kind
    return out


def write_exports(comparison: Comparison, paths: dict[str, Path]) -> list[Path]:
    """Write each requested export atomically (after `check_export_paths`)."""
    from mcir_cli.fsutil import atomic_write_text

    return [atomic_write_text(path, EXPORTS[kind](comparison)) for kind, path in paths.items()]


_GENERIC_STEMS = {"model", "best", "latest", "last", "final", "checkpoint", "net_g_latest"}


def checkpoint_label(path: str | Path) -> str:
    """A display label for a checkpoint: its stem, or `<run folder>` for the generic names
    a run folder uses (RUN/model.safetensors -> "RUN", RUN/best.pth -> "RUN/best")."""
    path = Path(path)
    stem = path.stem
    if stem.lower() in _GENERIC_STEMS and path.parent.name:
        parent = path.resolve().parent.name
        return parent if stem.lower() == "model" else f"{parent}/{stem}"
    return stem


def evaluate_checkpoints(
    checkpoints: list[Path],
    data: list[Path],
    *,
    scale: int | None = None,
    task: str | None = None,
    y_channel: bool | None = None,
    crop_border: int | None = None,
    device: str = "auto",
    tile: int | None = None,
    progress: Any = None,
) -> tuple[list[dict], list[Any], dict[str, Any]]:
    """Evaluate every checkpoint on the same folders with identical conventions.

    Returns (results, loaded models, datasets by name); `progress(label, dataset, done,
    total)` is called per image. The models are kept for the visuals."""
    from mcir_cli.data import discover_all
    from mcir_cli.evaluate import evaluate_model
    from mcir_cli.models import load_model

    # all models first: checkpoints that cannot be compared are refused before any scoring
    models = [load_model(path, None, scale) for path in checkpoints]
    scales = {m.scale for m in models}
    if len(scales) > 1:
        found = ", ".join(f"{checkpoint_label(p)} x{m.scale}" for p, m in zip(checkpoints, models))
        raise McirError(f"the checkpoints restore at different scales ({found}); compare models of one "
                        "scale, on the same benchmark")
    results = []
    for path, model in zip(checkpoints, models):
        label = checkpoint_label(path)

        def per_image(name: str, done: int, total: int, label: str = label) -> None:
            if progress:
                progress(label, name, done, total)

        res = evaluate_model(model, data, task=task, y_channel=y_channel, crop_border=crop_border,
                             device=device, tile=tile, progress=per_image)
        res["model"]["label"] = label
        results.append(res)
    first = models[0]
    datasets = {d.name: d for d in discover_all(data, first.scale if first.scale > 1 else None, results[0].get("task"))}
    return results, models, datasets
