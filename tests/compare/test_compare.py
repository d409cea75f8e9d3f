"""compare.py: paired statistics against hand-computed answers, alignment, exports."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from mcir_cli.cli.render import render_table
from mcir_cli.compare.alignment import align, check_conventions
from mcir_cli.compare.exports import latex_escape, to_csv, to_json, to_latex, to_markdown
from mcir_cli.compare.files import load_result
from mcir_cli.compare.results import AVERAGE, compare_results, conventions_text, render_evidence
from mcir_cli.compare.stats import PairedStats, paired_stats, verdict
from mcir_cli.errors import McirError
from tests.conftest import RESULT_CONV as CONV
from tests.conftest import result

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


def stats_of(deltas, **kw):
    deltas = np.asarray(deltas, dtype=float)
    return paired_stats(np.zeros_like(deltas) + 30.0, 30.0 + deltas, **kw)


# --------------------------------------------------------------------------- statistics


def test_all_positive_four_images_exact_p():
    s = stats_of([1, 1, 1, 1])
    # 16 sign patterns, only all-plus and all-minus reach |mean| = 1.
    assert s.exact and s.n == 4
    assert s.p_value == pytest.approx(2 / 16)
    assert s.mean_delta == pytest.approx(1.0)
    assert (s.ci_low, s.ci_high) == (pytest.approx(1.0), pytest.approx(1.0))
    assert s.win_rate == 1.0 and s.wins == 4


def test_symmetric_deltas_p_one():
    s = stats_of([0.1, -0.1])
    assert s.mean_delta == pytest.approx(0.0, abs=1e-12)
    assert s.p_value == 1.0  # every pattern has |mean| >= 0
    assert s.win_rate == 0.5


def test_exact_p_hand_enumerated():
    # +-1 +-2 +-3: sums 6,4,2,0,0,-2,-4,-6 -> |sum| >= 6 twice in 8.
    assert stats_of([1, 2, 3]).p_value == pytest.approx(2 / 8)
    # 1,-2,3,4: signed sum = 10 - 2*S (S = sum of the flipped-negative subset); |.| >= 6
    # iff S <= 2 ({}, {1}, {2}) or S >= 8 ({1,3,4}, {2,3,4}, {1,2,3,4}) -> 6 of 16.
    s = stats_of([1, -2, 3, 4])
    assert s.p_value == pytest.approx(6 / 16)
    assert s.mean_delta == pytest.approx(1.5)
    assert s.win_rate == pytest.approx(0.75) and s.wins == 3


def test_single_image():
    s = stats_of([0.3])
    assert s.n == 1
    assert s.p_value == 1.0  # +0.3 and -0.3 both reach |0.3|
    assert (s.ci_low, s.ci_high) == (pytest.approx(0.3), pytest.approx(0.3))
    assert "only image" in verdict(s)


def test_all_zero_deltas():
    s = stats_of([0, 0, 0, 0, 0])
    assert s.p_value == 1.0
    assert (s.ci_low, s.ci_high) == (0.0, 0.0)
    assert s.win_rate == 0.0
    assert "identical" in verdict(s)


def test_bootstrap_two_images_enumerable():
    # Resampling 2 of [0, 1]: means 0 (p 1/4), 0.5 (1/2), 1 (1/4). With 10 000 resamples
    # about 2 500 are 0 and 2 500 are 1, far more than the 250 below the 2.5th / above the
    # 97.5th percentile, so the interval is exactly [0, 1].
    s = stats_of([0.0, 1.0])
    assert (s.ci_low, s.ci_high) == (0.0, 1.0)
    assert s.mean_delta == 0.5
    assert s.win_rate == 0.5
    # exact p: patterns (+-0, +-1): |mean| = 0.5 always -> 4/4
    assert s.p_value == 1.0


def test_bootstrap_seeded_and_bounded():
    d = [0.3, -0.1, 0.2, 0.5, 0.0, 0.1, 0.4, -0.2]
    a, b = stats_of(d, seed=3), stats_of(d, seed=3)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert min(d) <= a.ci_low <= np.mean(d) <= a.ci_high <= max(d)


def test_random_sign_flips_for_many_images():
    # n = 20 > 16: random flips. Only the 2 all-same patterns of 2**20 reach |mean| = 1,
    # so (almost surely) no random pattern does: p = (0 + 1) / (10 000 + 1).
    s = stats_of([1.0] * 20)
    assert not s.exact
    assert 1 / 10_001 <= s.p_value <= 3 / 10_001
    # mean exactly 0: every flip reaches it -> (10 000 + 1) / (10 000 + 1)
    z = stats_of([1.0, -1.0] * 10)
    assert z.p_value == 1.0
    # the random count respects n_resamples
    assert stats_of([1.0] * 20, n_resamples=99).p_value == pytest.approx(1 / 100)


def test_infinite_psnr():
    base = np.array([math.inf, 30.0, math.inf, 28.0])
    new = np.array([math.inf, 31.0, 40.0, 29.0])
    s = paired_stats(base, new, dataset="Set5")
    # image 0: both identical -> delta 0; image 2: inf on one side only -> skipped
    assert s.n == 3 and s.skipped == 1
    assert s.mean_delta == pytest.approx(2 / 3)
    assert s.wins == 2
    assert "1 image skipped" in verdict(s)


def test_no_usable_images():
    s = paired_stats(np.array([math.inf]), np.array([30.0]), dataset="X")
    assert s.n == 0 and math.isnan(s.mean_delta)
    assert "no image" in verdict(s)


def test_verdict_sentences():
    s = PairedStats(n=5, mean_delta=0.08, ci_low=0.02, ci_high=0.14, win_rate=0.8, wins=4,
                    p_value=0.06, exact=True, n_resamples=10_000, seed=0, dataset="Set5")
    assert verdict(s).startswith("Set5: +0.08 dB [95 % CI +0.02, +0.14], better on 4 of 5 "
                                 "images, p = 0.060 — too few images to call")
    # a CI that excludes 0 beside p >= 0.05 is explained, not left to confuse
    assert "smallest possible p is 0.0625" in verdict(s) and "the CI excludes 0, but" in verdict(s)
    eight = PairedStats(n=8, mean_delta=0.05, ci_low=0.01, ci_high=0.09, win_rate=0.75, wins=6,
                        p_value=0.08, exact=True, n_resamples=10_000, seed=0, dataset="Set14")
    assert "not established at 5 %: the bootstrap CI excludes 0" in verdict(eight)
    noise = PairedStats(n=8, mean_delta=0.01, ci_low=-0.03, ci_high=0.05, win_rate=0.5, wins=4,
                        p_value=0.6, exact=True, n_resamples=10_000, seed=0, dataset="Set14")
    assert verdict(noise).endswith("— not distinguishable from noise at 5 %.")
    good = stats_of([0.1, 0.2, 0.15, 0.12, 0.18, 0.11, 0.09], dataset="Set14")
    # 7 positive deltas: exact p = 2/128 < 0.05 and every bootstrap mean is > 0
    assert good.p_value == pytest.approx(2 / 128)
    assert good.ci_low > 0
    assert verdict(good).endswith("— a real improvement (CI excludes 0, p < 0.05).")
    bad = stats_of([-0.1, -0.2, -0.15, -0.12, -0.18, -0.11, -0.09], dataset="B100")
    assert "a real regression" in verdict(bad)
    assert "better on 0 of 7 images" in verdict(bad)


def test_a_significant_but_tiny_delta_is_negligible_and_shows_its_size():
    # 20 images all a hair better (two models that barely differ): p and CI pass, but
    # a Δ of ~7e-6 dB is no improvement a results table could show
    tiny = stats_of([7.4e-6 + 1e-7 * i for i in range(20)], dataset="B100_subset20")
    assert tiny.significant
    text = verdict(tiny)
    assert "real improvement" not in text
    assert "a consistent but negligible improvement" in text and "0.01 dB" in text
    assert text.startswith("B100_subset20: +0.0000083 dB [95 % CI +0.0000081, +0.0000086]")  # one precision
    ssim = stats_of([-2e-5] * 10, dataset="Set14", metric="ssim")
    assert "negligible regression" in verdict(ssim) and "-0.000020 [95 % CI -0.000020, -0.000020]" in verdict(ssim)
    # not significant, yet too small for the table's digits: its size is still shown
    small = PairedStats(n=8, mean_delta=-0.00049, ci_low=-0.0011, ci_high=0.000096, win_rate=0.25, wins=2,
                        p_value=0.164, exact=True, n_resamples=10_000, seed=0, dataset="test")
    assert verdict(small).startswith("test: -0.00049 dB [95 % CI -0.00110, +0.00010]")
    # at the table's last digit it is real again
    assert "a real improvement" in verdict(stats_of([0.006 + 1e-3 * i for i in range(10)]))


# --------------------------------------------------------------------------- loading / checks


def test_load_result_errors(tmp_path):
    with pytest.raises(McirError, match="no such file"):
        load_result(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(McirError, match="invalid JSON") as exc:
        load_result(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"model": {}, "datasets": {}}))
    with pytest.raises(McirError, match="'conventions'"):
        load_result(incomplete)
    no_images = tmp_path / "noimg.json"
    no_images.write_text(json.dumps({"conventions": CONV, "model": {"checkpoint": "a.pth"},
                                     "datasets": {"Set5": {"psnr": 1, "ssim": 1}}}))
    with pytest.raises(McirError, match="datasets.Set5.images"):
        load_result(no_images)


def test_load_result_label_fallback_and_inf(tmp_path):
    r = result("x", {"Set5": {"a": (30.0, 0.9)}}, checkpoint="/runs/edsr_mcir_best.pth")
    del r["model"]["label"]
    r["datasets"]["Set5"]["images"].append({"name": "b", "psnr": "inf", "ssim": 1.0})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(r).replace('"inf"', "Infinity", 0) + "\n")
    loaded = load_result(path)
    assert loaded["model"]["label"] == "edsr_mcir_best"
    assert math.isinf(loaded["datasets"]["Set5"]["images"][1]["psnr"])


def test_conventions_mismatch_refused():
    a = result("base", {"Set5": {"a": (30.0, 0.9)}})
    b = result("new", {"Set5": {"a": (30.1, 0.9)}},
               conv={"y_channel": True, "crop_border": 0, "quantize": "uint8"})
    with pytest.raises(McirError) as exc:
        check_conventions([a, b])
    msg = str(exc.value)
    assert "crop_border: 4 (base) vs 0 (new)" in msg and "y_channel" not in msg
    with pytest.raises(McirError):
        compare_results([a, b])
    assert check_conventions([a, a]) == CONV


def test_evaluate_extras_description_task_noise():
    # evaluate.py adds a derived "description" (ignored) and top-level task / noise
    a = result("base", {"Set5": {"a": (30.0, 0.9)}})
    a["conventions"]["description"] = "Y channel (BT.601), border 4 px cropped"
    a["task"] = "denoise"
    a["noise"] = {"sigma": 25, "seed": 0}
    b = {**a, "conventions": dict(CONV), "model": {**a["model"], "label": "new"}}
    assert check_conventions([a, b]) == CONV
    c = {**b, "noise": {"sigma": 50, "seed": 0}}
    with pytest.raises(McirError, match="noise: {sigma=25, seed=0} \\(base\\) vs {sigma=50"):
        check_conventions([a, c])
    d = {**b, "task": "sr"}
    with pytest.raises(McirError, match="task: denoise \\(base\\) vs sr \\(new\\)"):
        check_conventions([a, d])
    comp = compare_results([a, b], n_resamples=10)
    assert comp.conventions == CONV
    # tiles and precision change the numbers slightly: a tiled result is not compared
    # with an untiled one
    t0 = {**b, "inference": {"tile": None, "tile_overlap": None, "amp": "fp32"}}
    t1 = {**a, "inference": {"tile": 128, "tile_overlap": 32, "amp": "fp32"}}
    with pytest.raises(McirError, match="inference: {tile=128"):
        check_conventions([t1, t0])
    # an x2 model scored with border 4 is still not comparable with an x4 one
    x2 = {**b, "model": {**b["model"], "scale": 2}}
    x4 = {**a, "model": {**a["model"], "scale": 4}}
    with pytest.raises(McirError, match="scale: x4 \\(base\\) vs x2 \\(new\\)"):
        check_conventions([x4, x2])


def test_align_intersection_and_dropped():
    a = result("A", {"Set5": {"c": (32.0, 0.9), "a": (30.0, 0.9), "b": (31.0, 0.8)},
                     "Set14": {"x": (28.0, 0.7)}})
    b = result("B", {"Set5": {"b": (31.5, 0.8), "c": (32.5, 0.9), "d": (20.0, 0.1)},
                     "Urban100": {"u": (25.0, 0.7)}})
    aligned, dropped = align([a, b])
    assert [list(r["datasets"]) for r in aligned] == [["Set5"], ["Set5"]]
    assert [i["name"] for i in aligned[0]["datasets"]["Set5"]["images"]] == ["b", "c"]
    assert [i["name"] for i in aligned[1]["datasets"]["Set5"]["images"]] == ["b", "c"]
    # the means are recomputed over the common images
    assert aligned[0]["datasets"]["Set5"]["psnr"] == pytest.approx(31.5)
    assert aligned[1]["datasets"]["Set5"]["psnr"] == pytest.approx(32.0)
    assert dropped.datasets == {"Set14": ["B"], "Urban100": ["A"]}
    assert dropped.images == {"Set5": [1, 1]}
    msgs = dropped.messages()
    assert "Set14: left out, not evaluated for B." in msgs
    assert "Set5: compared on the common images only; dropped 1 from A, 1 from B." in msgs
    assert bool(dropped)


def test_align_keeps_file_means_when_nothing_dropped():
    a = result("A", {"Set5": {"a": (30.0, 0.9), "b": (31.0, 0.8)}})
    a["datasets"]["Set5"]["psnr"] = 30.7  # e.g. evaluate's own rounding
    aligned, dropped = align([a, a])
    assert aligned[0]["datasets"]["Set5"]["psnr"] == 30.7
    assert not dropped


def test_align_nothing_in_common():
    a = result("A", {"Set5": {"a": (30.0, 0.9)}})
    b = result("B", {"Set5": {"z": (30.0, 0.9)}})
    with pytest.raises(McirError, match="in common"):
        align([a, b])


# --------------------------------------------------------------------------- comparison


@pytest.fixture
def comparison():
    base = result("base_model", {
        "Set5": {"a": (30.0, 0.90), "b": (32.0, 0.80)},
        "Set14": {"p": (26.0, 0.70), "q": (27.0, 0.70), "r": (28.0, 0.70), "s": (29.0, 0.70)},
    })
    new = result("new & 100%", {
        "Set5": {"a": (30.5, 0.91), "b": (32.5, 0.81)},
        "Set14": {"p": (26.0, 0.70), "q": (26.0, 0.69), "r": (28.0, 0.70), "s": (29.0, 0.71)},
    })
    return compare_results([base, new], n_resamples=2000, seed=1)


def test_table_average_is_mean_of_dataset_means(comparison):
    c = comparison
    assert c.models == ["base_model", "new & 100%"]
    assert c.datasets == ["Set5", "Set14"]
    assert c.scores["base_model"]["Set5"].psnr == pytest.approx(31.0)
    assert c.scores["base_model"]["Set14"].psnr == pytest.approx(27.5)
    # (31 + 27.5) / 2, not the pooled image mean (30 + 32 + 26 + 27 + 28 + 29) / 6 = 28.67
    assert c.scores["base_model"][AVERAGE].psnr == pytest.approx(29.25)
    assert c.scores["new & 100%"][AVERAGE].psnr == pytest.approx((31.5 + 27.25) / 2)
    d = c.deltas["new & 100%"]
    assert d["Set5"].psnr == pytest.approx(0.5)
    assert d["Set14"].psnr == pytest.approx(-0.25)
    assert d[AVERAGE].psnr == pytest.approx(0.125)
    assert d["Set5"].ssim == pytest.approx(0.01)
    st = c.stat("Set14")
    assert st.n == 4 and st.wins == 0 and st.mean_delta == pytest.approx(-0.25)
    # Set14 deltas 0, -1, 0, 0: |mean| = 0.25 for every pattern -> p = 1
    assert st.p_value == 1.0
    assert c.stat("Set5").p_value == pytest.approx(2 / 4)
    assert c.image_deltas("Set14") == {"p": 0.0, "q": -1.0, "r": 0.0, "s": 0.0}


def test_duplicate_labels_made_unique():
    a = result("edsr", {"Set5": {"a": (30.0, 0.9)}})
    c = compare_results([a, a], n_resamples=10)
    assert c.models == ["edsr (1)", "edsr (2)"]


def test_needs_two_results():
    with pytest.raises(McirError):
        compare_results([result("a", {"Set5": {"a": (30.0, 0.9)}})])


def test_json_export_round_trip(comparison):
    def no_constants(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    data = json.loads(to_json(comparison), parse_constant=no_constants)
    assert data["baseline"] == "base_model"
    assert data["table"]["base_model"]["Average"]["psnr"] == pytest.approx(29.25)
    assert data["deltas"]["new & 100%"]["Set5"]["psnr"] == pytest.approx(0.5)
    set5 = [s for s in data["stats"] if s["dataset"] == "Set5" and s["metric"] == "psnr"][0]
    assert set5["p_value"] == pytest.approx(0.5)
    assert set5["win_rate"] == 1.0
    assert data["images"]["Set14"][1] == {"name": "q", "psnr": {"base_model": 27.0, "new & 100%": 26.0},
                                         "ssim": {"base_model": 0.7, "new & 100%": 0.69}}
    assert data["conventions"] == CONV
    assert len(data["evidence"]) == 2


def test_json_export_infinite_as_strings():
    a = result("a", {"Set5": {"x": (math.inf, 1.0), "y": (30.0, 0.9)}})
    b = result("b", {"Set5": {"x": (math.inf, 1.0), "y": (31.0, 0.9)}})
    data = json.loads(to_json(compare_results([a, b], n_resamples=10)))
    assert data["table"]["a"]["Set5"]["psnr"] == "inf"
    assert data["deltas"]["b"]["Set5"]["psnr"] == 0.0


def test_csv_export(comparison):
    rows = list(csv.DictReader(io.StringIO(to_csv(comparison))))
    assert len(rows) == 6
    assert list(rows[0]) == ["dataset", "image", "psnr_base_model", "psnr_new & 100%",
                             "ssim_base_model", "ssim_new & 100%", "delta_psnr_new & 100%",
                             "delta_ssim_new & 100%", "conventions"]
    assert rows[0]["conventions"] == conventions_text(comparison.conventions)
    assert "border" in rows[0]["conventions"]
    q = [r for r in rows if r["image"] == "q"][0]
    assert q["dataset"] == "Set14"
    assert float(q["psnr_base_model"]) == 27.0 and float(q["psnr_new & 100%"]) == 26.0
    assert float(q["delta_psnr_new & 100%"]) == -1.0
    assert float(q["delta_ssim_new & 100%"]) == pytest.approx(-0.01)
    assert [r["image"] for r in rows] == ["a", "b", "p", "q", "r", "s"]


def test_markdown_export(comparison):
    md = to_markdown(comparison)
    assert "| Model | Set5 | Set14 | Average |" in md
    assert "| base\\_model | 31.00 / 0.8500 | **27.50** / **0.7000** | 29.25 / 0.7750 |" in md
    assert "| Δ | +0.50 / +0.0100 | -0.25 / +0.0000 | +0.12 / +0.0050 |" in md
    assert "PSNR/SSIM on Y (BT.601), border 4 px, uint8 (BasicSR)" in md
    assert "Set5: +0.50 dB" in md


def test_latex_export(comparison):
    tex = to_latex(comparison)
    # Set14 SSIM: both models show 0.7000 -> a tie, both bold
    for piece in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}{lccc}",
                  "Model & Set5 & Set14 & Average \\\\",
                  "base\\_model & 31.00/0.8500 & \\textbf{27.50}/\\textbf{0.7000} & 29.25/0.7750 \\\\",
                  "new \\& 100\\% & \\textbf{31.50}/\\textbf{0.8600} & 27.25/\\textbf{0.7000} & "
                  "\\textbf{29.38}/\\textbf{0.7800} \\\\",
                  "$\\Delta$ & +0.50/+0.0100 & -0.25/+0.0000 & +0.12/+0.0050 \\\\",
                  "the Y channel (BT.601)", "4 border pixels cropped", "uint8"):
        assert piece in tex, piece
    assert "base_model" not in tex.replace("base\\_model", "")


def test_latex_escape():
    assert latex_escape("a_b & c% $d #e {f} ~^\\") == (
        "a\\_b \\& c\\% \\$d \\#e \\{f\\} \\textasciitilde{}\\textasciicircum{}\\textbackslash{}")


def test_render_table_and_evidence(comparison):
    from rich.console import Console

    table = render_table(comparison)
    console = Console(record=True, width=160)
    console.print(table)
    text = console.export_text()
    assert "31.00/0.8500" in text and "31.50/0.8600" in text and "+0.50/+0.0100" in text
    assert "PSNR/SSIM on Y (BT.601), border 4 px, uint8 (BasicSR)" in text
    # the delta row: Set5 PSNR delta green, Set14 PSNR delta red; best values bold
    delta_set5 = table.columns[1]._cells[-1]
    delta_set14 = table.columns[2]._cells[-1]
    assert [s.style for s in delta_set5.spans][0] == "green"
    assert [s.style for s in delta_set14.spans][0] == "red"
    best = table.columns[1]._cells[1]  # new model, Set5
    assert best.spans[0].style == "bold"
    ev = render_evidence(comparison)
    assert len(ev) == 2 and ev[0].startswith("Set5: +0.50 dB [95 % CI +0.50, +0.50]")


def test_conventions_text_variants():
    assert conventions_text({"y_channel": False, "crop_border": 0, "quantize": "uint8", "grey": True}) == (
        "PSNR/SSIM on grey (no Y conversion), no border crop, uint8 (BasicSR)")
    assert conventions_text({"y_channel": False, "crop_border": 0, "quantize": "uint8"}) == (
        "PSNR/SSIM on RGB, no border crop, uint8 (BasicSR)")
