"""The MCIR paper's published figures beside mcir's measurements.

Each preset the paper retrained carries, in its TOML's `[paper]` section, the paper's
baseline and +SPN figures per test set exactly as printed, with the table they come
from (Tables 1–4 of "Learning from History", AAAI 2024). This module reads and checks
that section (`parse_paper`, called when a preset is read), owns the one rule that says
whether a benchmark folder is one the paper reports (`benchmark_named`) and whether a
model is a preset's (`model_presets`), and turns an evaluation result into "paper rows"
(`paper_rows`): plain dicts kept under a separate `paper` key, never mixed into the
measured scores or their statistics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcir_cli.errors import McirError

PAPER = "MCIR (AAAI 2024)"
FULL_SET = "paper: full set"  # the flag of a row whose benchmark here is a part of the paper's


@dataclass(frozen=True)
class Benchmark:
    """A test set the paper reports: its name as the tables print it, its task, how many
    images the full set has, and the names its folders go by (split into tokens)."""

    name: str
    task: str
    images: int
    aliases: tuple[str, ...]


# Full-set sizes as the test sets are published (Set14, BSD100, Urban100, Manga109; Rain100
# and Rain200 test splits; DID-MDN test 1,200; DDN-Data test Rain1400; SPA-Data test 1,000;
# RESIDE SOTS indoor 500; RESIDE-6K test 1,000 = "SOTS-mix"; GoPro test 1,111).
BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("Set14", "sr", 14, ("set14",)),
    Benchmark("B100", "sr", 100, ("b100", "bsd100", "bsds100")),
    Benchmark("Urban100", "sr", 100, ("urban100",)),
    Benchmark("Manga109", "sr", 109, ("manga109",)),
    Benchmark("Rain100L", "derain", 100, ("rain100l",)),
    Benchmark("Rain100H", "derain", 100, ("rain100h",)),
    Benchmark("Rain200L", "derain", 200, ("rain200l",)),
    Benchmark("Rain200H", "derain", 200, ("rain200h",)),
    Benchmark("DID", "derain", 1200, ("did", "didmdn", "did mdn", "did data")),
    Benchmark("DDN", "derain", 1400, ("ddn", "ddn data", "rain1400")),
    Benchmark("SPA", "derain", 1000, ("spa", "spa data")),
    Benchmark("SOTS-indoor", "dehaze", 500, ("sots indoor", "reside in")),
    Benchmark("SOTS-mix", "dehaze", 1000, ("sots mix", "reside 6k")),
    Benchmark("GoPro", "deblur", 1111, ("gopro",)),
)
_BY_NAME = {b.name: b for b in BENCHMARKS}
# tokens that may follow a benchmark's name without making it a part of the set
_PLAIN = {"test", "testing", "testset", "val", "valid", "validation", "hr", "gt", "gtmod12", "full",
          "data", "dataset", "benchmark", "large", "original", "images"}
_TRAIN = {"train", "training", "trainset"}  # a training split is not the test set
_SCALE_TOKEN = re.compile(r"x\d+|lrbicx\d+")


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def _find(tokens: list[str]) -> tuple[Benchmark, set[str]] | None:
    """The benchmark whose alias appears as consecutive `tokens` (the longest alias wins),
    and the alias's words."""
    best: tuple[Benchmark, list[str]] | None = None
    for bench in BENCHMARKS:
        for alias in bench.aliases:
            want = alias.split()
            hit = any(tokens[i : i + len(want)] == want for i in range(len(tokens) - len(want) + 1))
            if hit and (best is None or len(want) > len(best[1])):
                best = (bench, want)
    return None if best is None else (best[0], set(best[1]))


