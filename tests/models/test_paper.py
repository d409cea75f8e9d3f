"""The MCIR paper's printed figures inside the tool: carried by the real presets, checked
when read, shown as "paper" rows beside measured scores (evaluate, compare, study) for
benchmark folders the paper reports, flagged where the folder is a part of the set, and
never mixed into the measured numbers or their statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.errors import McirError
from mcir_cli.models.paper import FULL_SET, benchmark_named, paper_rows
from mcir_cli.models.presets import get_preset, list_presets, load_preset_file, presets_dir
from tests.conftest import SHARED, shared_path

runner = CliRunner()

# (preset, test set as printed, baseline, + SPN, table): ../shared/notes/paper-tables.md
PRINTED = [
    ("edsr-light-x2", "Manga109", "30.54/0.9769", "30.64/0.9772", "Table 1"),
    ("edsr-light-x4", "Set14", "28.58/0.7813", "28.63/0.7829", "Table 1"),
    ("edsr-light-x4", "Urban100", "26.04/0.7849", "26.12/0.7878", "Table 1"),
    ("swinir-light-x4", "B100", "27.69/0.7406", "27.72/0.7414", "Table 1"),
    ("swinir-x4", "Manga109", "31.67/0.9226", "31.75/0.9229", "Table 1"),
    ("idt-rain200l", "Rain100L", "40.74/0.9884", "41.12/0.9893", "Table 2"),
    ("idt-rain200h", "Rain100H", "32.10/0.9343", "32.17/0.9352", "Table 2"),
    ("idt-did", "DID", "34.85/0.9401", "34.94/0.9424", "Table 2"),
    ("idt-ddn", "DDN", "33.80/0.9407", "33.90/0.9442", "Table 2"),
    ("idt-spa", "SPA", "47.34/0.9929", "48.04/0.9938", "Table 2"),
    ("ffanet-its", "SOTS-indoor", "36.39/0.989", "39.80/0.995", "Table 3"),
    ("dehazeformer-t", "SOTS-mix", "30.36/0.973", "30.44/0.974", "Table 3"),
    ("dehazeformer-s", "SOTS-indoor", "36.82/0.992", "37.24/0.993", "Table 3"),
    ("dehazeformer-b", "SOTS-indoor", "37.84/0.994", "38.41/0.994", "Table 3"),
    ("nafnet-gopro-w32", "GoPro", "32.87/0.9606", "32.93/0.9619", "Table 4"),
]


@pytest.mark.unit
@pytest.mark.parametrize("preset,test_set,baseline,spn,table", PRINTED)
def test_presets_carry_the_printed_figures(preset, test_set, baseline, spn, table):
    paper = get_preset(preset).paper
    result = paper.results[test_set]
    assert (result.baseline.text, result.spn.text, paper.table) == (baseline, spn, table)


@pytest.mark.unit
def test_only_the_retrained_presets_carry_figures_and_contradictions_are_surfaced():
    carrying = {p.name for p in list_presets() if p.paper}
    assert carrying == {p for p, *_ in PRINTED} | {"dehazeformer-t"}
    assert get_preset("imdn-x4").paper is None and get_preset("swinir-light-x2").paper is None
    rain = get_preset("idt-rain200l").paper.results["Rain100L"]
    assert rain.also == ("Rain200L",) and "Rain200L" in rain.note
    assert "38 dB" in get_preset("edsr-light-x2").paper.results["Manga109"].note
    assert "1.3 dB" in get_preset("edsr-light-x2").paper.note
    assert get_preset("ffanet-its").paper.results["SOTS-mix"].trained_on == "RESIDE-6K"
    assert "0.9886" in get_preset("ffanet-its").paper.results["SOTS-indoor"].note  # Table 5's digits


def _preset_with(tmp_path: Path, paper: str, base: str = "edsr-light-x4") -> Path:
    text = (presets_dir() / f"{base}.toml").read_text()
    path = tmp_path / "p.toml"
    path.write_text(text[: text.index("[paper]")] + paper)
    return path


@pytest.mark.unit
@pytest.mark.parametrize("paper,match", [
    ('[paper]\ntable = "Table 1"\n[paper.results]\nSet14 = { baseline = "28.5", spn = "28.63/0.7829" }\n',
     "printed figure"),
    ('[paper]\ntable = "Table 1"\n[paper.results]\nSet5 = { baseline = "28.58/0.7813", spn = "28.63/0.7829" }\n',
     "not a test set the paper reports"),
    ('[paper]\ntable = "Table 1"\n[paper.results]\nGoPro = { baseline = "28.58/0.7813", spn = "28.63/0.7829" }\n',
     "not a sr test set"),
    ('[paper]\n[paper.results]\nSet14 = { baseline = "28.58/0.7813", spn = "28.63/0.7829" }\n', "paper.table"),
    ('[paper]\ntable = "Table 1"\naverage = { baseline = "28.99/0.7813", spn = "28.63/0.7829" }\n[paper.results]\n'
     'Set14 = { baseline = "28.58/0.7813", spn = "28.63/0.7829" }\n', "not the mean"),
    ('[paper]\ntable = "Table 1"\nbaseline = "28.58/0.7813"\n[paper.results]\n'
     'Set14 = { baseline = "28.58/0.7813", spn = "28.63/0.7829" }\n', "unknown key 'baseline'"),
    ('[paper]\ntable = "Table 1"\n[paper.results]\nSet14 = { baseline = "28.58/0.7813", spn = "28.63/0.7829", '
     'trained_on = 3 }\n', "trained_on must be text"),
])
def test_malformed_paper_sections_are_one_line_errors(tmp_path, paper, match):
    with pytest.raises(McirError, match=match) as err:
        load_preset_file(_preset_with(tmp_path, paper))
    assert "\n" not in str(err.value) and "p.toml" in str(err.value)


@pytest.mark.unit
def test_the_shared_benchmark_folders_by_name():
    """Every real folder in ../shared/data: the paper's sets found, parts flagged, others not."""
    data = shared_path("data")
    found = {p.name: benchmark_named(p.name, p) for p in sorted(data.glob("*/*"))}
    named = {k: (v[0].name, v[1]) for k, v in found.items() if v}
    assert named == {"Set14": ("Set14", False), "B100_subset20": ("B100", True),
                     "Urban100_subset5": ("Urban100", True), "SOTS_indoor_subset10": ("SOTS-indoor", True),
                     "Rain100L_subset3": ("Rain100L", True), "GOPRO_examples2": ("GoPro", True)}


