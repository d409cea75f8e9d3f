"""A study's numbers: the paper-style table (mean ± sd over seeds), each arm's Δ vs plain
paired over images *and* seeds (`stats.seed_image_stats`), the units a collapse stopped,
and the validation curves (mean ± sd over seeds)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mcir_cli.compare.exports import paper_table_rows
from mcir_cli.compare.stats import fmt_p, seed_image_stats
from mcir_cli.models.paper import paper_notes, paper_rows

# how the Δ statistics are made: study.md, the terminal and report.html say it in these words
METHOD = ("Δ PSNR vs plain, paired over images and seeds: 95 % CI and p from a t test over seeds "
          "(seeds − 1 degrees of freedom) whose error also carries each image's own variation; win rate over "
          "(seed, image) pairs; 'detectable' is the smallest Δ this design finds at 80 % power")
COLLAPSE_RULE = "a unit's first collapse stops it: it is scored as stopped and left out of the Δ statistics"
NO_PAIRS = "no verdict: in every seed this arm's unit or plain's was stopped by a collapse"


def run_name(arm: str, seed: int) -> str:
    """A study unit's name: its run folder, its results file, its row of study.json's
    units (`StudyPlan.run_name`; also the start row of a from-scratch study, "start")."""
    return f"{arm}-s{seed}"


def _per_image(result: dict[str, Any], dataset: str, metric: str) -> dict[str, float]:
    return {img["name"]: float(img[metric]) for img in result["datasets"][dataset]["images"]}


def delta_matrix(results: dict[str, Any], arm: str, seeds: list[int], dataset: str,
                 metric: str = "psnr") -> tuple[np.ndarray, list[str]]:
    """D[s, i] = arm − plain on image i with seed s (the same patches, the same start)."""
    rows, names = [], None
    for seed in seeds:
        base = _per_image(results[run_name("plain", seed)], dataset, metric)
        new = _per_image(results[run_name(arm, seed)], dataset, metric)
        names = sorted(set(base) & set(new)) if names is None else names
        rows.append([new[n] - base[n] for n in names])
    return np.asarray(rows, dtype=np.float64).reshape(len(seeds), -1), names or []


def _stopped(results: dict[str, Any], name: str) -> bool:
    return bool(results[name].get("training", {}).get("stopped"))


def paired_seeds(plan: Any, results: dict[str, Any], arm: str) -> list[int]:
    """The seeds whose arm and plain units both ran to the end (a collapse breaks the pair)."""
    return [s for s in plan.seeds
            if not _stopped(results, plan.run_name("plain", s)) and not _stopped(results, plan.run_name(arm, s))]


def collapses(plan: Any, results: dict[str, Any]) -> dict[str, Any]:
    """Every unit's steps and collapses, as study.json records them."""
    out = {}
    for arm in plan.arms:
        for seed in plan.seeds:
            name = plan.run_name(arm, seed)
            t = results[name].get("training", {})
            out[name] = {"steps": t.get("steps"), "collapses": t.get("collapses", 0), "stopped": t.get("stopped")}
    return out


def _start_row(plan: Any, results: dict[str, Any], datasets: list[str]) -> dict[str, Any]:
    starts = [results[plan.start_name(s)] for s in (plan.seeds if plan.from_scratch else plan.seeds[:1])]
    return _mean_row(starts, datasets)


