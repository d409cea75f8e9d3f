"""plot.py and `mcir plot`: real run folders (a short IMDN x4 retrain with a real collapse
and validations, and a plain one) drawn as training curves; one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import mcir_cli.render.plot as plot_mod
from mcir_cli.cli import app
from mcir_cli.errors import McirError
from mcir_cli.render.plot import load_run, load_run_log, plot_runs, run_labels
from mcir_cli.train.config import TrainConfig
from mcir_cli.train.run import Run, retrain
from tests.conftest import set5_crops

runner = CliRunner()


class NanOnCall:
    """The run's reconstruction loss, NaN on one call: a real collapse, rolled back."""

    def __init__(self, loss, call):
        self.loss, self.call, self.calls = loss, call, 0

    def __call__(self, pred, target):
        self.calls += 1
        value = self.loss(pred, target)
        return value * float("nan") if self.calls == self.call else value


def config(imdn, data, out, **kw):
    base = dict(data=[str(data)], output=str(out), checkpoint=str(imdn), iters=6, batch=1, patch=12,
                lr=1e-5, negative_steps=(2, 3), embedding="pixel", seed=0, device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, imdn):
    root = tmp_path_factory.mktemp("runs")
    val = set5_crops(root / "val", ("baby",), 32)
    train = set5_crops(root / "train", ("bird", "head"), 64)  # LR ready-made: no bicubic at start
    run = Run(config(imdn, train, root / "mcir", lam=1e-3, val=[str(val)], val_every=3,
                     ratio_band=(0.02, 0.2)))
    run.parts.rec_loss = NanOnCall(run.parts.rec_loss, call=4)
    assert run.train().collapses == 1
    retrain(config(imdn, train, root / "plain", iters=4, negative_init="none"))
    return root / "mcir", root / "plain"


def lines_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def drawn(monkeypatch):
    """The figure plot_runs writes (then written for real)."""
    seen = []
    real = plot_mod.save_figure

    def keep(fig, path):
        seen.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plot_mod, "save_figure", keep)
    return seen


def test_load_run_log_is_the_log(runs):
    mcir, plain = runs
    records = load_run_log(mcir)
    assert records == lines_of(mcir)
    events = [r.get("event") for r in records]
    assert events[0] == "start" and events[-1] == "end"
    assert events.count("collapse") == 1
    val_steps = [r["step"] for r in records if r.get("event") == "val"]
    assert val_steps[0] == 0 and val_steps[-1] == 6  # the starting weights', ..., the last
    run = load_run(mcir)
    assert (run.label, run.ratio_band, run.records) == ("mcir", (0.02, 0.2), records)
    assert load_run(plain, "baseline").label == "baseline"


