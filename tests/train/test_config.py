"""A run's configuration on its own (`mcir_cli.train.config`): a TrainConfig checked when built,
defaults from the preset or the paper, run files, a resume's new --iters, the negative steps
fitted to a run. No model, no run."""

from __future__ import annotations

import json

import pytest

from mcir_cli.errors import McirError
from mcir_cli.train.config import PAPER_STEPS, TrainConfig, fitted_steps, load_run_config, make_config, parse_steps
from mcir_cli.train.schedule import lr_factor

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


def test_fitted_steps_keep_the_papers_ratios_and_fit_the_run():
    assert fitted_steps(300) == (4, 19, 38, 75)
    assert fitted_steps(1000) == (12, 62, 125, 250)
    assert fitted_steps(8000) == PAPER_STEPS == fitted_steps(500_000)
    # the floor: never faster than every 2 steps, the paper's 1:5:10:20 kept (not 1, 2, 3, 4)
    assert fitted_steps(3) == fitted_steps(40) == fitted_steps(160) == (2, 10, 20, 40)
    assert fitted_steps(200) == (2, 12, 25, 50)  # above the floor: the slowest updates 4 times
    assert parse_steps("paper") == "paper" and parse_steps("auto") == "auto"
    assert parse_steps("3,7") == (3, 7)


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(data=[str(tmp_path)], output=str(tmp_path / "run"), **kw)


def test_config_validates_when_built(tmp_path):
    with pytest.raises(McirError, match="--iters must be at least 1"):
        _cfg(tmp_path, iters=0)
    with pytest.raises(McirError, match="the PSNR loss is signed"):
        _cfg(tmp_path, loss="psnr", lam_auto=True)
    assert _cfg(tmp_path, iters=300).negative_steps == PAPER_STEPS  # the paper's, unless asked


def test_a_resume_that_extends_iters_keeps_the_cosine_curve(tmp_path):
    cfg = _cfg(tmp_path, iters=100, schedule="cosine", lr=1e-4, eta_min=1e-6)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": cfg.to_json()}))
    longer = load_run_config(run, iters=200)
    assert (longer.iters, longer.schedule_iters) == (200, 100)
    f, g = lr_factor(cfg), lr_factor(longer)
    assert [f(s) for s in range(100)] == [g(s) for s in range(100)]
    assert g(150) == pytest.approx(1e-2)  # at its floor past the planned horizon


def test_a_multi_scale_preset_takes_the_scale_of_its_training_data(tmp_path):
    """`--model swinir-light --data DIV2K/` with only X4 LR: x4, said in the recipe note."""
    import torch

    from mcir_cli.data.imageio import write_image
    from mcir_cli.train.config import make_config

    root = tmp_path / "DIV2K"
    write_image(root / "DIV2K_train_HR" / "0001.png", torch.rand(3, 32, 32))
    write_image(root / "DIV2K_train_LR_bicubic" / "X4" / "0001x4.png", torch.rand(3, 8, 8))
    cfg = make_config([root], tmp_path / "run", model="swinir-light")
    assert cfg.scale == 4 and "x4: the one scale of the training data" in cfg.recipe_note
    with pytest.raises(McirError, match="several scales"):
        make_config([tmp_path / "nothing"], tmp_path / "run", model="swinir-light")


def test_make_config_defaults_come_from_the_preset_or_the_paper():
    from mcir_cli.train.config import make_config

    bare = make_config(["d"], "o", checkpoint="ckpt.pth")
    assert (bare.lr, bare.schedule, bare.loss, bare.batch, bare.patch) == (1e-5, "constant", "l1", 16, 48)
    assert (bare.lam, bare.negative_weight, bare.negative_steps) == (1e-4, 0.1, (100, 500, 1000, 2000))
    assert (bare.negative_init, bare.negative_mix, bare.embedding) == ("mix", 0.1, "vgg16")
    fitted = make_config(["d"], "o", checkpoint="ckpt.pth", negative_init="copy", negative_steps="auto")
    assert (fitted.negative_init, fitted.negative_steps) == ("copy", (12, 62, 125, 250))  # the option
    # from pretrained weights: the recipe's optimizer, batch, patch and loss, at the lr
    # where its from-scratch schedule ends (2e-4 halved at 250k/400k/450k/475k), constant
    swin = make_config(["d"], "o", model="swinir-light", scale=4)
    assert (swin.batch, swin.patch, swin.schedule, swin.iters, swin.task) == (64, 64, "constant", 1000, "sr")
    assert swin.lr == pytest.approx(2e-4 / 16) and swin.milestones == ()
    assert "where its multistep schedule ends" in swin.recipe_note
    scratch = make_config(["d"], "o", model="swinir-light", scale=4, allow_random_init=True)
    assert (scratch.lr, scratch.schedule, scratch.iters) == (2e-4, "multistep", 500_000)
    assert scratch.milestones == (250_000, 400_000, 450_000, 475_000)
    short = make_config(["d"], "o", model="swinir-light", scale=4, allow_random_init=True, iters=5000)
    assert short.milestones == (2500, 4000, 4500, 4750) and short.iters == 5000  # the schedule's shape, scaled
    assert "scaled from 500000 to 5000 steps" in short.recipe_note
    nafnet = make_config(["d"], "o", model="nafnet-gopro-w32", lr=5e-5, iters=10)
    assert (nafnet.optimizer, nafnet.loss, nafnet.lr, nafnet.iters) == ("adamw", "psnr", 5e-5, 10)
    assert nafnet.recipe_note.endswith("as given")
    cosine = make_config(["d"], "o", model="nafnet-gopro-w32")
    assert cosine.lr == pytest.approx(1e-3 * 0.01)  # its cosine decays to 1e-7: 1 % of the peak instead


def test_swinir_presets_keep_kairs_ema():
    cfg = make_config(["d"], "o", model="swinir-light", scale=4)
    assert cfg.ema_decay == 0.999
    assert make_config(["d"], "o", model="swinir-light", scale=4, ema_decay=0.0).ema_decay == 0.0
    assert make_config(["d"], "o", checkpoint="x.pth").ema_decay == 0.0


@pytest.mark.parametrize("field, flag", [("loss", "--loss"), ("embedding", "--embedding"), ("negative_init", "--negative-init"),
                                         ("optimizer", "--optimizer"), ("amp", "--amp")])
def test_a_train_config_refuses_an_unknown_choice_when_built(field, flag):
    """Refused at construction, naming the flag and the allowed values (from mcir_cli.choices),
    before any model is loaded or data scanned (the folders here do not exist)."""
    with pytest.raises(McirError, match=f"^{flag} must be one of "):
        TrainConfig(data=["no-such-folder"], output="no-such-run", **{field: "foo"})
    TrainConfig(data=["no-such-folder"], output="no-such-run", loss="L1", embedding="pixel")  # the loss's case as make_rec_loss


def test_a_run_file_may_say_lambda_auto(tmp_path):
    from mcir_cli.train.config import load_config_file

    run_toml = tmp_path / "run.toml"
    run_toml.write_text('lambda = "auto"\ndata = "x"\n')
    assert load_config_file(run_toml) == {"lam_auto": True, "data": ["x"]}