@pytest.mark.unit
@pytest.mark.parametrize("name,root,want", [
    ("BSD100", None, ("B100", False)), ("indoor", "/d/SOTS/indoor", ("SOTS-indoor", False)),
    ("test", "/d/RESIDE-6K/test", ("SOTS-mix", False)), ("test", "/d/GOPRO_Large/test", ("GoPro", False)),
    ("train", "/d/GOPRO_Large/train", None), ("outdoor", "/d/SOTS/outdoor", None), ("space", None, None),
    ("DID-MDN", None, ("DID", False)), ("Rain200L", None, ("Rain200L", False)),
    ("HR", "/d/Urban100/HR", ("Urban100", False)),
])
def test_benchmark_names_in_the_published_layouts(name, root, want):
    got = benchmark_named(name, root)
    assert (got[0].name, got[1]) == want if want else got is None


def _model(arch: str, scale: int, params: int) -> dict:
    return {"architecture": arch, "scale": scale, "params": params, "preset": None, "label": "m"}


@pytest.mark.unit
def test_idt_checkpoints_get_the_row_of_the_preset_trained_for_that_set():
    """The five IDT presets share one network: the benchmark tells them apart, and a
    Rain200L folder gets the column the paper printed as Rain100L, flagged so."""
    sets = {name: {"images": [{}] * n} for name, n in (("DDN", 1400), ("Rain200L", 200), ("mine", 4))}
    result = {"model": _model("IDT", 1, 16416463), "conventions": {"y_channel": False, "crop_border": 0},
              "datasets": sets}
    rows = {r["dataset"]: r for r in paper_rows(result)}
    assert set(rows) == {"DDN", "Rain200L"}
    ddn = rows["DDN"]
    assert (ddn["preset"], ddn["baseline"]["printed"], ddn["flags"]) == ("idt-ddn", "33.80/0.9407", [])
    assert rows["Rain200L"]["preset"] == "idt-rain200l" and rows["Rain200L"]["flags"] == ["paper: printed as Rain100L"]


