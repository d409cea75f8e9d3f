"""`evaluate_labelled`: the one evaluate -> label -> write of compare --checkpoint, the
study and the demo."""

from __future__ import annotations

import json

from mcir_cli.evaluate.benchmarks import Scoring, evaluate_labelled, evaluate_model
from mcir_cli.models.loading import load_model
from tests.conftest import set5_crops


def test_the_result_of_evaluate_model_labelled_then_written(imdn, tmp_path):
    data = set5_crops(tmp_path / "tiny", ("baby",), 48)
    model, scoring = load_model(imdn), Scoring(device="cpu")
    plain = evaluate_model(model, [data], scoring)
    out = tmp_path / "results" / "mine.json"
    res = evaluate_labelled(model, [data], scoring, "mine", out=out, extra={"training": {"steps": 3}})
    assert res["model"]["label"] == "mine" and list(res)[-1] == "training" and res["training"] == {"steps": 3}
    plain["model"]["label"] = "mine"
    assert {k: v for k, v in res.items() if k != "training"} == plain
    assert out.read_text(encoding="utf-8") == json.dumps(res, indent=2) + "\n"  # as `mcir evaluate -o` writes


def test_nothing_is_written_without_out(imdn, tmp_path):
    data = set5_crops(tmp_path / "tiny", ("bird",), 48)
    res = evaluate_labelled(load_model(imdn), [data], Scoring(device="cpu"), "start")
    assert res["model"]["label"] == "start" and "training" not in res
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
