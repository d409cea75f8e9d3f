"""Datasets as they are downloaded: each published layout, rebuilt small in tmp_path from
real shared images with the names, nesting and extensions it ships with, read through the
CLI (`mcir data inspect`, `mcir evaluate`). Sources per layout: docs/datasets.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tests.conftest import shared_path
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.data.imageio import read_image, to_uint8, write_image
from mcir_cli.data.layouts import infer_scale, recognise
from mcir_cli.data.resize import imresize
from mcir_cli.errors import McirError

runner = CliRunner()


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    """Eight different 48x48 crops of real photos (Set5 HR and SunHays JPEGs)."""
    set5 = shared_path("data", "sr", "Set5", "HR")
    photos = sorted(shared_path("data", "train", "SunHays80_color_subset20").glob("*.jpg"))[:3]
    out = [read_image(p)[:, 100:148, 60:108] for p in sorted(set5.glob("*.png"))]
    out += [read_image(p)[:, 200:248, 300:348] for p in photos]
    return [to_uint8(t).float() / 255 for t in out]


def lr(hr: torch.Tensor, s: int) -> torch.Tensor:
    return to_uint8(imresize(hr, 1 / s)).float() / 255


def hazy(img: torch.Tensor, k: int = 1) -> torch.Tensor:
    return (img * (0.9 - 0.1 * k) + 0.1 * k).clamp(0, 1)


def put(path: Path, img: torch.Tensor) -> Path:
    write_image(path, img)
    return path


def inspect(path: Path, *extra: str) -> str:
    res = runner.invoke(app, ["data", "inspect", str(path), "--show", "40", *extra])
    assert res.exit_code == 0, res.output
    return res.output


def row(out: str, key: str) -> str:
    m = re.search(rf"│ {key}\s*│ (.*?)\s*│", out)
    assert m, out
    return m.group(1)


def check(path: Path, task: str, scale: int, names: list[str], *extra: str, given_task: str | None = None) -> str:
    """`mcir data inspect` and the API agree on task, scale and the pairs (sorted, unique)."""
    out = inspect(path, *extra)
    assert row(out, "task") == task
    assert row(out, "scale").startswith(f"x{scale}" if task == "sr" else "1")
    assert row(out, "pairs") == str(len(names))
    found = recognise(path, None, given_task)
    assert [p.name for p in found.pairs] == sorted(names) and len(set(names)) == len(names)
    for n in names[:40]:
        assert n in out
    return out


def one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert out.startswith("error: ") and "Traceback" not in out and res.output.strip().count("\n") == 0, res.output
    return out


def evaluate_json(tmp: Path, *args: str | Path) -> dict:
    out = tmp / f"r{len(list(tmp.glob('r*.json')))}.json"
    res = runner.invoke(app, ["evaluate", *map(str, args), "--device", "cpu", "-o", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def restored_from_inputs(tmp: Path, root: Path) -> Path:
    """A 'restored' folder holding each pair's input (scored against its ground truth)."""
    from mcir_cli.data.datasets import discover, load_pair

    d = discover(root)
    for pair in d.pairs:
        put(tmp / "restored" / f"{pair.name}.png", load_pair(d, pair)[0])
    return tmp / "restored"


# --------------------------------------------------------------------------- SR


def div2k(root: Path, images, scales=(4,), valid=True, unknown=True) -> Path:
    """DIV2K as its zips unpack: DIV2K_{train,valid}_HR/, *_LR_bicubic/X{s}/NNNNx{s}.png."""
    for i, img in enumerate(images[:3], 1):
        put(root / "DIV2K_train_HR" / f"{i:04d}.png", img)
        for s in scales:
            put(root / "DIV2K_train_LR_bicubic" / f"X{s}" / f"{i:04d}x{s}.png", lr(img, s))
            if unknown:
                put(root / "DIV2K_train_LR_unknown" / f"X{s}" / f"{i:04d}x{s}.png", lr(img.flip(-1), s))
    if valid:
        put(root / "DIV2K_valid_HR" / "0801.png", images[4])
        for s in scales:
            put(root / "DIV2K_valid_LR_bicubic" / f"X{s}" / f"0801x{s}.png", lr(images[4], s))
    return root


