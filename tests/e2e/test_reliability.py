"""Nothing lost, nothing escapes (issue #14), through the CLI and the API: names mcir did not
choose stay inside the output folder, a full disk is one line, bad inputs are one line
before any work. The units: tests/_helpers/test_fsutil.py, tests/data/test_limits.py."""

from __future__ import annotations

import errno
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.data.datasets import discover, discover_all, folder_name
from tests.conftest import files_under, one_line_error

runner = CliRunner()


def _png(path: Path, w: int, h: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def test_dataset_name_of_a_path_ending_in_dotdot_is_the_real_folder(tmp_path):
    s5 = tmp_path / "A" / "S5"
    for n in ("a", "b"):
        _png(s5 / "HR" / f"{n}.png", 32, 32)
    (s5 / "sub").mkdir()
    assert folder_name(s5 / "sub" / "..") == "S5"
    assert discover(s5 / "sub" / "..", scale=4).name == "S5"
    other = tmp_path / "B" / "S5"
    shutil.copytree(s5 / "HR", other / "HR")
    (tmp_path / "B" / "x").mkdir()
    names = [d.name for d in discover_all([s5, tmp_path / "B" / "x" / ".." / "S5"], 4, None)]
    assert names == ["A/S5", "B/S5"]  # the parent prefix of a collision is a real name too


def test_save_images_of_a_dotdot_dataset_stay_inside(imdn, tmp_path):
    """`--data A/S5/sub/..` used to make the dataset name "..": images went to DIR's parent."""
    s5 = tmp_path / "A" / "S5"
    for i, n in enumerate(("a", "b")):
        _png(s5 / "HR" / f"{n}.png", 32, 32, seed=i)
    (s5 / "sub").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(imdn), "--data", str(s5 / "sub" / ".."),
                              "--scale", "4", "--device", "cpu", "--save-images", str(out / "imgs"),
                              "-o", str(out / "r.json")])
    assert res.exit_code == 0, res.output
    assert files_under(out) == ["imgs", "imgs/S5", "imgs/S5/a.png", "imgs/S5/b.png", "r.json"]
    assert list(json.loads((out / "r.json").read_text())["datasets"]) == ["S5"]
    again = runner.invoke(app, ["evaluate", "--restored", str(out / "imgs"), "--data", str(s5), "--scale", "4"])
    assert again.exit_code == 0, again.output


def test_bicubic_save_images_of_a_dotdot_dataset_stay_inside(tmp_path):
    s5 = tmp_path / "A" / "S5"
    _png(s5 / "HR" / "a.png", 32, 32)
    (s5 / "sub").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(s5 / "sub" / ".."), "--scale", "4",
                              "--save-images", str(out / "imgs")])
    assert res.exit_code == 0, res.output
    assert files_under(out) == ["imgs", "imgs/S5", "imgs/S5/a.png"]


def test_score_dataset_confines_names_it_did_not_choose(imdn, tmp_path):
    """A Dataset built by API users (or a future layout) with hostile names."""
    from dataclasses import replace

    from mcir_cli.evaluate.benchmarks import conventions_for, score_dataset
    from mcir_cli.models.loading import load_model

    model = load_model(imdn)
    folder = tmp_path / "data"
    _png(folder / "HR" / "x.png", 32, 32)
    d = discover(folder, scale=4)
    d = replace(d, name="../../escape", pairs=tuple(replace(p, name="../../../../x") for p in d.pairs))
    save = tmp_path / "deep" / "save"
    save.mkdir(parents=True)
    score_dataset(model, d, conventions_for("sr", 4), device=torch.device("cpu"), save_dir=save)
    assert files_under(tmp_path / "deep") == ["save", "save/_", "save/_/_", "save/_/_/escape", "save/_/_/escape/__.._.._.._x.png"]


def test_cli_disk_full_on_the_results_is_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    _png(folder / "a.png", 32, 32)
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".r.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(folder), "--scale", "4", "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: {out}: cannot write: no space left on device", res.stderr
    assert files_under(tmp_path) == ["data", "data/a.png"]


