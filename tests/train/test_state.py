"""What a run says before it starts (train/state.py's start warnings), on real parts."""

from __future__ import annotations

import logging

import torch

from mcir_cli.train.config import make_config
from mcir_cli.train.distributed import DistContext
from mcir_cli.train.parts import build_parts
from mcir_cli.train.state import start_warnings


def test_idle_negatives_are_named_with_the_fix_for_retrain_and_for_a_study(imdn, train_crops, tmp_path):
    cfg = make_config([train_crops], tmp_path / "run", checkpoint=str(imdn), iters=4, batch=1, patch=16,
                      negative_steps=(2, 3, 8), embedding="pixel", device="cpu")
    parts = build_parts(cfg, str(imdn), torch.device("cpu"), DistContext.from_env("cpu"))
    warnings = [m for level, m in start_warnings(cfg, parts) if level == logging.WARNING]
    idle = [m for m in warnings if m.startswith("negatives with update periods")]
    assert len(idle) == 1
    # 4 steps: period 2 updates twice (fine), 3 once and 8 never: those two are named
    assert "3 (1 update), 8 (0 updates) in a 4-step run" in idle[0]
    assert "--negative-steps auto" in idle[0] and "--arm NAME:negative_steps=auto" in idle[0]
