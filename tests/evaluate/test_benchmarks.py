"""`mcir evaluate` and `mcir_cli.evaluate.benchmarks`: real numbers with real weights, the JSON
schema, convention overrides, scoring restored folders, and every kind of bad input
ending in one line, exit code 2 and nothing written."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from tests.conftest import CROP_NAMES, NeedsCode, shared_path
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.data.datasets import discover
from mcir_cli.data.imageio import read_image, to_uint8, write_image
from mcir_cli.data.resize import imresize
from mcir_cli.errors import McirError
from mcir_cli.evaluate.benchmarks import Scoring, conventions_for, evaluate_model, evaluate_restored, score_dataset
from mcir_cli.metrics.conventions import Conventions

if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:  # click < 8.2
    runner = CliRunner(mix_stderr=False)
else:  # click >= 8.2 keeps stdout and stderr apart already
    runner = CliRunner()


def dctlsa_x4() -> Path:
    return shared_path("weights", "DCTLSA", "X4.pt")


def dncnn() -> Path:
    return shared_path("weights", "DnCNN_KAIR", "dncnn_25.pth")


def lr_of(hr: torch.Tensor, s: int) -> torch.Tensor:
    return to_uint8(imresize(hr, 1 / s)).float() / 255


def sr_folder(root: Path, crops: dict[str, torch.Tensor], s: int = 4, grey: tuple[str, ...] = ()) -> Path:
    """HR/ + LR_bicubic/X{s}/ from the crops; names in `grey` are written greyscale."""
    for n, img in crops.items():
        if n in grey:
            img = img.mean(0, keepdim=True)
        write_image(root / "HR" / f"{n}.png", img)
        write_image(root / "LR_bicubic" / f"X{s}" / f"{n}x{s}.png", lr_of(img, s))
    return root


def evaluate(*args: str | Path):
    return runner.invoke(app, ["evaluate", *map(str, args)])


# ------------------------------------------------------------------- real numbers


@pytest.fixture(scope="module")
def set5_x4(tmp_path_factory):
    """One CLI run of DCTLSA x4 on the real Set5, with JSON and restored images saved."""
    ckpt = dctlsa_x4()
    data = shared_path("data", "sr", "Set5")
    out = tmp_path_factory.mktemp("set5")
    result = evaluate("--checkpoint", ckpt, "--data", data, "--output", out / "r.json",
                      "--save-images", out / "restored", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return {"ckpt": ckpt, "data": data, "out": out, "stdout": result.stdout,
            "json": json.loads((out / "r.json").read_text())}


def test_dctlsa_x4_set5_numbers(set5_x4):
    r = set5_x4["json"]["datasets"]["Set5"]
    assert abs(r["psnr"] - 32.52) <= 0.01 and abs(r["ssim"] - 0.8990) <= 0.0005
    assert "32.52" in set5_x4["stdout"] and "0.8990" in set5_x4["stdout"]
    assert "results written to" in set5_x4["stdout"]


def test_dctlsa_x4_set5_json_schema(set5_x4):
    j, ckpt = set5_x4["json"], set5_x4["ckpt"]
    assert {k: j["conventions"][k] for k in ("y_channel", "crop_border", "quantize")} == {
        "y_channel": True, "crop_border": 4, "quantize": "uint8"
    }
    m = j["model"]
    assert Path(m["checkpoint"]).resolve() == ckpt.resolve()
    assert m["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert (m["architecture"], m["scale"]) == ("DCTLSA", 4)
    assert list(j["datasets"]) == ["Set5"]
    d = j["datasets"]["Set5"]
    assert [i["name"] for i in d["images"]] == ["baby", "bird", "butterfly", "head", "woman"]
    assert all(set(i) >= {"name", "psnr", "ssim"} for i in d["images"])
    assert all(20 < i["psnr"] < 45 and 0.5 < i["ssim"] <= 1 for i in d["images"])
    assert d["psnr"] == pytest.approx(sum(i["psnr"] for i in d["images"]) / 5, abs=1e-12)
    assert d["ssim"] == pytest.approx(sum(i["ssim"] for i in d["images"]) / 5, abs=1e-12)


def test_saved_images_have_hr_size(set5_x4):
    saved = sorted((set5_x4["out"] / "restored" / "Set5").glob("*.png"))
    assert [p.stem for p in saved] == ["baby", "bird", "butterfly", "head", "woman"]
    for p in saved:
        assert read_image(p).shape == read_image(set5_x4["data"] / "HR" / p.name).shape
    assert not [p for p in (set5_x4["out"]).iterdir() if p.name.startswith(".")]  # no staging left


def test_restored_folder_scores_identically(set5_x4):
    out = set5_x4["out"]
    result = evaluate("--restored", out / "restored", "--data", set5_x4["data"], "--scale", "4",
                      "--output", out / "restored.json")
    assert result.exit_code == 0, result.output
    again = json.loads((out / "restored.json").read_text())
    model_run = set5_x4["json"]
    assert again["conventions"] == model_run["conventions"]
    assert again["datasets"]["Set5"] == model_run["datasets"]["Set5"]  # exactly the same numbers


def test_restored_folder_says_where_its_scale_came_from(crops, tmp_path):
    """Restored images do not carry their scale: a folder with one LR scale gives it (and
    with it the border crop), and the run says so."""
    data = sr_folder(tmp_path / "Mini", crops, s=4)
    restored = tmp_path / "restored"
    for n, img in crops.items():  # the HR crops themselves as "restored" output
        write_image(restored / f"{n}.png", img)
    result = evaluate("--restored", restored, "--data", data)
    assert result.exit_code == 0, result.output
    assert "note: scale x4 taken from the LR images of Mini" in " ".join(result.output.split())
    given = evaluate("--restored", restored, "--data", data, "--scale", "4")
    assert given.exit_code == 0 and "note:" not in given.output


def test_restored_folder_with_convention_overrides(set5_x4):
    out = set5_x4["out"]
    result = evaluate("--restored", out / "restored", "--data", set5_x4["data"], "--scale", "4",
                      "--rgb", "--crop-border", "0", "--output", out / "rgb.json")
    assert result.exit_code == 0, result.output
    j = json.loads((out / "rgb.json").read_text())
    assert (j["conventions"]["y_channel"], j["conventions"]["crop_border"]) == (False, 0)
    assert j["datasets"]["Set5"]["psnr"] < set5_x4["json"]["datasets"]["Set5"]["psnr"] - 0.5  # RGB is lower


@pytest.mark.slow
def test_dncnn_sigma25_set12(tmp_path):
    """DnCNN-S σ25 on Set12 (the README's 30.42 dB used another noise draw: 0.1 dB slack)."""
    ckpt, data = dncnn(), shared_path("data", "denoise", "Set12_gray")
    result = evaluate("--checkpoint", ckpt, "--data", data, "--noise-sigma", "25", "--noise-seed", "0",
                      "--device", "cpu", "--output", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    j = json.loads((tmp_path / "r.json").read_text())
    assert j["task"] == "denoise"
    assert {k: j["conventions"][k] for k in ("y_channel", "crop_border")} == {"y_channel": False, "crop_border": 0}
    assert j["noise"] == {"sigma": 25.0, "seed": 0}
    assert "Gaussian noise σ=25 (0–255), seed 0" in " ".join(result.output.split())  # the table says it too
    assert j["model"]["architecture"] == "DnCNN"
    # a one-channel model scores the stored grey values: labelled so, not "RGB"
    assert j["conventions"]["grey"] is True and j["conventions"]["description"].startswith("grey (")
    assert "conventions: grey (" in " ".join(result.output.split())
    d = j["datasets"]["Set12_gray"]
    assert len(d["images"]) == 12
    assert abs(d["psnr"] - 30.42) <= 0.1


# ------------------------------------------------------- conventions and small runs


def test_conventions_for_defaults_and_overrides():
    assert conventions_for("sr", 4) == Conventions(y_channel=True, crop_border=4)
    assert conventions_for("sr", 2) == Conventions(y_channel=True, crop_border=2)
    for task in ("denoise", "dehaze", "derain", "deblur", "restore"):
        assert conventions_for(task, 1) == Conventions(y_channel=False, crop_border=0)
    assert conventions_for("sr", 4, y_channel=False) == Conventions(y_channel=False, crop_border=4)
    assert conventions_for("sr", 4, crop_border=0) == Conventions(y_channel=True, crop_border=0)
    assert conventions_for("dehaze", 1, True, 3) == Conventions(y_channel=True, crop_border=3)


def test_cli_overrides_change_json_conventions(tmp_path, crops):
    data = sr_folder(tmp_path / "tiny", crops)
    default = evaluate("--checkpoint", dctlsa_x4(), "--data", data, "--output", tmp_path / "a.json")
    over = evaluate("--checkpoint", dctlsa_x4(), "--data", data, "--output", tmp_path / "b.json",
                    "--rgb", "--crop-border", "2")
    assert default.exit_code == 0 and over.exit_code == 0, default.output + over.output
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert (a["conventions"]["y_channel"], a["conventions"]["crop_border"]) == (True, 4)
    assert (b["conventions"]["y_channel"], b["conventions"]["crop_border"]) == (False, 2)
    assert a["datasets"]["tiny"]["psnr"] != b["datasets"]["tiny"]["psnr"]


def test_denoise_y_channel_override(tmp_path, crops):
    for n, img in crops.items():
        write_image(tmp_path / "grey" / f"{n}.png", img.mean(0, keepdim=True))
    result = evaluate("--checkpoint", dncnn(), "--data", tmp_path / "grey", "--task", "denoise",
                      "--noise-sigma", "25", "--y-channel", "--crop-border", "3", "--output", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    j = json.loads((tmp_path / "r.json").read_text())
    assert (j["conventions"]["y_channel"], j["conventions"]["crop_border"]) == (True, 3)
    assert len(j["datasets"]["grey"]["images"]) == 3


def test_restored_matches_model_run_with_a_grey_image_among_colour(tmp_path, crops):
    """Like Set14's bridge: a grey image in a colour set is scored as 3 equal channels by
    the model run, and must be scored the same way from the saved images."""
    data = sr_folder(tmp_path / "mixed", crops, grey=("bird",))
    assert read_image(data / "HR" / "bird.png").shape[0] == 1
    run = evaluate("--checkpoint", dctlsa_x4(), "--data", data, "--save-images", tmp_path / "saved",
                   "--output", tmp_path / "model.json")
    assert run.exit_code == 0, run.output
    again = evaluate("--restored", tmp_path / "saved", "--data", data, "--output", tmp_path / "restored.json")
    assert again.exit_code == 0, again.output
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("model.json", "restored.json"))
    assert a["datasets"] == b["datasets"]


def test_api_evaluate_model_and_restored(tmp_path, crops):
    from mcir_cli.models.loading import load_model

    data = sr_folder(tmp_path / "tiny", crops)
    model = load_model(dctlsa_x4())
    seen = []
    r = evaluate_model(model, [data], Scoring(device="cpu"), save_images=tmp_path / "out",
                       progress=lambda name, done, total: seen.append((name, done, total)))
    assert seen == [("tiny", 1, 3), ("tiny", 2, 3), ("tiny", 3, 3)]
    assert r["model"]["scale"] == 4 and r["data"] == {"tiny": str(data.resolve())}
    assert sorted(p.name for p in (tmp_path / "out" / "tiny").iterdir()) == [f"{n}.png" for n in CROP_NAMES]
    again = evaluate_restored(tmp_path / "out", [data])
    assert again["datasets"]["tiny"] == r["datasets"]["tiny"]


def test_score_dataset_rejects_another_scale(tmp_path, crops):
    from mcir_cli.models.loading import load_model

    model = load_model(dctlsa_x4())
    d = discover(sr_folder(tmp_path / "x2", crops, s=2))
    with pytest.raises(McirError, match="the model is x4, but the dataset is x2"):
        score_dataset(model, d, conventions_for("sr", 4), device=torch.device("cpu"))


# ------------------------------------------------------------------------ bad input


def _bad_missing(tmp, crops):
    return ["--checkpoint", dctlsa_x4(), "--data", tmp / "nope"], ["folder not found", str(tmp / "nope")]


def _bad_empty(tmp, crops):
    (tmp / "empty").mkdir()
    return ["--checkpoint", dctlsa_x4(), "--data", tmp / "empty"], ["matches no known layout", "it holds: empty"]


def _bad_no_layout(tmp, crops):
    (tmp / "odd" / "pictures").mkdir(parents=True)
    write_image(tmp / "odd" / "pictures" / "a.png", crops["baby"])
    return (["--checkpoint", dctlsa_x4(), "--data", tmp / "odd"],
            ["matches no known layout", "HR/ + LR_bicubic/X{s}/", "GTmod12/ + LRbicx{s}/", "hazy/ + gt/",
             "blur/ + sharp/", "it holds: pictures"])


def _bad_unpaired(tmp, crops):
    for n, img in crops.items():
        write_image(tmp / "p" / "hazy" / f"{n}.png", img)
        write_image(tmp / "p" / "GT" / f"{n}_clean.png", img)
    return (["--checkpoint", dctlsa_x4(), "--data", tmp / "p"],
            ["3 of 3 inputs have no ground truth", "first unmatched: baby.png, bird.png, butterfly.png"])


def _bad_truncated(tmp, crops):
    data = sr_folder(tmp / "t", crops)  # the last image in name order is broken: the first two run
    bad = data / "LR_bicubic" / "X4" / "butterflyx4.png"
    bad.write_bytes(bad.read_bytes()[:-40])
    return ["--checkpoint", dctlsa_x4(), "--data", data], [str(bad)]


def _bad_size(tmp, crops):
    data = sr_folder(tmp / "t", crops)
    bad = data / "LR_bicubic" / "X4" / "butterflyx4.png"
    write_image(bad, lr_of(crops["butterfly"], 4)[:, :, :11])
    return ["--checkpoint", dctlsa_x4(), "--data", data], [str(bad), "does not match its ground truth butterfly.png"]


def _bad_unknown_arch(tmp, crops):
    torch.save({"foo.weight": torch.zeros(3)}, tmp / "mystery.pth")
    data = sr_folder(tmp / "t", crops)
    return ["--checkpoint", tmp / "mystery.pth", "--data", data], [str(tmp / "mystery.pth"), "unknown architecture"]


def _bad_pickle(tmp, crops):
    torch.save({"model": NeedsCode()}, tmp / "code.pth")
    data = sr_folder(tmp / "t", crops)
    return ["--checkpoint", tmp / "code.pth", "--data", data], [str(tmp / "code.pth"), "never executes pickled code"]


def _bad_scale_flag(tmp, crops):
    return (["--checkpoint", dctlsa_x4(), "--data", shared_path("data", "sr", "Set5"), "--scale", "2"],
            ["checkpoint is x4, but --scale 2 was given"])


def _bad_scale_folder(tmp, crops):
    for n, img in crops.items():  # BasicSR layout with x2 inputs only: no HR/ to make x4 from
        write_image(tmp / "x2" / "GTmod12" / f"{n}.png", img)
        write_image(tmp / "x2" / "LRbicx2" / f"{n}.png", lr_of(img, 2))
    return ["--checkpoint", dctlsa_x4(), "--data", tmp / "x2"], [str(tmp / "x2"), "no x4 inputs (has x2)"]


def _bad_grey(tmp, crops):
    data = sr_folder(tmp / "g", crops, grey=CROP_NAMES)
    return ["--checkpoint", dctlsa_x4(), "--data", data], ["grey image, but the model (DCTLSA) takes RGB input"]


def _bad_restored_missing(tmp, crops):
    data = sr_folder(tmp / "t", crops)
    return ["--restored", tmp / "none", "--data", data], ["restored-images folder not found"]


def _bad_grey_model_on_rgb(tmp, crops):
    for n, img in crops.items():
        write_image(tmp / "rgb" / f"{n}.png", img)
    return (["--checkpoint", dncnn(), "--data", tmp / "rgb", "--noise-sigma", "25"],
            ["RGB image, but the model (DnCNN) takes grey input"])


BAD = {f.__name__[5:]: f for f in (
    _bad_missing, _bad_empty, _bad_no_layout, _bad_unpaired, _bad_truncated, _bad_size,
    _bad_unknown_arch, _bad_pickle, _bad_scale_flag, _bad_scale_folder, _bad_grey,
    _bad_restored_missing, _bad_grey_model_on_rgb,
)}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, crops, case):
    args, expected = BAD[case](tmp_path, crops)
    output, saved = tmp_path / "out" / "result.json", tmp_path / "saved"
    result = evaluate(*args, "--output", output, "--save-images", saved, "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert not output.exists() and not output.parent.exists()
    assert not saved.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_existing_output_is_not_overwritten(tmp_path, crops):
    data = sr_folder(tmp_path / "t", crops)
    output = tmp_path / "result.json"
    output.write_text("mine\n")
    result = evaluate("--checkpoint", dctlsa_x4(), "--data", data, "--output", output,
                      "--save-images", tmp_path / "saved")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "output file exists" in result.stderr and str(output) in result.stderr
    assert output.read_text() == "mine\n"
    assert not (tmp_path / "saved").exists()


def test_non_empty_save_images_folder_is_refused(tmp_path, crops):
    data = sr_folder(tmp_path / "t", crops)
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "keep.txt").write_text("x")
    result = evaluate("--checkpoint", dctlsa_x4(), "--data", data, "--save-images", tmp_path / "saved")
    assert result.exit_code == 2 and "not empty" in result.stderr
    assert [p.name for p in (tmp_path / "saved").iterdir()] == ["keep.txt"]


def test_empty_save_images_folder_is_filled(tmp_path, crops):
    data = sr_folder(tmp_path / "t", crops)
    (tmp_path / "saved").mkdir()
    result = evaluate("--checkpoint", dctlsa_x4(), "--data", data, "--save-images", tmp_path / "saved")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "saved" / "t").iterdir()) == [f"{n}.png" for n in CROP_NAMES]