def _mean_row(rows: list[dict[str, Any]], datasets: list[str]) -> dict[str, Any]:
    out = {}
    for d in datasets:
        vals = {m: [r["datasets"][d][m] for r in rows] for m in ("psnr", "ssim")}
        out[d] = {m: float(np.mean(v)) for m, v in vals.items()}
        out[d].update({f"{m}_sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for m, v in vals.items()})
    return out


def _table(plan: Any, results: dict[str, Any], datasets: list[str]) -> dict[str, Any]:
    table: dict[str, Any] = {"start": _start_row(plan, results, datasets)}
    for arm in plan.arms:
        table[arm.name] = _mean_row([results[plan.run_name(arm, s)] for s in plan.seeds], datasets)
    return table


def _arm_deltas(plan: Any, results: dict[str, Any], arm: str, datasets: list[str]) -> dict[str, Any]:
    seeds = paired_seeds(plan, results, arm)
    per: dict[str, Any] = {}
    if not seeds:
        return {"seeds_used": [], "datasets": {}, "note": NO_PAIRS}
    mats = []
    baseline = "plain training" if plan.from_scratch else "plain fine-tuning"
    for d in datasets:
        mat, _ = delta_matrix(results, arm, seeds, d)
        mats.append(mat)
        per[d] = seed_image_stats(mat, baseline=baseline).to_dict()
    if len(mats) > 1:  # all benchmark images together: every (seed, image) pair once
        per["all images"] = seed_image_stats(np.concatenate(mats, axis=1), baseline=baseline).to_dict()
    return {"seeds_used": seeds, "datasets": per}


def summarise(plan: Any, results: dict[str, Any], curves: dict[str, Any] | None = None) -> dict[str, Any]:
    """study.json: the plan, the conventions, the table, every unit's collapses, every
    arm's Δ vs plain and (with --val-every) the validation curves."""
    datasets = list(results[plan.start_name(plan.seeds[0])]["datasets"])
    out: dict[str, Any] = {"plan": plan.to_json(), "recipe": plan.recipe_note(), "method": METHOD,
                           "collapse_rule": COLLAPSE_RULE,
                           "conventions": results[plan.start_name(plan.seeds[0])]["conventions"],
                           "datasets": datasets, "table": _table(plan, results, datasets),
                           "units": collapses(plan, results), "deltas": {}}
    for arm in plan.arms:
        if arm.name != "plain":
            out["deltas"][arm.name] = {"settings": arm.describe(), **_arm_deltas(plan, results, arm.name, datasets)}
    out["paper"] = paper_summary(results[plan.start_name(plan.seeds[0])])
    if curves:
        out["curves"] = curves
    return out


def validation_curves(plan: Any, runs: dict[str, Path]) -> dict[str, Any]:
    """Per arm, the benchmarks' validation PSNR over steps (each run's val.json), mean ±
    sd over the seeds that reached each step. Only the plan's grid (every `val_every`
    steps, and the last): a run stopped by a signal or a collapse also validates where it
    stopped, a step no other seed shares."""
    out: dict[str, Any] = {}
    for arm in plan.arms:
        by_step: dict[int, list[float]] = {}
        for seed in plan.seeds:
            path = runs[plan.run_name(arm, seed)] / "val.json"
            history = json.loads(path.read_text())["history"] if path.exists() else []
            for h in history:
                step = int(h["step"])
                if step % max(plan.val_every, 1) == 0 or step == plan.iters:
                    by_step.setdefault(step, []).append(float(h["psnr"]))
        steps = sorted(by_step)
        out[arm.name] = {"steps": steps, "mean": [float(np.mean(by_step[s])) for s in steps],
                         "sd": [float(np.std(by_step[s], ddof=1)) if len(by_step[s]) > 1 else 0.0 for s in steps],
                         "n": [len(by_step[s]) for s in steps]}
    return out


# --------------------------------------------------------------------------- the paper's rows


def paper_summary(start: dict[str, Any]) -> list[dict[str, Any]]:
    """study.json's `paper`: the MCIR paper's printed figures for the study's benchmarks,
    from the start model's result (every arm is its architecture); never in the statistics."""
    return paper_rows(start)


def paper_table_lines(summary: dict[str, Any]) -> list[str]:
    """study.md's paper rows (baseline, + SPN, Δ per preset) under the measured table."""
    return [f"| *{label}* | " + " | ".join(cells) + " |"
            for label, cells in paper_table_rows(summary.get("paper", []), summary["datasets"])]


def paper_notes_lines(summary: dict[str, Any]) -> list[str]:
    """study.md's footnotes of the paper rows."""
    notes = paper_notes(summary.get("paper", []))
    return ["", *(f"- {n}" for n in notes)] if notes else []


def _pm(mean: float, sd: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if sd else f"{mean:.{digits}f}"


def study_number(x: float | None) -> float:
    """A statistic from study.json, where JSON's null stands for undefined (one seed)."""
    return float("nan") if x is None else float(x)


def fmt_signed(x: float | None, digits: int = 4) -> str:
    """A Δ or CI bound in every study table: "+0.0012", "-" when undefined (one seed)."""
    x = study_number(x)
    return f"{x:+.{digits}f}" if math.isfinite(x) else "-"


def _markdown_deltas(summary: dict[str, Any]) -> list[str]:
    lines = [f"{METHOD}.", ""]
    for arm, info in summary["deltas"].items():
        dropped = sorted(set(summary["plan"]["seeds"]) - set(info["seeds_used"]))
        note = f"; seeds {', '.join(map(str, dropped))} left out (a collapse)" if dropped else ""
        lines += [f"**{arm}** ({info['settings']}{note})", "",
                  "| dataset | Δ dB | 95 % CI | win rate | p | detectable | seeds better | verdict |",
                  "|---|---|---|---|---|---|---|---|"] if info["datasets"] else [f"**{arm}** ({info['settings']}): {NO_PAIRS}."]
        for d, s in info["datasets"].items():
            lo, hi = s["ci"]
            lines.append(f"| {d} | {fmt_signed(s['mean'])} | [{fmt_signed(lo)}, {fmt_signed(hi)}] | "
                         f"{s['win_rate']:.0%} | {fmt_p(study_number(s['p']))} | {fmt_signed(s['detectable']).lstrip('+')} | "
                         f"{s['seeds_better']}/{s['seeds']} | {s['verdict']} |")
        lines.append("")
    return lines


def _markdown_units(summary: dict[str, Any]) -> list[str]:
    hit = {n: u for n, u in summary["units"].items() if u["collapses"] or u["stopped"]}
    lines = [f"Collapses ({COLLAPSE_RULE}): " + ("none." if not hit else ""), ""]
    for name, u in hit.items():
        lines.append(f"- {name}: stopped by a collapse at step {u['steps']}; {u['stopped'] or 'finished'}")
    return lines + ([""] if hit else [])


def _markdown_curves(summary: dict[str, Any]) -> list[str]:
    curves = summary.get("curves")
    if not curves:
        return []
    arms = list(curves)
    steps = sorted({s for c in curves.values() for s in c["steps"]})
    where = ", ".join(Path(v).name for v in summary["plan"].get("val") or summary["plan"]["benchmarks"])
    lines = [f"Validation PSNR (dB) on {where} over training (the mean of the folders' means), "
             "mean ± sd over seeds:", "",
             "| step | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for step in steps:
        cells = []
        for a in arms:
            c = curves[a]
            cells.append(_pm(c["mean"][c["steps"].index(step)], c["sd"][c["steps"].index(step)], 3)
                         if step in c["steps"] else "")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines + [""]


def to_markdown(summary: dict[str, Any]) -> str:
    plan, datasets = summary["plan"], summary["datasets"]
    conv = summary["conventions"].get("description", summary["conventions"])
    seeds = plan["seeds"]
    start = "each seed's random initialisation" if plan.get("from_scratch") else "the start checkpoint"
    lines = [f"# mcir study: {len(plan['arms'])} arms x {len(seeds)} seeds x {plan['iters']} steps", "",
             f"Training: {summary['recipe']}. The start row is {start}.", "",
             f"PSNR (dB) / SSIM, {conv}; mean ± sd over seeds {', '.join(map(str, seeds))}.", "",
             "| model | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for name, row in summary["table"].items():
        cells = [f"{_pm(row[d]['psnr'], row[d].get('psnr_sd', 0), 2)} / {_pm(row[d]['ssim'], row[d].get('ssim_sd', 0), 4)}"
                 for d in datasets]
        stopped = sum(1 for s in seeds if summary.get("units", {}).get(run_name(name, s), {}).get("stopped"))
        label = f"{name} ({stopped} of {len(seeds)} stopped by a collapse)" if stopped else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += paper_table_lines(summary) + paper_notes_lines(summary)
    lines.append("")
    return "\n".join(lines + _markdown_units(summary) + _markdown_deltas(summary) + _markdown_curves(summary))
