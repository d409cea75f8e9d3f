"""The lr as a pure function of the step, and the one collapse decision."""

from __future__ import annotations

import pytest
import torch

from mcir_cli.train.config import TrainConfig
from mcir_cli.train.guard import collapse_decision
from mcir_cli.train.schedule import learning_rate, lr_factor, set_lr
from mcir_cli.train.state import RunState

pytestmark = pytest.mark.unit


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(data=[str(tmp_path)], output=str(tmp_path / "out"), iters=40, **kw)


@pytest.mark.parametrize("recipe", [
    {"schedule": "cosine", "warmup": 5, "lr": 2e-4, "eta_min": 1e-7},
    {"schedule": "multistep", "milestones": (10, 25), "gamma": 0.5, "lr": 3e-4},
    {"schedule": "constant", "warmup": 3, "lr": 1e-4},
])
@pytest.mark.parametrize("lr_scale", [1.0, 0.5, 0.25])
def test_the_lr_equals_torch_lambdalr_to_the_bit(tmp_path, recipe, lr_scale):
    """Runs saved while mcir stepped a LambdaLR (base lr scaled by the guard) resume with
    the pure function: the two must agree exactly, not approximately, at every step."""
    cfg = _cfg(tmp_path, **recipe)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
    sched.base_lrs = [cfg.lr * lr_scale]  # what the old guard's lr halving wrote
    for step in range(cfg.iters):
        group_lr = sched.base_lrs[0] * sched.lr_lambdas[0](sched.last_epoch)
        assert learning_rate(cfg, step, lr_scale) == group_lr, step
        opt.step()  # no gradient: nothing moves, but the scheduler sees the order it expects
        sched.step()


def test_set_lr_writes_every_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [a]}, {"params": [b], "lr": 5.0}], lr=1.0)
    set_lr(opt, 0.125)
    assert [g["lr"] for g in opt.param_groups] == [0.125, 0.125]


def test_collapse_decision_continues_rolls_back_then_stops():
    assert collapse_decision(None, 0, 3) == "continue"
    assert collapse_decision(None, 5, 3) == "continue"  # no collapse: the count does not matter
    assert [collapse_decision("non-finite loss", n, 3) for n in (1, 2, 3, 4)] == \
        ["roll back", "roll back", "stop", "stop"]


def test_run_state_round_trips_and_fills_an_old_states_data_position():
    st = RunState(step=7, samples=30, collapses=1, lr_scale=0.5, best_psnr=30.25, best_step=5, start_psnr=29.0,
                  compiled=False)
    back = RunState()
    back.load_state_dict(st.state_dict(), samples_per_step=4)
    assert back == st
    old = {k: v for k, v in st.state_dict().items() if k not in ("samples_seen", "lr_scale")}
    back.load_state_dict(old, samples_per_step=4)
    assert (back.samples, back.lr_scale) == (28, 1.0)  # 7 steps x a global batch of 4; no halving recorded