def test_real_full_disk_from_the_cli(small_disk, tmp_path):
    folder = tmp_path / "data"
    _png(folder / "a.png", 32, 32)
    try:  # fill the disk: the results cannot be written at the end
        (small_disk / "filler").write_bytes(b"\0" * 200_000)
    except OSError:
        pass
    out = small_disk / "r.json"
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(folder), "--scale", "4", "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: {out}: cannot write: no space left on device", res.stderr
    assert files_under(small_disk) == ["filler"]


def test_one_pixel_image_is_one_line_and_writes_nothing(imdn, tmp_path):
    folder = tmp_path / "tiny"
    one = _png(folder / "one.png", 1, 1)
    out = tmp_path / "out"
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(folder), "--scale", "4", "-o", str(out / "r.json"),
                              "--save-images", str(out / "imgs")])
    assert "too small for x4" in one_line_error(res, one)
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(imdn), "--data", str(folder), "--scale", "4",
                              "--device", "cpu", "--save-images", str(out / "imgs"), "-o", str(out / "r.json")])
    assert "too small for x4" in one_line_error(res, one)
    assert files_under(tmp_path) == ["tiny", "tiny/one.png"]


def test_too_small_for_the_border_or_ssim_is_one_line(tmp_path):
    folder = tmp_path / "pairs"
    _png(folder / "HR" / "a.png", 32, 32)
    _png(folder / "HR" / "one.png", 4, 4)
    lr = _png(folder / "LR_bicubic" / "X4" / "one.png", 1, 1)
    _png(folder / "LR_bicubic" / "X4" / "a.png", 8, 8)
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(folder), "-o", str(tmp_path / "r.json")])
    line = one_line_error(res, lr)
    assert "image 4x4 is too small" in line and "needs at least 19x19" in line
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(folder), "--crop-border", "0"])
    assert "needs at least 11x11" in one_line_error(res, lr)
    assert not (tmp_path / "r.json").exists()


def _pk_garbage(path: Path) -> Path:
    # torch's zip reader raises a bare OSError(EINVAL) on these bytes: "error: Invalid argument"
    path.write_bytes(b"PK\x03\x04" + random.Random(0).randbytes(5000))
    return path


def test_zip_garbage_checkpoint_names_the_file(tmp_path):
    bad = _pk_garbage(tmp_path / "model.pth")
    assert "not a readable torch checkpoint" in one_line_error(runner.invoke(app, ["models", "inspect", str(bad)]), bad)
    folder = tmp_path / "data"
    _png(folder / "a.png", 32, 32)
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(bad), "--data", str(folder), "--scale", "4",
                              "-o", str(tmp_path / "r.json"), "--save-images", str(tmp_path / "imgs")])
    one_line_error(res, bad)
    assert files_under(tmp_path) == ["data", "data/a.png", "model.pth"]


def test_reader_os_errors_name_the_checkpoint(tmp_path, monkeypatch):
    """Whatever torch version: an OSError from its reader is the file's problem, named."""
    bad = _pk_garbage(tmp_path / "x.pth")

    def einval(*args, **kwargs):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(torch, "load", einval)
    out = one_line_error(runner.invoke(app, ["models", "inspect", str(bad)]), bad)
    assert "damaged zip archive: Invalid argument" in out


def test_results_of_the_same_name_are_told_apart_by_their_files(tmp_path):
    """`mcir compare a/X4.json b/X4.json` named them "X4 (1)"/"X4 (2)" in its messages."""
    import json as _json

    from mcir_cli.compare.alignment import display_labels as _labels
    from mcir_cli.compare.files import load_result

    result = {"conventions": {"y_channel": True, "crop_border": 4, "quantize": True}, "task": "sr",
              "model": {"label": "X4", "scale": 4},
              "datasets": {"S": {"psnr": 30.0, "ssim": 0.9, "images": [{"name": "a", "psnr": 30.0, "ssim": 0.9}]}}}
    paths = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "X4.json").write_text(_json.dumps(result))
        paths.append(tmp_path / sub / "X4.json")
    assert _labels([load_result(p) for p in paths]) == ["X4 (a/X4.json)", "X4 (b/X4.json)"]


def test_a_dataset_named_dotdot_stays_inside_visuals():
    from mcir_cli.render.visuals import slug

    assert slug("..") == "x" and slug("../etc") == "_etc" and slug("Set5") == "Set5"