def test_plot_runs_draws_the_logged_numbers(runs, tmp_path, drawn):
    mcir, plain = runs
    out = plot_runs([plain, mcir], tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (1000, 880)  # 10 x 8.8 in at 100 dpi: 3 rows of panels
    (fig,) = drawn
    panels = {ax.get_gid(): ax for ax in fig.axes}
    assert list(panels) == ["l_rec", "l_neg", "ratio", "lam", "lr", "psnr"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["plain", "mcir", "collapse (rolled back)"]
    assert all(ax.get_xlabel() == "step" for ax in fig.axes)
    assert panels["psnr"].get_ylabel() == "PSNR (dB)" and panels["l_rec"].get_yscale() == "log"

    log = lines_of(mcir)
    steps = [r for r in log if "event" not in r]
    collapse = next(r for r in log if r.get("event") == "collapse")

    def drawn_series(key, label):
        xs, ys = [], []
        for line in panels[key].lines:
            if line.get_label() == label:
                xs += list(line.get_xdata())
                ys += list(line.get_ydata())
        return xs, ys

    for key in ("l_rec", "l_neg", "ratio", "lam", "lr"):
        assert drawn_series(key, "mcir") == ([r["step"] for r in steps], [r[key] for r in steps]), key
    vals = [r for r in log if r.get("event") == "val"]
    assert drawn_series("psnr", "mcir") == ([r["step"] for r in vals], [r["psnr"] for r in vals])
    plain_steps = [r for r in lines_of(plain) if "event" not in r]
    assert drawn_series("l_rec", "plain") == ([r["step"] for r in plain_steps], [r["l_rec"] for r in plain_steps])
    for key in ("l_neg", "ratio", "lam", "psnr"):  # a plain run has no negatives, no --val here
        assert drawn_series(key, "plain") == ([], [])
    for ax in fig.axes:
        marks = [line for line in ax.lines if line.get_gid() == "collapse"]
        assert [list(m.get_xdata()) for m in marks] == [[collapse["step"]] * 2]
    # the band is the run's own --ratio-band, from its config.json
    (band,) = [p for p in panels["ratio"].patches if p.get_gid() == "ratio_band"]
    panels["ratio"].get_ylim()
    ys = panels["ratio"].transData.inverted().transform(band.get_transform().transform(band.get_path().vertices))[:, 1]
    assert (ys.min(), ys.max()) == pytest.approx((0.02, 0.2))
    assert [t.get_text() for t in panels["ratio"].get_legend().get_texts()] == ["mcir's heuristic band (2–20 %)"]


def test_a_plain_run_alone_has_only_its_panels(runs, tmp_path, drawn):
    _, plain = runs
    plot_runs([plain], tmp_path / "plain.svg", labels=["plain fine-tuning"])
    assert (tmp_path / "plain.svg").read_bytes().startswith(b"<?xml")
    (fig,) = drawn
    assert [ax.get_gid() for ax in fig.axes] == ["l_rec", "lr"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["plain fine-tuning"]


def test_run_labels_are_distinct_folder_tails(tmp_path):
    assert run_labels(["runs/plain", "runs/mcir"]) == ["plain", "mcir"]
    assert run_labels(["a/mcir", "b/mcir/"]) == ["a/mcir", "b/mcir"]
    assert run_labels([tmp_path / "x" / ".." / "r"]) == ["r"]


def small_run(src: Path, dst: Path) -> Path:
    """A copy of a run's log and config (no weights) to spoil."""
    dst.mkdir(parents=True)
    for name in ("log.jsonl", "config.json"):
        shutil.copy(src / name, dst / name)
    return dst


def test_bad_logs_are_one_line_errors_naming_the_file(runs, tmp_path):
    mcir, _ = runs
    with pytest.raises(McirError, match=r"nope: no such run folder$"):
        load_run_log(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(McirError, match=r"f: is a file, expected a run folder"):
        load_run_log(tmp_path / "f")
    (tmp_path / "empty").mkdir()
    with pytest.raises(McirError, match=r"empty/log\.jsonl: no log\.jsonl: not a run folder of mcir retrain"):
        load_run_log(tmp_path / "empty")
    bad = small_run(mcir, tmp_path / "bad")
    lines = (bad / "log.jsonl").read_text().splitlines()
    (bad / "log.jsonl").write_text("\n".join([*lines[:2], '{"step": 1, "l_rec"', *lines[2:]]) + "\n")
    with pytest.raises(McirError, match=r"bad/log\.jsonl: line 3 is not JSON \(") as err:
        load_run_log(bad)
    assert "\n" not in str(err.value)
    (bad / "log.jsonl").write_text(lines[0] + "\n[1, 2]\n")
    with pytest.raises(McirError, match="line 2 is not a JSON object"):
        load_run_log(bad)
    # the last line of a run being written (or killed while writing) is not an error
    live = small_run(mcir, tmp_path / "live")
    with open(live / "log.jsonl", "a") as fh:
        fh.write('{"step": 7, "l_r')
    assert load_run_log(live) == lines_of(mcir)


def test_outputs_and_labels_are_checked_before_any_work(runs, tmp_path):
    mcir, plain = runs
    missing = tmp_path / "missing"
    (tmp_path / "taken.png").write_bytes(b"mine")
    with pytest.raises(McirError, match="taken.png: file exists; choose a new name"):
        plot_runs([missing], tmp_path / "taken.png")  # before the missing run is looked at
    assert (tmp_path / "taken.png").read_bytes() == b"mine"
    with pytest.raises(McirError, match=r"c\.gif: unknown chart format \.gif"):
        plot_runs([missing], tmp_path / "c.gif")
    with pytest.raises(McirError, match="is not a folder"):
        plot_runs([missing], tmp_path / "taken.png" / "c.png")
    with pytest.raises(McirError, match=r"--label was given 1 time\(s\) for 2 run\(s\)"):
        plot_runs([mcir, plain], tmp_path / "c.png", labels=["x"])
    with pytest.raises(McirError, match="two runs have the label 'x'"):
        plot_runs([mcir, plain], tmp_path / "c.png", labels=["x", "x"])
    with pytest.raises(McirError, match="the same run folder is given twice"):
        plot_runs([mcir, mcir.parent / "." / "mcir"], tmp_path / "c.png")
    started = tmp_path / "started"
    started.mkdir()
    (started / "log.jsonl").write_text(json.dumps({"event": "start", "step": 0}) + "\n")
    with pytest.raises(McirError, match="started/log.jsonl: no training step or validation logged yet"):
        plot_runs([started], tmp_path / "c.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["started", "taken.png"]


def test_cli_plot(runs, tmp_path, drawn):
    mcir, plain = runs
    out = tmp_path / "curves.svg"
    res = runner.invoke(app, ["plot", str(plain), "--out", str(out), "--label", "plain fine-tuning"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"wrote {out} (training curves of 1 run)"
    assert out.read_bytes().startswith(b"<?xml")
    assert [t.get_text() for t in drawn[0].legends[0].get_texts()] == ["plain fine-tuning"]
    res = runner.invoke(app, ["plot", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2
    assert res.output.strip() == f"error: {tmp_path / 'nope'}: no such run folder"
    res = runner.invoke(app, ["plot", str(mcir), "-o", str(out)])
    assert res.exit_code == 2 and "file exists" in res.output and "\n" not in res.output.strip()
    res = runner.invoke(app, ["plot", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "Example: mcir plot runs/plain runs/mcir --out curves.png" in res.output
