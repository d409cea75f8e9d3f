"""The HTML report's parts on their own (`mcir_cli.render.report`), from hand-made results: no
run, no browser. The whole report in a real browser: tests/e2e/test_report.py."""

from __future__ import annotations

import pytest

from mcir_cli.compare.exports import fmt_dpsnr
from mcir_cli.compare.results import compare_results
from mcir_cli.render.report import per_image_html
from tests.browser import parsed
from tests.conftest import result

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


def test_per_image_table_has_every_later_models_delta():
    """Three models: the per-image table holds Δ of both later models vs the baseline,
    not only the last one's."""
    imgs = {"start": {"a": (30.0, 0.9), "b": (31.0, 0.9)}, "plain": {"a": (30.2, 0.9), "b": (30.9, 0.9)},
            "mcir": {"a": (30.5, 0.9), "b": (31.4, 0.9)}}
    comp = compare_results([result(k, {"Set5": v}) for k, v in imgs.items()], n_resamples=200)
    cells = parsed(per_image_html(comp, "Set5", "main")).cells
    deltas = {(c["model"], c["image"]): c["text"] for c in cells if c["kind"] == "image-delta"}
    assert deltas == {("plain", "a"): fmt_dpsnr(0.2), ("plain", "b"): fmt_dpsnr(-0.1),
                      ("mcir", "a"): fmt_dpsnr(0.5), ("mcir", "b"): fmt_dpsnr(0.4)}
    html = per_image_html(comp, "Set5", "main")
    assert "Δ plain</th>" in html and "Δ mcir</th>" in html
