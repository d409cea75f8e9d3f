"""`lam_key`: "lambda" (presets' [spn], run files, --arm) is the field `lam`, in one place."""

from __future__ import annotations

import pytest

from mcir_cli.errors import McirError
from mcir_cli.models.presets import lam_key
from mcir_cli.train.config import load_config_file
from mcir_cli.workflows.study import parse_arm


def test_lambda_is_lam_and_nothing_else_changes():
    assert lam_key("lambda") == "lam"
    assert [lam_key(k) for k in ("lam", "lr", "Lambda", "lambda_", "negative_steps")] == \
        ["lam", "lr", "Lambda", "lambda_", "negative_steps"]


def test_every_spelling_of_lambda_reaches_lam(tmp_path):
    top = tmp_path / "top.toml"
    top.write_text("lambda = 3e-4\nnegative-steps = [2, 4]\n")
    assert load_config_file(top) == {"lam": 3e-4, "negative_steps": (2, 4)}
    spn = tmp_path / "spn.toml"
    spn.write_text("[spn]\nlambda = 2e-4\nweight = 0.2\n")
    assert load_config_file(spn) == {"lam": 2e-4, "negative_weight": 0.2}
    assert parse_arm("a:lambda=1e-3").settings == {"lam": 1e-3}


def test_lambda_in_recipe_is_still_unknown(tmp_path):
    run = tmp_path / "run.toml"
    run.write_text("[recipe]\nlambda = 2e-4\n")
    with pytest.raises(McirError, match="unknown key 'lambda'"):
        load_config_file(run)