def benchmark_named(name: str, root: str | Path | None = None) -> tuple[Benchmark, bool] | None:
    """The paper's test set a benchmark folder is, and whether its name marks a part of it.

    The rule, once: names are split into tokens at every character that is not a letter
    or digit; the dataset's own name (its folder's, e.g. `Set14`, `BSD100`,
    `B100_subset20`, `Rain100L`) is tried first, then the name with its parent
    (`SOTS/indoor`, `RESIDE-IN/test`, `GOPRO_Large/test`). A test set is named when one
    of its aliases appears as consecutive tokens; a training split (`train`) is never a
    test set; any other token of the folder's own name (`subset20`, `examples2`,
    `crops`) marks a part of the set, while `test`, `HR`, `x4`, ... do not."""
    own = name.split("/")[-1]
    texts = [own, name] + (["/".join(Path(root).parts[-2:])] if root is not None else [])
    for text in texts:
        tokens = _tokens(text)
        found = _find(tokens)
        if found is None:
            continue
        if any(t in _TRAIN for t in tokens):
            return None
        bench, words = found
        part = any(t not in words and t not in _PLAIN and not _SCALE_TOKEN.fullmatch(t) for t in _tokens(own))
        return bench, part
    return None


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figure:
    """One "PSNR/SSIM" as printed: the text kept (its digits are the paper's) and its values."""

    text: str
    psnr: float
    ssim: float

    @property
    def digits(self) -> tuple[int, int]:
        return tuple(len(part.partition(".")[2]) for part in self.text.split("/"))  # type: ignore[return-value]


@dataclass(frozen=True)
class PaperResult:
    """The paper's figures for one test set (named as its table prints it)."""

    test_set: str
    baseline: Figure
    spn: Figure
    note: str = ""
    also: tuple[str, ...] = ()  # other test sets the figures are shown for (a misprinted column)
    trained_on: str | None = None  # the paper's training set, where it is not the preset's


@dataclass(frozen=True)
class PaperFigures:
    """A preset's `[paper]` section."""

    table: str
    conventions: str
    results: dict[str, PaperResult]
    y_channel: bool | None = None  # what the table states, when it does
    note: str = ""
    average: tuple[Figure, Figure] | None = None

    def result_for(self, bench: Benchmark) -> PaperResult | None:
        return next((r for r in self.results.values() if bench.name in (r.test_set, *r.also)), None)


_FIGURE = re.compile(r"(\d{1,3}\.\d{1,4})/(0\.\d{1,4}|1\.0+)")


def _figure(value: Any, where: str, bad: Any) -> Figure:
    if not isinstance(value, str) or not _FIGURE.fullmatch(value):
        raise bad(f"{where} must be a printed figure such as \"28.58/0.7813\", got {value!r}")
    psnr, ssim = value.split("/")
    return Figure(value, float(psnr), float(ssim))


def _result(name: str, data: Any, task: str, bad: Any) -> PaperResult:
    if name not in _BY_NAME:
        raise bad(f"paper.results: {name!r} is not a test set the paper reports ({', '.join(_BY_NAME)})")
    if not isinstance(data, dict) or not {"baseline", "spn"} <= set(data):
        raise bad(f"paper.results.{name} needs baseline and spn")
    unknown = set(data) - {"baseline", "spn", "note", "also", "trained_on"}
    if unknown:
        raise bad(f"paper.results.{name}: unknown key {sorted(unknown)[0]!r}")
    also = tuple(data.get("also", ()))
    for key in ("note", "trained_on"):
        if not isinstance(data.get(key, ""), str):
            raise bad(f"paper.results.{name}.{key} must be text")
    for other in (name, *also):
        if other not in _BY_NAME or _BY_NAME[other].task != task:
            raise bad(f"paper.results.{name}: {other!r} is not a {task} test set the paper reports")
    return PaperResult(name, _figure(data["baseline"], f"paper.results.{name}.baseline", bad),
                       _figure(data["spn"], f"paper.results.{name}.spn", bad), str(data.get("note", "")),
                       also, data.get("trained_on"))


def _check_average(paper: PaperFigures, bad: Any) -> None:
    """The printed Avg. must be the mean of the printed columns, to within one unit of its
    last digit (the paper's own rounding): a transcription slip fails here."""
    assert paper.average is not None
    for which, avg in zip(("baseline", "spn"), paper.average):
        figs = [getattr(r, which) for r in paper.results.values()]
        for i, metric in enumerate(("psnr", "ssim")):
            mean = sum(getattr(f, metric) for f in figs) / len(figs)
            if abs(mean - getattr(avg, metric)) > 10.0 ** -avg.digits[i] + 1e-9:
                raise bad(f"paper.average.{which}: {avg.text} is not the mean of the {len(figs)} results "
                          f"({metric} {mean:.4f})")