def test_api_errors_are_mcir_errors(tmp_path, crops):
    """The same failures from Python: McirError, one line, naming the path."""
    from mcir_cli.models.loading import load_model

    model = load_model(dctlsa_x4())
    for case in ("truncated", "size", "grey", "unpaired"):
        sub = tmp_path / case
        sub.mkdir()
        args, expected = BAD[case](sub, crops)
        data = args[args.index("--data") + 1]
        with pytest.raises(McirError) as exc:
            evaluate_model(model, [data], Scoring(device="cpu"), save_images=sub / "saved")
        assert "\n" not in str(exc.value) and all(t in str(exc.value) for t in expected)
        assert exc.value.path is not None
        assert not (sub / "saved").exists()


def test_nan_summary_for_no_images():
    from mcir_cli.evaluate.benchmarks import _summary

    assert math.isnan(_summary([])["psnr"])


def test_bicubic_baseline_row(tmp_path):
    """`--bicubic`: the table's first row in every SR paper (Set5 x4: 28.43 / 0.8111 with
    BasicSR's conventions), as a result JSON that compare takes like any model's."""
    set5 = shared_path("data", "sr", "Set5")
    out = tmp_path / "bicubic.json"
    result = evaluate("--bicubic", "--data", set5, "--scale", "4", "--output", out)
    assert result.exit_code == 0, result.output
    j = json.loads(out.read_text())
    assert round(j["datasets"]["Set5"]["psnr"], 2) == 28.43 and round(j["datasets"]["Set5"]["ssim"], 4) == 0.8111
    assert j["model"]["label"] == "bicubic" and j["conventions"]["crop_border"] == 4
    both = evaluate("--bicubic", "--checkpoint", shared_path("weights", "IMDN", "IMDN_x4.pth"), "--data", set5)
    assert both.exit_code == 2 and "score one thing at a time" in both.output


def test_ground_truth_without_its_input_is_refused(crops, tmp_path):
    """A benchmark with one LR file missing must not be scored on the rest in silence."""
    data = sr_folder(tmp_path / "Mini", crops, s=4)
    missing = sorted((data / "LR_bicubic" / "X4").iterdir())[0]
    missing.unlink()
    result = evaluate("--checkpoint", shared_path("weights", "IMDN", "IMDN_x4.pth"), "--data", data, "--device", "cpu")
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "1 of 3 ground-truth images have no input" in out and missing.stem.replace("x4", "") in out


def test_bf16_on_cpu_says_it_runs_fp32(tmp_path, crops, caplog):
    """--amp bf16 is a CUDA autocast: on CPU the run is fp32, said and recorded so."""
    from mcir_cli.models.loading import load_model

    data = sr_folder(tmp_path / "tiny", crops)
    with caplog.at_level("WARNING", logger="mcir"):
        result = evaluate_model(load_model(dctlsa_x4()), [data], Scoring(amp="bf16", device="cpu"))
    assert result["inference"]["amp"] == "fp32"
    assert any("--amp bf16 is a CUDA autocast: on cpu the model runs in fp32" in m for m in caplog.messages)
