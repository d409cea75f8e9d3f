"""The study's validation curves: mean ± sd over seeds on the plan's grid of steps."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mcir_cli.compare.study_results import validation_curves


@pytest.mark.unit
def test_curves_keep_the_plans_grid_not_where_a_run_stopped(tmp_path):
    """Seed 1 was stopped by a signal at step 702 and resumed (it validated there): that
    point is in its val.json, but not a point of the arm's mean curve."""
    arms = [SimpleNamespace(name="plain"), SimpleNamespace(name="mcir")]
    plan = SimpleNamespace(arms=arms, seeds=[0, 1], val_every=500, iters=1200,
                           run_name=lambda arm, seed: f"{arm.name}-s{seed}")
    histories = {"plain-s0": [(0, 13.0), (500, 27.0), (1000, 27.5), (1200, 27.6)],
                 "plain-s1": [(0, 13.2), (500, 27.2), (1000, 27.7), (1200, 27.8)],
                 "mcir-s0": [(0, 13.0), (500, 26.9), (1000, 27.4), (1200, 27.5)],
                 "mcir-s1": [(0, 13.2), (500, 27.1), (702, 27.3), (1000, 27.6), (1200, 27.7)]}
    runs = {}
    for name, history in histories.items():
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "val.json").write_text(json.dumps({"history": [{"step": s, "psnr": p} for s, p in history]}))
    curves = validation_curves(plan, runs)
    for arm in ("plain", "mcir"):
        assert curves[arm]["steps"] == [0, 500, 1000, 1200] and curves[arm]["n"] == [2, 2, 2, 2]
    assert curves["mcir"]["mean"][2] == pytest.approx(27.5)
    assert curves["mcir"]["sd"][2] == pytest.approx(0.1414, abs=1e-4)