def parse_paper(data: Any, task: str, path: Path | None) -> PaperFigures | None:
    """A preset's `[paper]` section, checked: known test sets of the preset's task,
    figures as printed ("PSNR/SSIM"), a table named, an average consistent with them."""
    if data is None:
        return None

    def bad(what: str) -> McirError:
        return McirError(f"malformed preset ({what})", path)

    if not isinstance(data, dict) or not isinstance(data.get("table"), str) or not data["table"]:
        raise bad("paper.table must name the paper's table, e.g. \"Table 1\"")
    unknown = set(data) - {"table", "conventions", "y_channel", "note", "average", "results"}
    if unknown:
        raise bad(f"paper: unknown key {sorted(unknown)[0]!r}")
    results = data.get("results")
    if not isinstance(results, dict) or not results:
        raise bad("paper.results must give at least one test set")
    if data.get("y_channel") not in (None, True, False):
        raise bad(f"paper.y_channel must be true or false, got {data['y_channel']!r}")
    avg = data.get("average")
    if avg is not None and not isinstance(avg, dict):
        raise bad("paper.average must give baseline and spn")
    paper = PaperFigures(
        table=data["table"], conventions=str(data.get("conventions", "")),
        results={k: _result(k, v, task, bad) for k, v in results.items()},
        y_channel=data.get("y_channel"), note=str(data.get("note", "")),
        average=None if avg is None else (_figure(avg.get("baseline"), "paper.average.baseline", bad),
                                          _figure(avg.get("spn"), "paper.average.spn", bad)),
    )
    if paper.average is not None:
        _check_average(paper, bad)
    return paper


# --------------------------------------------------------------------------- rows


def model_presets(model: dict[str, Any]) -> tuple[list[Any], str]:
    """The presets whose paper figures apply to an evaluated model, and why: the preset it
    was loaded as (`--model PRESET`), else every preset with figures whose architecture,
    scale and parameter count all equal the checkpoint's (a retrained preset keeps them;
    the five IDT presets share one network, and their test sets tell them apart)."""
    from mcir_cli.models.presets import get_preset, list_presets  # lazy: cycle, presets imports paper

    if model.get("preset"):
        try:
            preset = get_preset(str(model["preset"]))
        except McirError:
            return [], ""
        return ([preset] if preset.paper else []), "loaded as the preset"
    arch, scale, params = model.get("architecture"), model.get("scale"), model.get("params")
    if not arch or params is None:
        return [], ""
    found = [p for p in list_presets()
             if p.paper and (p.architecture, p.scale, p.params) == (arch, scale, params)]
    return found, "same architecture, scale and parameter count"


def _fig(fig: Figure) -> dict[str, Any]:
    return {"psnr": fig.psnr, "ssim": fig.ssim, "printed": fig.text}


def _delta(base: Figure, spn: Figure) -> dict[str, Any]:
    """+SPN − baseline at the printed digits (no float noise), and as text ("+0.05/+0.0016")."""
    dp, ds = (max(a, b) for a, b in zip(base.digits, spn.digits))
    psnr, ssim = round(spn.psnr - base.psnr, dp), round(spn.ssim - base.ssim, ds)
    return {"psnr": psnr, "ssim": ssim, "printed": f"{psnr:+.{dp}f}/{ssim:+.{ds}f}"}


def _flags(dataset: str, n: int, named: tuple[Benchmark, bool], result: PaperResult, preset: Any,
           conventions: dict[str, Any]) -> list[str]:
    """What makes the paper's figure not quite the measured one's twin."""
    bench, part = named
    flags = []
    if part or n != bench.images:
        flags.append(f"{FULL_SET} ({bench.name}, {bench.images} images; measured here: {n} in {dataset})")
    if bench.name != result.test_set:
        flags.append(f"paper: printed as {result.test_set}")
    if result.trained_on:
        flags.append(f"paper: trained on {result.trained_on}")
    paper = preset.paper
    if paper.y_channel is not None:
        border = preset.scale if preset.task == "sr" else 0
        if (bool(conventions.get("y_channel")) != paper.y_channel
                or int(conventions.get("crop_border", 0) or 0) != border):
            flags.append(f"paper: {paper.conventions.split(';')[0]}")
    return flags