@pytest.mark.unit
def test_sots_mix_rows_say_the_papers_model_trained_on_reside_6k():
    """DehazeFormer-T's preset is trained on ITS; the paper's SOTS-mix figure is for its
    RESIDE-6K model (DehazeFormer's `RESIDE-6K/test` folder)."""
    result = {"model": _model("DehazeFormer", 1, 687404), "conventions": {"y_channel": False, "crop_border": 0},
              "datasets": {"test": {"images": [{}] * 1000}}, "data": {"test": "/data/RESIDE-6K/test"}}
    (row,) = paper_rows(result)
    assert (row["preset"], row["test_set"], row["baseline"]["printed"]) == ("dehazeformer-t", "SOTS-mix", "30.36/0.973")
    assert row["flags"] == ["paper: trained on RESIDE-6K"] and row["delta"]["printed"] == "+0.08/+0.001"


@pytest.mark.unit
def test_sr_rows_say_when_the_measured_convention_is_not_the_papers():
    result = {"model": _model("EDSR", 4, 1517595), "conventions": {"y_channel": False, "crop_border": 4},
              "datasets": {"Set14": {"images": [{}] * 14}}}
    (row,) = paper_rows(result)
    assert row["flags"] == ["paper: PSNR/SSIM on the Y channel, border = scale"]
    assert paper_rows({**result, "model": _model("EDSR", 4, 1517596)}) == []  # another network: no row


# --------------------------------------------------------------------------- end to end


def _crops(root: Path, src: Path, names: list[str] | None = None, size: int = 48) -> Path:
    """Top-left crops of a real x4 benchmark (HR + MATLAB-bicubic LR), keeping its name."""
    from mcir_cli.data.imageio import read_image, write_image
    from mcir_cli.data.resize import imresize

    for p in sorted((src / "HR").glob("*.png")):
        if names is None or p.stem in names:
            hr = read_image(p)[:, :size, :size]
            write_image(root / "HR" / p.name, hr)
            write_image(root / "LR_bicubic" / "X4" / f"{p.stem}x4.png", imresize(hr, 1 / 4))
    return root


@pytest.fixture(scope="module")
def benches(tmp_path_factory) -> list[Path]:
    """Set14 (all 14 images, cropped) and B100_subset20 (3 of its images, cropped), named as
    in ../shared, and Set5 crops: a set the paper does not report."""
    root = tmp_path_factory.mktemp("paper")
    sr = shared_path("data", "sr")
    b100 = sorted(p.stem for p in (sr / "B100_subset20" / "HR").glob("*.png"))[:3]
    return [_crops(root / "Set14", sr / "Set14"), _crops(root / "B100_subset20", sr / "B100_subset20", b100),
            _crops(root / "Set5", sr / "Set5", ["baby", "bird"])]


@pytest.fixture(scope="module")
def edsr_files(tmp_path_factory) -> list[Path]:
    """Two random initialisations of the real EDSR-light x4 preset, saved as checkpoints."""
    from mcir_cli.models.loading import from_preset

    root = tmp_path_factory.mktemp("edsr")
    files = []
    for seed in (0, 1):
        path = root / f"edsr-seed{seed}.pth"
        torch.save(from_preset(get_preset("edsr-light-x4"), seed=seed).net.state_dict(), path)
        files.append(path)
    return files


def _evaluate(args: list[str], out: Path) -> tuple[dict, str]:
    res = runner.invoke(app, ["evaluate", *args, "--device", "cpu", "-o", str(out)], env={"COLUMNS": "220"})
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), res.output


def test_evaluate_and_compare_show_the_paper_rows_apart(benches, edsr_files, tmp_path):
    data = [a for b in benches for a in ("--data", str(b))]
    by_ckpt, text = _evaluate(["--checkpoint", str(edsr_files[0]), *data], tmp_path / "a.json")
    by_preset, _ = _evaluate(["--model", "edsr-light-x4", "--checkpoint", str(edsr_files[1]), *data],
                             tmp_path / "b.json")
    for result, how in ((by_ckpt, "same architecture, scale and parameter count"), (by_preset, "loaded as the preset")):
        rows = {r["dataset"]: r for r in result["paper"]}
        assert set(rows) == {"Set14", "B100_subset20"}  # Set5: the paper does not report it
        s14, b100 = rows["Set14"], rows["B100_subset20"]
        assert (s14["table"], s14["preset"], s14["matched_by"]) == ("Table 1", "edsr-light-x4", how)
        assert (s14["baseline"]["printed"], s14["spn"]["printed"], s14["delta"]["printed"]) == \
            ("28.58/0.7813", "28.63/0.7829", "+0.05/+0.0016")
        assert s14["flags"] == [] and b100["flags"][0].startswith(FULL_SET)
        assert b100["baseline"]["printed"] == "27.57/0.7357"
        for name, ds in result["datasets"].items():  # the measured fields: only measurements
            assert set(ds) == {"psnr", "ssim", "images"}
            assert ds["psnr"] == pytest.approx(sum(i["psnr"] for i in ds["images"]) / len(ds["images"]))
    assert len(by_ckpt["datasets"]["Set14"]["images"]) == 14
    flat = " ".join(text.split())
    assert "Set14: paper Table 1 (edsr-light-x4)" in flat and "28.58 → 28.63 (+0.05)" in flat
    assert "B100_subset20 (edsr-light-x4, Table 1): paper: full set (B100, 100 images" in flat
    _check_compare(tmp_path / "a.json", tmp_path / "b.json", tmp_path)


