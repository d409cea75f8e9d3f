"""A study's numbers: the paper-style table (mean ± sd over seeds) and, per dataset, each
arm's Δ vs plain fine-tuning paired over images *and* seeds, with a verdict."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcir_cli.paper import paper_notes, paper_rows
from mcir_cli.stats import fmt_p

RESAMPLES = 10_000


def _per_image(result: dict[str, Any], dataset: str, metric: str) -> dict[str, float]:
    return {img["name"]: float(img[metric]) for img in result["datasets"][dataset]["images"]}


def delta_matrix(results: dict[str, Any], arm: str, seeds: list[int], dataset: str,
                 metric: str = "psnr") -> tuple[np.ndarray, list[str]]:
    """D[s, i] = arm − plain on image i with seed s (the same patches, the same start)."""
    rows, names = [], None
    for seed in seeds:
        base = _per_image(results[f"plain-s{seed}"], dataset, metric)
        new = _per_image(results[f"{arm}-s{seed}"], dataset, metric)
        names = sorted(set(base) & set(new)) if names is None else names
        rows.append([new[n] - base[n] for n in names])
    return np.asarray(rows, dtype=np.float64), names or []


def clustered_stats(d: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Mean Δ with a 95 % bootstrap CI resampling seeds and images (two-way), the win
    rate over (seed, image) pairs, a sign-flip permutation p over images (of their
    seed-mean Δ), and how many seeds improved on average."""
    k, n = d.shape
    rng = np.random.default_rng(seed)
    s_idx = rng.integers(0, k, size=(resamples, k))
    i_idx = rng.integers(0, n, size=(resamples, n))
    boot = d[s_idx[:, :, None], i_idx[:, None, :]].mean(axis=(1, 2))
    per_image = d.mean(axis=0)
    obs = abs(per_image.mean())
    signs = rng.choice((-1.0, 1.0), size=(resamples, n))
    flips = np.abs((signs * per_image).mean(axis=1))
    p = (np.sum(flips >= obs - 1e-15) + 1) / (resamples + 1)
    if not np.any(per_image):
        p = 1.0
    per_seed = d.mean(axis=1)
    return {
        "mean": float(d.mean()), "ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "win_rate": float(np.mean(d > 0)), "ties": float(np.mean(d == 0)), "p": float(p),
        "per_seed": [float(x) for x in per_seed], "seeds_better": int(np.sum(per_seed > 0)), "seeds": k, "images": n,
    }


def verdict(s: dict[str, Any], alpha: float = 0.05) -> str:
    lo, hi = s["ci"]
    if lo > 0 and s["p"] < alpha and s["seeds_better"] == s["seeds"]:
        return "better than plain fine-tuning (CI above 0, p < 0.05, every seed)"
    if hi < 0 and s["p"] < alpha and s["seeds_better"] == 0:
        return "worse than plain fine-tuning (CI below 0, p < 0.05, every seed)"
    if s["images"] * s["seeds"] <= 5:
        return "too few images and seeds to call"
    return "not distinguishable from plain fine-tuning at 5 %"


def _table(plan: Any, results: dict[str, Any], datasets: list[str]) -> dict[str, Any]:
    table: dict[str, Any] = {"start": {d: {"psnr": results["start"]["datasets"][d]["psnr"],
                                           "ssim": results["start"]["datasets"][d]["ssim"]} for d in datasets}}
    for arm in plan.arms:
        row = {}
        for d in datasets:
            vals = {m: [results[f"{arm.name}-s{s}"]["datasets"][d][m] for s in plan.seeds] for m in ("psnr", "ssim")}
            row[d] = {m: float(np.mean(v)) for m, v in vals.items()}
            row[d].update({f"{m}_sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for m, v in vals.items()})
        table[arm.name] = row
    return table


def summarise(plan: Any, results: dict[str, Any]) -> dict[str, Any]:
    """study.json: the plan, the conventions, the table and every arm's Δ vs plain."""
    datasets = list(results["start"]["datasets"])
    out: dict[str, Any] = {"plan": plan.to_json(), "conventions": results["start"]["conventions"],
                           "datasets": datasets, "table": _table(plan, results, datasets), "deltas": {}}
    for arm in plan.arms:
        if arm.name == "plain":
            continue
        per: dict[str, Any] = {}
        mats = []
        for d in datasets:
            mat, _ = delta_matrix(results, arm.name, plan.seeds, d)
            mats.append(mat)
            per[d] = clustered_stats(mat)
            per[d]["verdict"] = verdict(per[d])
        if len(mats) > 1:  # all benchmark images together: every (seed, image) pair once
            per["all images"] = clustered_stats(np.concatenate(mats, axis=1))
            per["all images"]["verdict"] = verdict(per["all images"])
        out["deltas"][arm.name] = {"settings": arm.describe(), "datasets": per}
    out["paper"] = paper_summary(results)
    return out


# --------------------------------------------------------------------------- the paper's rows


def paper_summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """study.json's `paper`: the MCIR paper's printed figures for the study's benchmarks,
    from the start model (every arm is its architecture); never in the statistics."""
    return paper_rows(results["start"])


def paper_table_lines(summary: dict[str, Any]) -> list[str]:
    """study.md's paper rows (baseline, + SPN, Δ per preset) under the measured table."""
    from mcir_cli.exports import paper_table_rows

    return [f"| *{label}* | " + " | ".join(cells) + " |"
            for label, cells in paper_table_rows(summary.get("paper", []), summary["datasets"])]


def paper_notes_lines(summary: dict[str, Any]) -> list[str]:
    """study.md's footnotes of the paper rows."""
    notes = paper_notes(summary.get("paper", []))
    return ["", *(f"- {n}" for n in notes)] if notes else []


def _pm(mean: float, sd: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if sd else f"{mean:.{digits}f}"


def to_markdown(summary: dict[str, Any]) -> str:
    plan, datasets = summary["plan"], summary["datasets"]
    conv = summary["conventions"].get("description", summary["conventions"])
    seeds = plan["seeds"]
    lines = [f"# mcir study: {len(plan['arms'])} arms x {len(seeds)} seeds x {plan['iters']} steps", "",
             f"PSNR (dB) / SSIM, {conv}; mean ± sd over seeds {', '.join(map(str, seeds))}.", "",
             "| model | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for name, row in summary["table"].items():
        cells = [f"{_pm(row[d]['psnr'], row[d].get('psnr_sd', 0), 2)} / {_pm(row[d]['ssim'], row[d].get('ssim_sd', 0), 4)}"
                 for d in datasets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += paper_table_lines(summary) + paper_notes_lines(summary)
    lines += ["", "Δ PSNR vs plain fine-tuning, paired over images and seeds (95 % two-way bootstrap CI, "
              f"{RESAMPLES} resamples; win rate over (seed, image) pairs; sign-flip permutation p over images):", ""]
    for arm, info in summary["deltas"].items():
        lines += [f"**{arm}** ({info['settings']})", "", "| dataset | Δ dB | 95 % CI | win rate | p | seeds better | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for d, s in info["datasets"].items():
            lo, hi = s["ci"]
            lines.append(f"| {d} | {s['mean']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {s['win_rate']:.0%} | "
                         f"{fmt_p(s['p'])} | {s['seeds_better']}/{s['seeds']} | {s['verdict']} |")
        lines.append("")
    return "\n".join(lines)

