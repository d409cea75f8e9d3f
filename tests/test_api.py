"""The public Python API: every exported name resolves, and README's Python example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mcir_cli
from tests.conftest import SHARED, shared_path

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.unit
def test_every_public_name_resolves():
    assert mcir_cli.__all__[0] == "__version__"
    for name in mcir_cli.__all__:
        assert getattr(mcir_cli, name) is not None, name
    assert mcir_cli.retrain.__module__ == "mcir_cli.train.run"  # the defining module, not a copy


def test_readme_python_example_runs(tmp_path, monkeypatch):
    shared_path("weights", "IMDN", "IMDN_x4.pth")
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no Python example"
    code = block.group(1).replace("../shared", str(SHARED))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documented example, as a user runs it
    assert scope["result"].steps == 20 and (tmp_path / "runs" / "api" / "model.safetensors").exists()
    assert 30 < scope["scores"]["datasets"]["Set5"]["psnr"] < 34