def _check_compare(a: Path, b: Path, tmp_path: Path) -> None:
    """compare: paper rows in every output, and the statistics those of the measured
    scores alone (the same as for results that carry no paper figures)."""
    from mcir_cli.compare.exports import to_csv, to_latex, to_markdown
    from mcir_cli.compare.files import load_result
    from mcir_cli.compare.results import compare_results
    from mcir_cli.render.report import comparison_report

    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", str(a), str(b), "--json", str(out) + ".json"], env={"COLUMNS": "220"})
    assert res.exit_code == 0, res.output
    assert "paper Table 1: edsr-light-x4 + SPN" in " ".join(res.output.split())
    saved = json.loads(Path(str(out) + ".json").read_text())
    assert [r["dataset"] for r in saved["paper"]] == ["Set14", "B100_subset20"]
    results = [load_result(a), load_result(b)]
    comp = compare_results(results, n_resamples=200)
    bare = [{**r, "model": {"label": r["model"]["label"]}} for r in results]  # no preset, no architecture
    plain = compare_results(bare, n_resamples=200)
    assert plain.paper == [] and [s.to_dict() for s in plain.stats] == [s.to_dict() for s in comp.stats]
    assert plain.scores == comp.scores and plain.deltas == comp.deltas
    md = to_markdown(comp)
    assert "| *paper Table 1: edsr-light-x4* | 28.58/0.7813 | 27.57/0.7357† | – | – |" in md
    assert "| *paper Table 1: Δ* | +0.05/+0.0016 | +0.02/+0.0012 | – | – |" in md
    tex = to_latex(comp)
    assert "\\textit{paper Table 1: edsr-light-x4 + SPN} & 28.63/0.7829 & 27.59/0.7369 & -- & --" in tex
    csv_lines = to_csv(comp).splitlines()
    assert csv_lines[0].endswith("paper_delta_psnr,paper_delta_ssim,paper_flags")
    set14 = [line for line in csv_lines if line.startswith("Set14,")]
    assert len(set14) == 14 and all(",Table 1,edsr-light-x4,28.58,0.7813,28.63,0.7829,0.05,0.0016," in x for x in set14)
    assert all(line.endswith(",,,,,,,,,") for line in csv_lines if line.startswith("Set5,"))
    html = comparison_report(comp)
    assert html.count('data-kind="paper-baseline"') == 2 * 4  # PSNR and SSIM: 3 datasets and the average
    assert 'data-kind="paper-spn" data-column="Set14" data-metric="psnr">28.63<' in html


def test_unrelated_names_and_models_get_no_row(edsr_files, tmp_path):
    """A folder named like nothing the paper reports, and a model that is no preset's."""
    from mcir_cli.evaluate.benchmarks import Scoring, evaluate_model
    from mcir_cli.models.loading import load_model

    mine = _crops(tmp_path / "mine", shared_path("data", "sr", "Set14"), ["baboon"])
    result = evaluate_model(load_model(edsr_files[0]), [mine], Scoring(device="cpu"))
    assert "paper" not in result
    imdn = evaluate_model(load_model(shared_path("weights", "IMDN", "IMDN_x4.pth")),
                          [_crops(tmp_path / "Set14", SHARED / "data" / "sr" / "Set14", ["baboon"])], Scoring(device="cpu"))
    assert "paper" not in imdn and "Set14" in imdn["datasets"]


