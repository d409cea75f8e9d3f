"""Making evaluation results comparable: display labels, the scoring conventions checked
to be the same, and every result aligned to the datasets and images all of them hold
(`Dropped` says what was left out). Pure; `results.py` compares what `align` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcir_cli.errors import McirError

# derived text, and "grey" (a one-channel model's images are scored on their channel either
# way: a label, not a setting; a grey model against the JPEG row of its inputs compares)
_IGNORED_CONVENTION_KEYS = {"description", "grey"}
_SETTING_KEYS = ("task", "noise", "inference")  # "inference": tile, overlap, amp


def _distinct_tails(paths: list[str]) -> list[str]:
    """The shortest path endings that tell the files apart (a/X4.json, b/X4.json)."""
    parts = [Path(p).parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        tails = ["/".join(p[-k:]) for p in parts]
        if len(set(tails)) == len(tails):
            return tails
    return list(paths)


def display_labels(results: list[dict]) -> list[str]:
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
    labels = display_labels(results)
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


def mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def align(results: list[dict]) -> tuple[list[dict], Dropped]:
    """Restrict every result to the datasets present in all of them and, per dataset, to
    the image names present in all of them (sorted by name). A dataset whose image set
    changed for a result gets its mean PSNR/SSIM recomputed over the kept images; when
    nothing was dropped the file's own means are kept. Raises McirError when no dataset
    with common images remains."""
    if not results:
        raise McirError("nothing to compare: no results given")
    labels = display_labels(results)
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
        psnr, ssim = mean_or_nan([i["psnr"] for i in images]), mean_or_nan([i["ssim"] for i in images])
    else:
        psnr, ssim = float(src["psnr"]), float(src["ssim"])
    return {"psnr": psnr, "ssim": ssim, "images": images}