def _row(dataset: str, n: int, named: tuple[Benchmark, bool], preset: Any, result: PaperResult,
         matched_by: str, conventions: dict[str, Any]) -> dict[str, Any]:
    paper = preset.paper
    return {
        "dataset": dataset, "test_set": result.test_set, "preset": preset.name, "table": paper.table,
        "source": f"{PAPER} {paper.table}, as printed", "matched_by": matched_by,
        "baseline": _fig(result.baseline), "spn": _fig(result.spn),
        "delta": _delta(result.baseline, result.spn), "conventions": paper.conventions,
        "flags": _flags(dataset, n, named, result, preset, conventions),
        "notes": [n for n in (result.note, paper.note) if n],
    }


def paper_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's rows for an evaluation result: one per measured dataset that is a test
    set the paper reports for the model's preset (`model_presets`, `benchmark_named`).
    Never for an SR set whose LR is not bicubic (`lr_degradation`: the paper tests bicubic
    downscales). The measured scores are only read (image counts), never changed."""
    presets, matched_by = model_presets(result.get("model") or {})
    if not presets:
        return []
    roots = result.get("data") or {}
    degraded = result.get("lr_degradation") or {}  # the paper's SR figures are for bicubic LR
    rows = []
    for dataset, scores in result.get("datasets", {}).items():
        named = benchmark_named(dataset, roots.get(dataset))
        if named is None or dataset in degraded:
            continue
        hits = [(p, r) for p in presets if (r := p.paper.result_for(named[0])) is not None]
        if len(hits) == 1:
            rows.append(_row(dataset, len(scores.get("images", ())), named, *hits[0], matched_by,
                             result.get("conventions") or {}))
    return rows


def merged_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper rows of several results (a comparison, a study), each (preset, dataset) once."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for result in results:
        for row in paper_rows(result):
            seen.setdefault((row["preset"], row["dataset"]), row)
    return list(seen.values())


# --------------------------------------------------------------------------- text


MARK = "†"  # marks a paper figure that has flags (listed by `paper_notes`)


def by_preset(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """preset -> dataset -> row: the paper's rows of a table whose columns are datasets."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["preset"], {})[row["dataset"]] = row
    return out


def row_labels(preset: str, rows: dict[str, dict[str, Any]]) -> tuple[str, str, str]:
    """Labels of a preset's three paper rows: baseline, + SPN, Δ (naming the table)."""
    tables = ", ".join(dict.fromkeys(r["table"] for r in rows.values()))
    return (f"paper {tables}: {preset}", f"paper {tables}: {preset} + SPN", f"paper {tables}: Δ")


def average_row(preset: str, by_ds: dict[str, dict[str, Any]], datasets: list[str]) -> dict[str, Any] | None:
    """The paper's "Avg." of a preset as a row, for an average column: only where the
    table's datasets are exactly the paper's test sets of that preset (Table 1's four), so
    the two averages are over the same sets; flagged when any of its rows is."""
    from mcir_cli.models.presets import get_preset  # lazy: cycle, presets imports paper

    paper = get_preset(preset).paper
    if paper is None or paper.average is None or set(datasets) != set(by_ds):
        return None
    if sorted(r["test_set"] for r in by_ds.values()) != sorted(paper.results):
        return None
    base, spn = paper.average
    return {"baseline": _fig(base), "spn": _fig(spn), "delta": _delta(base, spn),
            "flags": [f for r in by_ds.values() for f in r["flags"]]}


def cell(row: dict[str, Any] | None, which: str) -> str:
    """A paper cell as printed ("28.58/0.7813"; Δ "+0.05/+0.0016"), "–" where the paper
    has none, marked † when the row has flags."""
    if row is None:
        return "–"
    return row[which]["printed"] + (MARK if row["flags"] and which == "baseline" else "")


def paper_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per flagged figure, then each note once: the footnotes of every table
    that shows paper rows."""
    lines = [f"{MARK} {r['dataset']} ({r['preset']}, {r['table']}): {'; '.join(r['flags'])}"
             for r in rows if r["flags"]]
    notes = dict.fromkeys(f"{r['preset']} ({r['table']}): {n}" for r in rows for n in r["notes"])
    head = ("Paper rows: the MCIR paper's printed figures (AAAI 2024; the baseline as it reports it, + SPN "
            "retrained from scratch, full test sets): not measured here, never in the statistics; the model "
            "is the preset's: " + ", ".join(dict.fromkeys(r["matched_by"] for r in rows)) + ".") if rows else ""
    return ([head] if head else []) + lines + list(notes)