def test_study_shows_the_paper_rows_beside_its_table(benches, edsr_files, tmp_path):
    """A study's outputs from real evaluations of the EDSR-light x4 network (start, plain
    and mcir: the two initialisations; no training, which the paper rows do not read):
    study.json's `paper` block, the rows in study.md and report.html, the statistics
    those of the measured scores alone."""
    from mcir_cli.compare.study_results import delta_matrix, summarise, to_markdown
    from mcir_cli.evaluate.benchmarks import Scoring, evaluate_model
    from mcir_cli.models.loading import load_model
    from mcir_cli.render.report import study_report
    from mcir_cli.workflows.study import StudyPlan, parse_arm, plan_paths

    start, other = (evaluate_model(load_model(f), [benches[1]], Scoring(device="cpu")) for f in edsr_files)
    results = {"start": start, "plain-s0": start, "mcir-s0": other}
    paths = plan_paths(tmp_path / "study", [shared_path("data", "train", "SunHays80_color_subset20")],
                       [benches[1]], edsr_files[0])
    plan = StudyPlan(**paths, arms=[parse_arm("plain"), parse_arm("mcir")], seeds=[0], iters=1,
                     common={"batch": 1, "patch": 12, "embedding": "pixel"}, device="cpu")
    summary = summarise(plan, results)
    (row,) = summary["paper"]
    assert (row["dataset"], row["baseline"]["printed"], row["table"]) == ("B100_subset20", "27.57/0.7357", "Table 1")
    assert row["flags"][0].startswith(FULL_SET)
    mat, _ = delta_matrix(results, "mcir", [0], "B100_subset20")
    stats = summary["deltas"]["mcir"]["datasets"]["B100_subset20"]
    assert stats["images"] == 3 and stats["mean"] == pytest.approx(float(mat.mean()))  # measured Δ only
    md = to_markdown(summary)
    assert "| *paper Table 1: edsr-light-x4 + SPN* | 27.59/0.7369 |" in md and "paper: full set" in md
    html = study_report(summary, {}, {})
    assert 'data-kind="paper-delta" data-column="B100_subset20" data-metric="psnr">+0.02<' in html


@pytest.mark.unit
def test_models_lists_each_presets_paper_table():
    res = runner.invoke(app, ["models"], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "Table 2: Rain100L" in res.output and "Table 4: GoPro" in res.output


def _sr_result(label: str, sets: dict[str, int]) -> dict:
    """An evaluation result of the EDSR-light x4 preset with `sets` (name -> image count)."""
    datasets = {name: {"psnr": 25.0, "ssim": 0.7, "images": [{"name": f"i{k}", "psnr": 25.0, "ssim": 0.7}
                                                              for k in range(n)]} for name, n in sets.items()}
    return {"conventions": {"y_channel": True, "crop_border": 4, "quantize": "uint8"},
            "model": {"label": label, "preset": "edsr-light-x4"}, "datasets": datasets}


@pytest.mark.unit
def test_the_papers_average_only_under_an_average_of_its_own_test_sets():
    from mcir_cli.compare.exports import paper_table_rows
    from mcir_cli.compare.results import compare_results

    full = {"Set14": 14, "B100": 100, "Urban100": 100, "Manga109": 109}
    comp = compare_results([_sr_result("a", full), _sr_result("b", full)], n_resamples=20)
    rows = dict(paper_table_rows(comp.paper, comp.columns))
    assert rows["paper Table 1: edsr-light-x4"][-1] == "28.14/0.8021"  # Table 1's Avg., unflagged
    assert rows["paper Table 1: Δ"][-1] == "+0.07/+0.0019"
    more = {**full, "Set5": 5}  # the measured average is over five sets: not the paper's
    comp = compare_results([_sr_result("a", more), _sr_result("b", more)], n_resamples=20)
    assert dict(paper_table_rows(comp.paper, comp.columns))["paper Table 1: edsr-light-x4"][-2:] == ["–", "–"]


def test_a_set_with_realesrgan_lr_gets_no_paper_row(benches, edsr_files, tmp_path):
    """The paper's SR figures are for bicubic LR: `mcir data degrade`'s copy of Set14
    (HR/ + LR_realesrgan/X4/) is named Set14 but is another benchmark, so no paper row."""
    import shutil

    set14 = tmp_path / "Set14"
    shutil.copytree(benches[0] / "HR", set14 / "HR")
    shutil.copytree(benches[0] / "LR_bicubic", set14 / "LR_realesrgan")  # the layout is what counts here
    result, text = _evaluate(["--checkpoint", str(edsr_files[0]), "--data", str(set14), "--data", str(benches[1])],
                             tmp_path / "r.json")
    assert result["lr_degradation"] == {"Set14": "LR_realesrgan"}
    assert [r["dataset"] for r in result["paper"]] == ["B100_subset20"]
    assert "Set14: paper" not in " ".join(text.split())