@pytest.mark.unit
def test_div2k_as_unzipped_trains_on_train_only(tmp_path, images):
    root = div2k(tmp_path / "DIV2K", images)
    out = check(root, "sr", 4, ["0001", "0002", "0003"])
    assert "DIV2K_train_HR/ + DIV2K_train_LR_bicubic/X4/" in row(out, "layout")
    assert "DIV2K_valid_* not used" in out and "DIV2K_train_LR_unknown/X4" in out
    found = recognise(root)
    assert all(p.lq.parent.parent.name == "DIV2K_train_LR_bicubic" for p in found.pairs)
    assert [p.lq.name for p in found.pairs] == ["0001x4.png", "0002x4.png", "0003x4.png"]
    assert infer_scale([root]) == 4
    # the user's own example, scored: a real x4 checkpoint, scale from the data
    j = evaluate_json(tmp_path, "--checkpoint", shared_path("weights", "DCTLSA", "X4.pt"), "--data", root)
    assert [i["name"] for i in j["datasets"]["DIV2K"]["images"]] == ["0001", "0002", "0003"]


@pytest.mark.unit
def test_inspect_finds_an_lr_file_that_does_not_match_its_hr(tmp_path, images):
    """An LR file of the wrong size (here x3 in the X4 folder) is found by `data inspect`
    from the headers: exit 2, the file and both sizes named, the table still shown."""
    root = div2k(tmp_path / "DIV2K", images, valid=False, unknown=False)
    assert row(inspect(root), "sizes").startswith("every pair")
    bad = put(root / "DIV2K_train_LR_bicubic" / "X4" / "0002x4.png", lr(images[1], 3))
    res = runner.invoke(app, ["data", "inspect", str(root)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert row(res.output, "sizes").startswith("1 of 3 pairs do not match")
    err = res.output.strip().splitlines()[-1]
    h, w = images[1].shape[-2:]
    assert err.startswith("error: ") and "0002x4.png" in " ".join(res.output.split())
    assert f"{-(-w // 3)}x{-(-h // 3)} x4 does not match" in " ".join(res.output.split()), res.output
    assert bad.is_file()


@pytest.mark.unit
def test_div2k_lr_unknown_and_valid_by_pointing_at_them(tmp_path, images):
    root = div2k(tmp_path / "DIV2K", images)
    unknown = recognise(root / "DIV2K_train_LR_unknown")
    assert unknown.scale == 4 and [p.lq.parent.parent.name for p in unknown.pairs] == ["DIV2K_train_LR_unknown"] * 3
    check(root / "DIV2K_train_LR_unknown" / "X4", "sr", 4, ["0001", "0002", "0003"])
    valid = root / "DIV2K_valid_LR_bicubic" / "X4"
    check(valid, "sr", 4, ["0801"])
    j = evaluate_json(tmp_path, "--bicubic", "--data", valid)
    assert list(j["datasets"]["X4"]["images"][0])[:1] == ["name"] and j["model"]["scale"] == 4


@pytest.mark.unit
def test_a_missing_scale_is_made_by_bicubic_only_from_a_bicubic_set(tmp_path, images):
    """HR/ + LR_bicubic/X4/ asked for x2: MATLAB bicubic from HR/ is the same benchmark. A
    real-world-degraded set (`mcir data degrade`'s LR_realesrgan/, DIV2K's LR_unknown/)
    asked for a scale it lacks is refused: bicubic LR would be another benchmark."""
    bic, rw = tmp_path / "bic", tmp_path / "rw"
    for n, img in enumerate(images[:2]):
        for root, kind in ((bic, "LR_bicubic"), (rw, "LR_realesrgan")):
            put(root / "HR" / f"i{n}.png", img)
            put(root / kind / "X4" / f"i{n}x4.png", lr(img, 4))
    assert "LR made from HR/ by MATLAB bicubic" in recognise(bic, 2).notes[-1]
    assert recognise(rw, 4).scale == 4
    with pytest.raises(McirError, match=r"no x2 inputs \(has x4, from LR_realesrgan/\): its LR images are not bicubic"):
        recognise(rw, 2)
    root = div2k(tmp_path / "DIV2K", images, valid=False)
    assert recognise(root, 2).scale == 2  # the bicubic X4/ is the one used: x2 made from HR
    with pytest.raises(McirError, match="from DIV2K_train_LR_unknown/"):
        recognise(root / "DIV2K_train_LR_unknown", 2)
    res = runner.invoke(app, ["data", "inspect", str(rw), "--scale", "2"])
    assert res.exit_code == 2 and "not bicubic" in res.output and "Traceback" not in res.output


@pytest.mark.unit
def test_multi_scale_preset_takes_the_scale_of_the_data(tmp_path, images):
    """`--model swinir-light` comes in x2/x3/x4: a folder with only X4/ says x4."""
    root = div2k(tmp_path / "DIV2K", images, valid=False, unknown=False)
    res = runner.invoke(app, ["evaluate", "--model", "swinir-light", "--data", str(root)],
                        env={"MCIR_WEIGHTS": str(tmp_path / "none")})
    assert "x4, the scale the data holds" in res.output and "swinir-light-x4" in " ".join(res.output.split())
    both = div2k(tmp_path / "D2", images, scales=(2, 4), valid=False, unknown=False)
    assert infer_scale([both]) is None and infer_scale([root, both]) is None
    assert infer_scale([tmp_path / "nowhere"]) is None


@pytest.mark.unit
def test_flickr2k_and_df2k(tmp_path, images):
    fl = tmp_path / "Flickr2K"
    for i, img in enumerate(images[3:5], 1):
        put(fl / "Flickr2K_HR" / f"{i:06d}.png", img)
        put(fl / "Flickr2K_LR_bicubic" / "X2" / f"{i:06d}x2.png", lr(img, 2))
    check(fl, "sr", 2, ["000001", "000002"])
    # DF2K = DIV2K's and Flickr2K's folders side by side (train sets together, valid left out)
    merged = div2k(tmp_path / "DF2K", images, scales=(2,), unknown=False)
    for p in fl.rglob("*.png"):
        put(merged / p.relative_to(fl), read_image(p))
    out = check(merged, "sr", 2, ["0001", "0002", "0003", "000001", "000002"])
    assert "Flickr2K_HR" in row(out, "layout") and "DIV2K_valid_* not used" in out
    # EDSR's DF2K: DF2K_HR/ + DF2K_LR_bicubic/X{s}/
    edsr = tmp_path / "edsr" / "DF2K"
    for i, img in enumerate(images[:2], 1):
        put(edsr / "DF2K_HR" / f"{i:06d}.png", img)
        put(edsr / "DF2K_LR_bicubic" / "X3" / f"{i:06d}x3.png", lr(img, 3))
    check(edsr, "sr", 3, ["000001", "000002"])


@pytest.mark.unit
@pytest.mark.parametrize("layout", ["edsr", "basicsr"])
def test_sr_benchmarks_and_manga109(tmp_path, images, layout):
    names = ["AisazuNihaIrarenai", "AkkeraKanjinchou"]
    root = tmp_path / "Manga109"
    for n, img in zip(names, images):
        if layout == "edsr":  # EDSR/KAIR/SwinIR test sets: HR/ + LR_bicubic/X4/<name>x4.png
            put(root / "HR" / f"{n}.png", img)
            put(root / "LR_bicubic" / "X4" / f"{n}x4.png", lr(img, 4))
        else:  # BasicSR: GTmod12/ + LRbicx4/ with the same names
            put(root / "GTmod12" / f"{n}.png", img)
            put(root / "LRbicx4" / f"{n}.png", lr(img, 4))
    check(root, "sr", 4, names)
    j = evaluate_json(tmp_path, "--bicubic", "--data", root)
    assert [i["name"] for i in j["datasets"]["Manga109"]["images"]] == names


def test_bicubic_set14_x4_matches_basicsr_and_saves_images(tmp_path):
    """Set14's grey bridge is scored as 3 equal channels, as BasicSR reads it: 26.088 dB
    (it read 25.994 when the raw grey channel was scored: bridge 23.15 instead of 24.47)."""
    j = evaluate_json(tmp_path, "--bicubic", "--data", shared_path("data", "sr", "Set14"), "--scale", "4",
                      "--save-images", tmp_path / "bic")
    d = j["datasets"]["Set14"]
    assert round(d["psnr"], 3) == 26.088 and round(d["ssim"], 4) == 0.7048
    assert round(next(i["psnr"] for i in d["images"] if i["name"] == "bridge"), 2) == 24.47
    saved = sorted(p.name for p in (tmp_path / "bic" / "Set14").iterdir())
    assert len(saved) == 14 and "bridge.png" in saved
    assert read_image(tmp_path / "bic" / "Set14" / "bridge.png").shape[0] == 3


# --------------------------------------------------------------------------- dehazing


@pytest.mark.unit
def test_reside_its_and_ots_as_released(tmp_path, images):
    its = tmp_path / "RESIDE" / "ITS"
    names = []
    for i, img in enumerate(images[:2], 1):
        put(its / "clear" / f"{i}.png", img)
        for k, beta in ((1, "0.90179"), (2, "0.97842")):
            names.append(f"{i}_{k}_{beta}")
            put(its / "hazy" / f"{names[-1]}.png", hazy(img, k))
            put(its / "trans" / f"{i}_{k}.png", img[:1])
    check(its, "dehaze", 1, names)
    assert {p.name: p.gt.name for p in recognise(its).pairs}["2_1_0.90179"] == "2.png"
    j = evaluate_json(tmp_path, "--checkpoint", shared_path("weights", "AODNet", "dehazer.pth"), "--data", its)
    assert sorted(i["name"] for i in j["datasets"]["ITS"]["images"]) == sorted(names)
    ots = tmp_path / "RESIDE" / "OTS"
    for i, img in enumerate(images[2:4], 1):
        put(ots / "clear" / f"{i:04d}.jpg", img)
        put(ots / "hazy" / f"{i:04d}_0.8_0.2.jpg", hazy(img))
    check(ots, "dehaze", 1, ["0001_0.8_0.2", "0002_0.8_0.2"])


@pytest.mark.unit
def test_sots_indoor_outdoor_and_larger_gt(tmp_path, images):
    sots = tmp_path / "SOTS"
    big = torch.nn.functional.pad(images[0], (10, 10, 10, 10), mode="reflect")  # GT 68x68, hazy 48x48
    put(sots / "indoor" / "gt" / "1400.png", big)
    for k in (1, 2, 10):
        put(sots / "indoor" / "hazy" / f"1400_{k}.png", hazy(images[0], k % 3))
    put(sots / "outdoor" / "gt" / "0001.png", images[1])
    put(sots / "outdoor" / "hazy" / "0001_0.8_0.2.jpg", hazy(images[1]))
    check(sots / "indoor", "dehaze", 1, ["1400_1", "1400_10", "1400_2"])
    check(sots / "outdoor", "dehaze", 1, ["0001_0.8_0.2"])
    from mcir_cli.data.datasets import discover, load_pair

    d = discover(sots / "indoor")
    _, gt = load_pair(d, d.pairs[0])
    assert torch.equal(gt, read_image(sots / "indoor" / "gt" / "1400.png")[:, 10:58, 10:58])  # centre crop
    j = evaluate_json(tmp_path, "--restored", restored_from_inputs(tmp_path, sots / "indoor"),
                      "--data", sots / "indoor")
    assert len(j["datasets"]["indoor"]["images"]) == 3
    # pointing at SOTS/ itself: two datasets, one line saying which
    msg = one_line_error(runner.invoke(app, ["data", "inspect", str(sots)]))
    assert "holds 2 datasets" in msg and "indoor/" in msg and "outdoor/" in msg


@pytest.mark.unit
def test_dehazeformer_and_reside_6k_splits(tmp_path, images):
    root = tmp_path / "RESIDE-6K"
    for split, imgs in (("train", images[:3]), ("test", images[3:5])):
        for i, img in enumerate(imgs, 1):
            put(root / split / "GT" / f"{i}.jpg", img)
            put(root / split / "hazy" / f"{i}.jpg", hazy(img))
    out = check(root, "dehaze", 1, ["1", "2", "3"])
    assert "test/ not used" in out
    check(root / "test", "dehaze", 1, ["1", "2"])


# --------------------------------------------------------------------------- deraining


@pytest.mark.unit
def test_prenet_rain100_train_and_test(tmp_path, images):
    train = tmp_path / "RainTrainL"
    for i, img in enumerate(images[:3], 1):
        put(train / f"norain-{i}.png", img)
        if i != 2:  # PReNet's RainTrainH lacks some rainy images on purpose
            put(train / f"rain-{i}.png", hazy(img))
    out = check(train, "derain", 1, ["rain-1", "rain-3"])
    assert "1 of 3 ground-truth images" in out
    test = tmp_path / "Rain100H"
    for i, img in enumerate(images[:2], 1):
        put(test / f"norain-{i:03d}.png", img)
        put(test / "rainy" / f"rain-{i:03d}.png", hazy(img))
    check(test, "derain", 1, ["rain-001", "rain-002"])
    assert recognise(test).pairs[1].gt.name == "norain-002.png"
    j = evaluate_json(tmp_path, "--restored", restored_from_inputs(tmp_path, test), "--data", test)
    assert [i["name"] for i in j["datasets"]["Rain100H"]["images"]] == ["rain-001", "rain-002"]


@pytest.mark.unit
def test_jorder_rain100_and_rain200(tmp_path, images):
    light = tmp_path / "rain_data_test_Light"
    for i, img in enumerate(images[:2], 1):
        put(light / "norain" / f"norain-{i}.png", img)
        put(light / "rain" / "X2" / f"norain-{i}x2.png", hazy(img))  # same size despite the x2
    out = check(light, "derain", 1, ["norain-1", "norain-2"])
    assert row(out, "layout") == "rain/X2/ + norain/"
    heavy = tmp_path / "Rain200H"
    for split in ("train", "test"):
        for i, img in enumerate(images[:2], 1):
            put(heavy / split / "norain" / f"norain-{i}.png", img)
            put(heavy / split / "rain" / "X2" / f"norain-{i}x2.png", hazy(img))
    assert "test/ not used" in check(heavy, "derain", 1, ["norain-1", "norain-2"])


@pytest.mark.unit
def test_ddn_data_many_rainy_per_clean(tmp_path, images):
    root = tmp_path / "Rain1400"
    names = []
    for i, img in zip((901, 902), images):
        put(root / "ground_truth" / f"{i}.jpg", img)
        for k in (1, 2, 14):
            names.append(f"{i}_{k}")
            put(root / "rainy_image" / f"{i}_{k}.jpg", hazy(img, k % 3))
    check(root, "derain", 1, names)
    assert {p.name: p.gt.name for p in recognise(root).pairs}["902_14"] == "902.jpg"


@pytest.mark.unit
def test_did_mdn_side_by_side(tmp_path, images):
    root = tmp_path / "DID-MDN-datasets" / "DID-MDN-test"
    for i, img in enumerate(images[:2]):
        put(root / f"{i}.jpg", torch.cat([hazy(img), img], dim=-1))  # rainy | clean, 96x48
    check(root, "derain", 1, ["0", "1"])
    from mcir_cli.data.datasets import discover, load_pair

    d = discover(root)
    lq, gt = load_pair(d, d.pairs[0])
    assert lq.shape == gt.shape == (3, 48, 48) and (lq - gt).abs().mean() > 0.02
    j = evaluate_json(tmp_path, "--restored", restored_from_inputs(tmp_path, root), "--data", root)
    assert len(j["datasets"]["DID-MDN-test"]["images"]) == 2


@pytest.mark.unit
def test_spa_data_test_train_and_lists(tmp_path, images):
    test = tmp_path / "real_test_1000"
    for i, img in enumerate(images[:2]):
        put(test / "gt" / f"{i:03d}gt.png", img)
        put(test / "rain" / f"{i:03d}.png", hazy(img))
    check(test, "derain", 1, ["000", "001"])
    spa = tmp_path / "SPA-Data"
    lines = []
    for v, img in enumerate(images[:2]):
        for f in (0, 1):
            rel = f"real_world/{v:03d}/{v:03d}-{f}/{v:03d}-{f}_1_1.png"
            put(spa / rel, hazy(img, f + 1))
            lines.append(f"/{rel} /real_world_gt/{v:03d}/{v:03d}_1_1.png")
        put(spa / "real_world_gt" / f"{v:03d}" / f"{v:03d}_1_1.png", img)
    names = ["000-0_1_1", "000-1_1_1", "001-0_1_1", "001-1_1_1"]
    check(spa, "derain", 1, names)
    (spa / "real_world.txt").write_text("\n".join(lines) + "\n")  # the list SPA-Data ships
    out = check(spa / "real_world.txt", "derain", 1, names, "--task", "derain", given_task="derain")
    assert "list of pairs" in row(out, "layout")


# --------------------------------------------------------------------------- deblurring


@pytest.mark.unit
def test_gopro_as_unzipped_names_stay_unique(tmp_path, images):
    root = tmp_path / "GOPRO_Large"
    scenes = {"train": ["GOPR0372_07_00", "GOPR0374_11_00"], "test": ["GOPR0384_11_00"]}
    for split, names in scenes.items():
        for j, scene in enumerate(names):
            for frame in ("000047", "000048"):  # frame names repeat across scenes
                img = images[j]
                put(root / split / scene / "sharp" / f"{frame}.png", img)
                put(root / split / scene / "blur" / f"{frame}.png", hazy(img))
                put(root / split / scene / "blur_gamma" / f"{frame}.png", hazy(img, 2))
    names = [f"{s}-{f}" for s in scenes["train"] for f in ("000047", "000048")]
    out = check(root, "deblur", 1, names)
    assert "test/ not used" in out
    assert all(p.lq.parent.name == "blur" for p in recognise(root).pairs)
    j = evaluate_json(tmp_path, "--restored", restored_from_inputs(tmp_path, root), "--data", root)
    assert [i["name"] for i in j["datasets"]["GOPRO_Large"]["images"]] == names


@pytest.mark.unit
def test_flattened_gopro_of_nafnet_and_restormer(tmp_path, images):
    root = tmp_path / "GoPro" / "test"
    names = ["GOPR0384_11_00-000001", "GOPR0384_11_00-000002"]
    for n, img in zip(names, images):
        put(root / "target" / f"{n}.png", img)
        put(root / "input" / f"{n}.png", hazy(img))
    check(root, "deblur", 1, names)
    crops = tmp_path / "GoPro" / "train"
    for n, img in zip(names, images):
        put(crops / "sharp_crops" / f"{n}_s001.png", img)
        put(crops / "blur_crops" / f"{n}_s001.png", hazy(img))
    check(crops, "deblur", 1, [f"{n}_s001" for n in names])


# --------------------------------------------------------------------------- denoising


@pytest.mark.unit
def test_sidd_medium_as_released(tmp_path, images):
    root = tmp_path / "SIDD_Medium_Srgb"
    scenes = ["0001_001_S6_00100_00060_3200_L", "0002_001_S6_00100_00020_3200_N"]
    for j, scene in enumerate(scenes):
        for k in ("010", "011"):
            put(root / "Data" / scene / f"{scene[:4]}_GT_SRGB_{k}.PNG", images[j])
            put(root / "Data" / scene / f"{scene[:4]}_NOISY_SRGB_{k}.PNG", hazy(images[j]))
    names = [f"{s}_{k}" for s in scenes for k in ("010", "011")]
    check(root, "denoise", 1, names)
    check(root / "Data", "denoise", 1, names)
    j = evaluate_json(tmp_path, "--restored", restored_from_inputs(tmp_path, root), "--data", root)
    assert len(j["datasets"]["SIDD_Medium_Srgb"]["images"]) == 4


@pytest.mark.unit
def test_clean_folder_for_denoising(tmp_path, images):
    set12 = shared_path("data", "denoise", "Set12_gray")
    check(set12, "denoise", 1, [f"{i:02d}" for i in range(1, 13)], "--task", "denoise", given_task="denoise")


# --------------------------------------------------------------------------- escape hatch and bad folders


@pytest.mark.unit
def test_list_file_of_pairs(tmp_path, images):
    base = tmp_path / "mine"
    lines = ["# my own pairs", ""]
    for i, img in enumerate(images[:3]):
        put(base / "low" / f"a{i}.png", lr(img, 4))
        put(base / "high" / f"a{i}_hr.png", img)
        lines.append(f"low/a{i}.png\thigh/a{i}_hr.png")
    (base / "pairs.txt").write_text("\n".join(lines) + "\n")
    check(base / "pairs.txt", "sr", 4, ["a0", "a1", "a2"])
    j = evaluate_json(tmp_path, "--bicubic", "--data", base / "pairs.txt")
    assert [i["name"] for i in j["datasets"]["pairs"]["images"]] == ["a0", "a1", "a2"]
    (base / "bad.txt").write_text("low/a0.png\n")
    msg = one_line_error(runner.invoke(app, ["data", "inspect", str(base / "bad.txt")]))
    assert "line 1 holds 1 path" in msg and "lq<TAB>gt" in msg


@pytest.mark.unit
@pytest.mark.parametrize("case", ["empty", "ambiguous", "lmdb", "splits", "unpaired"])
def test_bad_or_ambiguous_folder_is_one_line(tmp_path, images, case):
    root = tmp_path / "data"
    root.mkdir()
    if case == "ambiguous":
        for a, b in (("hazy", "GT"), ("input", "target")):
            put(root / a / "1.png", hazy(images[0]))
            put(root / b / "1.png", images[0])
        want = ["matches several layouts", "hazy/ + GT/", "input/ + target/"]
    elif case == "lmdb":
        (root / "input.lmdb").mkdir()
        (root / "target.lmdb").mkdir()
        want = ["LMDB", "input.lmdb", "no data.mdb"]
    elif case == "splits":
        for split in ("val", "test"):
            put(root / split / "hazy" / "1.png", hazy(images[0]))
            put(root / split / "GT" / "1.png", images[0])
        want = ["holds the splits", "test/", "val/", "point at one"]
    elif case == "unpaired":
        put(root / "rainy_image" / "901_1.jpg", images[0])
        put(root / "ground_truth" / "902.jpg", images[0])
        want = ["1 of 1 inputs have no ground truth named <id>", "901_1.jpg", "rainy_image/ + ground_truth/"]
    else:
        want = ["matches no known layout", "DIV2K", "RESIDE", "JORDER", "GoPro", "SIDD", "it holds: empty"]
    for cmd in (["data", "inspect", str(root)], ["evaluate", "--bicubic", "--data", str(root), "--scale", "4"]):
        msg = one_line_error(runner.invoke(app, cmd))
        assert str(root) in msg
        for w in want:
            assert w in msg, msg


# --------------------------------------------------------------- BasicSR's LMDB datasets


def make_lmdb_like_basicsr(folder: Path, lmdb_path: Path, compress_level: int = 1) -> list[str]:
    """What BasicSR's scripts/data_preparation/create_lmdb.py does for DIV2K
    (prepare_keys_div2k + basicsr/utils/lmdb_util.make_lmdb_from_imgs), Pillow standing in
    for OpenCV: keys are the sorted PNG names without `.png`; each value is the image
    PNG-encoded at zlib level `compress_level` (cv2's IMWRITE_PNG_COMPRESSION); map size
    10 x the first image's encoded size x count; meta_info.txt `<key>.png (h,w,c) <level>`;
    a commit every 5000 images. Returns the keys."""
    import io

    from PIL import Image

    lmdb = pytest.importorskip("lmdb")
    paths = sorted(folder.glob("*.png"))
    keys = [p.name.split(".png")[0] for p in paths]

    def encode(path: Path) -> tuple[bytes, tuple[int, int, int]]:
        with Image.open(path) as img:
            buf = io.BytesIO()
            img.save(buf, format="PNG", compress_level=compress_level)
            return buf.getvalue(), (img.height, img.width, len(img.getbands()))

    env = lmdb.open(str(lmdb_path), map_size=len(encode(paths[0])[0]) * len(paths) * 10)
    txn = env.begin(write=True)
    with open(lmdb_path / "meta_info.txt", "w") as meta:
        for idx, (path, key) in enumerate(zip(paths, keys)):
            data, (h, w, c) = encode(path)
            txn.put(key.encode("ascii"), data)
            meta.write(f"{key}.png ({h},{w},{c}) {compress_level}\n")
            if idx % 5000 == 0:
                txn.commit()
                txn = env.begin(write=True)
    txn.commit()
    env.close()
    return keys


@pytest.fixture(scope="module")
def div2k_lmdb(tmp_path_factory, images) -> Path:
    """DIV2K as BasicSR users keep it: sub-images (`0001_s001.png`, the LR ones named alike
    by extract_subimages.py) made into DIV2K_train_HR_sub.lmdb and
    DIV2K_train_LR_bicubic_X4_sub.lmdb; the image folders are removed afterwards."""
    import shutil

    root = tmp_path_factory.mktemp("lmdb") / "DIV2K"
    hr_dir, lr_dir = root / "HR_sub", root / "X4_sub"
    for i, img in enumerate(images[:6]):
        put(hr_dir / f"{i // 2 + 1:04d}_s{i % 2 + 1:03d}.png", img)
        put(lr_dir / f"{i // 2 + 1:04d}_s{i % 2 + 1:03d}.png", lr(img, 4))
    make_lmdb_like_basicsr(hr_dir, root / "DIV2K_train_HR_sub.lmdb")
    make_lmdb_like_basicsr(lr_dir, root / "DIV2K_train_LR_bicubic_X4_sub.lmdb")
    shutil.copytree(hr_dir, root.parent / "HR_sub")  # the sources, kept to compare with
    shutil.copytree(lr_dir, root.parent / "X4_sub")
    shutil.rmtree(hr_dir)
    shutil.rmtree(lr_dir)
    return root


@pytest.mark.unit
def test_basicsr_lmdb_pairs_are_read_as_the_images_they_were_made_from(div2k_lmdb):
    from mcir_cli.data.datasets import discover, load_pair

    names = [f"{i:04d}_s{j:03d}" for i in (1, 2, 3) for j in (1, 2)]
    out = check(div2k_lmdb, "sr", 4, names)
    assert row(out, "layout").startswith("DIV2K_train_HR_sub.lmdb/ + DIV2K_train_LR_bicubic_X4_sub.lmdb/")
    assert "match" in row(out, "sizes")
    ds = discover(div2k_lmdb)
    lq, gt = load_pair(ds, ds.pairs[3])
    assert torch.equal(gt, read_image(div2k_lmdb.parent / "HR_sub" / f"{names[3]}.png"))
    assert torch.equal(lq, read_image(div2k_lmdb.parent / "X4_sub" / f"{names[3]}.png"))
    # one database alone is HR images: LR made by MATLAB bicubic, as for an HR folder
    hr_only = inspect(div2k_lmdb / "DIV2K_train_HR_sub.lmdb", "--scale", "4")
    assert "HR-only" in row(hr_only, "layout") and row(hr_only, "pairs") == "6"
    found = recognise(div2k_lmdb / "DIV2K_train_HR_sub.lmdb", 4)
    assert [p.name for p in found.pairs] == names and found.pairs[0].lq is None


def test_lmdb_trains_through_the_cli(div2k_lmdb, tmp_path, caplog):
    """A BasicSR user's case: EDSR in BasicSR's layout, --res-scale given, on DIV2K LMDBs."""
    from safetensors import safe_open
    from tests.models.test_archs import to_basicsr_edsr

    from mcir_cli.models.archs import BUILDERS
    from mcir_cli.models.loading import load_checkpoint_model

    torch.manual_seed(0)
    sd = to_basicsr_edsr(BUILDERS["EDSR"](scale=4, n_resblocks=1, n_feats=8).state_dict())
    torch.save({"params": sd, "params_ema": sd}, tmp_path / "EDSR_Mx4.pth")
    run = tmp_path / "run"
    res = runner.invoke(app, ["retrain", "--checkpoint", str(tmp_path / "EDSR_Mx4.pth"), "--data", str(div2k_lmdb),
                              "--res-scale", "0.5", "--iters", "2", "--batch", "2", "--patch", "12",
                              "--embedding", "pixel", "--device", "cpu", "-o", str(run),
                              "--workers", "1", "--cache", "off"])  # read in a forked worker
    assert res.exit_code == 0, res.output
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["data"] == [str(div2k_lmdb)] and config["res_scale"] == 0.5
    assert set(torch.load(run / "model.pth", weights_only=True)) == {"params", "params_ema"}  # BasicSR's wrapper
    with safe_open(str(run / "model.safetensors"), "pt") as fh:
        assert fh.metadata()["res_scale"] == "0.5"
    with caplog.at_level("WARNING", logger="mcir"):
        again = load_checkpoint_model(run / "model.safetensors")
    assert again.net.body[0].res_scale == 0.5 and "res_scale" not in caplog.text


@pytest.mark.unit
def test_paired_lmdbs_of_a_restoration_task_and_beside_image_folders(div2k_lmdb, tmp_path):
    gopro = tmp_path / "GoPro_train"
    gopro.mkdir()
    (gopro / "sharp_crops.lmdb").symlink_to(div2k_lmdb / "DIV2K_train_HR_sub.lmdb")
    make_lmdb_like_basicsr(div2k_lmdb.parent / "HR_sub", gopro / "blur_crops.lmdb")  # same size: a x1 pair
    out = inspect(gopro)
    assert row(out, "task") == "deblur" and row(out, "pairs") == "6"
    assert "blur_crops.lmdb/ + sharp_crops.lmdb/" in row(out, "layout")
    # BasicSR's usual DIV2K/: the image folders and their LMDBs side by side: the images win
    both = tmp_path / "DIV2K"
    (both / "DIV2K_train_HR").mkdir(parents=True)
    (both / "DIV2K_train_LR_bicubic").mkdir()
    (both / "DIV2K_train_LR_bicubic" / "X4").symlink_to(div2k_lmdb.parent / "X4_sub")
    for p in (div2k_lmdb.parent / "HR_sub").iterdir():
        (both / "DIV2K_train_HR" / p.name).symlink_to(p)
    for db in div2k_lmdb.iterdir():
        (both / db.name).symlink_to(db)
    out = inspect(both)
    assert "DIV2K_train_HR/" in row(out, "layout") and "the LMDBs (DIV2K_train_HR_sub.lmdb" in " ".join(out.split())


@pytest.mark.unit
@pytest.mark.parametrize("case", ["no-lmdb-package", "bad-meta", "no-meta"])
def test_lmdb_problems_are_one_line(div2k_lmdb, tmp_path, monkeypatch, case):
    import shutil
    import sys

    from mcir_cli.data import lmdb_images

    root = tmp_path / "DIV2K"
    shutil.copytree(div2k_lmdb, root)
    db = root / "DIV2K_train_HR_sub.lmdb"
    if case == "no-lmdb-package":
        monkeypatch.setitem(sys.modules, "lmdb", None)  # `import lmdb` raises ImportError
        monkeypatch.setattr(lmdb_images, "_envs", {})
        want = ["needs the lmdb package: pip install lmdb"]
    elif case == "bad-meta":
        (db / "meta_info.txt").write_text("0001_s001.png (48,48,3) 1\n0001_s002.png 48 48\n")
        want = ["meta_info.txt", "line 2 is not BasicSR's", "0001_s002.png 48 48"]
    else:
        (db / "meta_info.txt").unlink()
        want = ["an LMDB without meta_info.txt", "DIV2K_train_HR_sub.lmdb"]
    msg = one_line_error(runner.invoke(app, ["data", "inspect", str(root)]))
    for w in want:
        assert w in msg, msg


@pytest.mark.unit
def test_a_flat_folders_hint_names_only_what_data_inspect_takes(tmp_path, images):
    """`data inspect FLAT` suggests options; each it offers for inspect works there."""
    for i, img in enumerate(images[:3]):
        put(tmp_path / "flat" / f"{i}.png", img)
    msg = one_line_error(runner.invoke(app, ["data", "inspect", str(tmp_path / "flat")]))
    assert "--task denoise, for JPEG --task jpeg (evaluate and retrain also need --noise-sigma S or --jpeg-quality Q)" in msg
    assert row(inspect(tmp_path / "flat", "--task", "denoise"), "task") == "denoise"
    assert row(inspect(tmp_path / "flat", "--scale", "4"), "layout").startswith("HR-only")
