"""Shipped presets (presets/*.toml): names, official parameter counts, builds, forwards,
checkpoint round trips, real weights, and their presence in a built wheel."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from tests.conftest import shared_path

from mcir_cli.errors import McirError
from mcir_cli.models.checkpoint import Checkpoint, read_checkpoint, save_like, save_safetensors
from mcir_cli.models.loading import LoadedModel, _io_for, from_preset, load_checkpoint_model, load_model
from mcir_cli.models.presets import TASKS, IOSpec, Preset, get_preset, list_presets, load_preset_file, presets_dir

REPO = Path(__file__).resolve().parents[2]

# Official parameter counts: sum of numel over the network's parameters(), frozen ones
# included (EDSR's 24 MeanShift entries), buffers excluded. Hard-coded from the papers /
# official code / released files, never read back from the TOMLs.
OFFICIAL_PARAMS: dict[str, int] = {
    # SwinIR paper: 878K / 886K / 897K, which leave out the 32,400 relative-position-bias
    # entries (877,752 + 32,400; 885,867 + 32,400; 897,228 + 32,400).
    "swinir-light-x2": 910_152,
    "swinir-light-x3": 918_267,
    "swinir-light-x4": 929_628,
    "swinir-x4": 11_900_199,
    # EDSR baseline: 1,369,859 / 1,517,571 trainable + 24 frozen MeanShift parameters.
    "edsr-light-x2": 1_369_859 + 24,
    "edsr-light-x4": 1_517_571 + 24,
    "nafnet-gopro-w32": 17_111_907,
    "ffanet-its": 4_455_913,
    "dehazeformer-t": 687_404,
    "dehazeformer-s": 1_284_884,
    "dehazeformer-b": 2_517_612,
    # The authors' released files (parameters only; BN statistics/buffers excluded).
    "dctlsa-x2": 867_472,
    "dctlsa-x4": 885_328,
    "imdn-x4": 715_176,
    "rfdn-x4": 433_448,
    "dncnn-gray": 555_137,
    "aodnet": 1_761,
    # IDT (jiexiaou/IDT model.py, the released configuration), one preset per dataset
    "idt-rain200h": 16_416_463,
    "idt-rain200l": 16_416_463,
    "idt-ddn": 16_416_463,
    "idt-did": 16_416_463,
    "idt-spa": 16_416_463,
    # FBCNN (jiaxi-jiang/FBCNN network_fbcnn.py, the released fbcnn_color/gray.pth
    # configuration: nc 64/128/256/512, nb 4, the 512-wide quality head); "72 M" in #22
    "fbcnn": 71_921_796,
    "fbcnn-gray": 71_919_490,
    # RRDBNet (Real-ESRGAN's RealESRNet_x4plus.pth: 64 features, 23 RRDB blocks, growth 32)
    "realesrnet-x4plus": 16_697_987,
}

# name -> (architecture id, scale, file under shared/weights)
REAL_WEIGHTS: dict[str, tuple[str, int, str]] = {
    "dctlsa-x2": ("DCTLSA", 2, "DCTLSA/X2.pt"),
    "dctlsa-x4": ("DCTLSA", 4, "DCTLSA/X4.pt"),
    "imdn-x4": ("IMDN", 4, "IMDN/IMDN_x4.pth"),
    "rfdn-x4": ("RFDN", 4, "RFDN/RFDN_AIM.pth"),
    "dncnn-gray": ("DnCNN", 1, "DnCNN_KAIR/dncnn_25.pth"),
    "aodnet": ("AODNet", 1, "AODNet/dehazer.pth"),
}

IDT_PRESETS = {"idt-rain200h", "idt-rain200l", "idt-ddn", "idt-did", "idt-spa"}
# the same network as idt-rain200h (only the dataset, iterations and file differ): its
# 16 M-parameter builds and round trips are run once, for idt-rain200h
IDT_TWINS = IDT_PRESETS - {"idt-rain200h"}
# fbcnn-gray is fbcnn with one channel in and out (checked below), built once; FBCNN's
# 72 M parameters are built and counted, never written (the round trip is the same code
# for every spandrel network, and 290 MB per format is too much for the suite)
TWINS = IDT_TWINS | {"fbcnn-gray"}
BIG = {"swinir-x4", "nafnet-gopro-w32", "ffanet-its", "fbcnn", "realesrnet-x4plus"} | IDT_PRESETS  # build, count, tiny forward only
# recipe-patch forwards that take 2-5 s on one loaded core
SLOW_PATCH = {"dehazeformer-b", "dehazeformer-s", "dctlsa-x2"}
SLOW_ROUND_TRIP = {"swinir-x4", "nafnet-gopro-w32", "idt-rain200h"}

NAMES = sorted(OFFICIAL_PARAMS)


def _marked(names, slow: set[str]):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


@functools.lru_cache(maxsize=None)
def _built(name: str) -> LoadedModel:
    lm = from_preset(get_preset(name), seed=0)
    lm.restorer.eval()
    return lm


def _small_input(lm: LoadedModel, size: int = 16) -> torch.Tensor:
    size = max(size, lm.min_size)
    size = -(-size // lm.multiple_of) * lm.multiple_of
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, lm.in_channels, size, size, generator=g)


@torch.no_grad()
def _run(lm: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    lm.restorer.eval()
    return lm.restorer(x)


# --------------------------------------------------------------------------- files


@pytest.mark.unit
def test_every_shipped_preset_has_an_official_count():
    stems = {p.stem for p in presets_dir().glob("*.toml")}
    assert stems == set(OFFICIAL_PARAMS)


@pytest.mark.unit
def test_presets_dir_is_the_checkout_folder():
    assert presets_dir().resolve() == (REPO / "presets").resolve()


@pytest.mark.unit
@pytest.mark.parametrize("name", NAMES)
def test_preset_file_is_complete(name):
    p = get_preset(name)
    assert p.name == name == p.path.stem
    assert p.task in TASKS
    assert p.scale >= 1 and (p.task == "sr") == (p.scale > 1)
    assert p.description and p.source.startswith("https://")
    assert p.params == OFFICIAL_PARAMS[name]  # the TOML states the official count
    assert p.weights_file and p.weights_url and p.weights_url.startswith("https://")
    # the MCIR paper's SPN settings
    assert p.spn.lam == 1e-4 and p.spn.weight == 0.1
    assert p.spn.steps == (100, 500, 1000, 2000)
    assert (p.spn.embedding, p.spn.negative_init, p.spn.negative_mix) == ("vgg16", "mix", 0.1)
    r = p.recipe
    assert r.optimizer in ("adam", "adamw") and len(r.betas) == 2
    assert r.schedule in ("multistep", "cosine", "constant")
    assert all(0 < m < r.iterations for m in r.milestones)
    if r.schedule == "multistep":
        assert r.milestones


@pytest.mark.unit
def test_list_presets_matches_files():
    assert [p.name for p in list_presets()] == NAMES


@pytest.mark.unit
def test_recipes_from_the_official_option_files():
    light = get_preset("swinir-light-x4").recipe
    assert (light.optimizer, light.lr, light.batch, light.patch) == ("adam", 2e-4, 64, 64)
    assert light.milestones == (250_000, 400_000, 450_000, 475_000)
    assert (light.iterations, light.gamma) == (500_000, 0.5)
    classical = get_preset("swinir-x4").recipe
    assert (classical.lr, classical.batch, classical.patch) == (2e-4, 32, 48)
    edsr = get_preset("edsr-light-x4").recipe
    assert (edsr.lr, edsr.batch, edsr.patch, edsr.iterations) == (1e-4, 16, 48, 300_000)
    assert edsr.milestones == (200_000,) and edsr.gamma == 0.5
    naf = get_preset("nafnet-gopro-w32").recipe
    assert (naf.optimizer, naf.lr, naf.weight_decay, naf.betas) == ("adamw", 1e-3, 1e-3, (0.9, 0.9))
    assert (naf.schedule, naf.eta_min, naf.iterations) == ("cosine", 1e-7, 200_000)
    assert (naf.patch, naf.batch, naf.loss) == (256, 32, "psnr")
    ffa = get_preset("ffanet-its")
    assert (ffa.recipe.lr, ffa.recipe.batch, ffa.recipe.patch, ffa.recipe.schedule) == (
        1e-4, 2, 240, "cosine")
    assert ffa.io.mean == (0.64, 0.6, 0.58) and ffa.io.std == (0.14, 0.15, 0.152)
    for v, lr, batch in (("t", 4e-4, 32), ("s", 2e-4, 16), ("b", 2e-4, 16)):
        r = get_preset(f"dehazeformer-{v}").recipe
        assert (r.optimizer, r.lr, r.batch, r.patch, r.loss) == ("adamw", lr, batch, 256, "l1")
        assert r.schedule == "cosine" and r.eta_min == pytest.approx(lr * 1e-2)
        assert get_preset(f"dehazeformer-{v}").io.in_range == (-1.0, 1.0)


# --------------------------------------------------------------------------- names


@pytest.mark.unit
@pytest.mark.parametrize(
    "short, scale, full",
    [
        ("swinir-light", 4, "swinir-light-x4"),
        ("swinir-light", 2, "swinir-light-x2"),
        ("SwinIR_Light", 3, "swinir-light-x3"),
        ("edsr-light", 4, "edsr-light-x4"),
        ("dctlsa", 2, "dctlsa-x2"),
        ("swinir-light-x4", 4, "swinir-light-x4"),
        ("dncnn-gray", None, "dncnn-gray"),
    ],
)
def test_short_names_resolve_with_scale(short, scale, full):
    assert get_preset(short, scale).name == full


@pytest.mark.unit
def test_short_name_without_scale_lists_scales():
    with pytest.raises(McirError) as info:
        get_preset("swinir-light")
    msg = str(info.value)
    assert "swinir-light-x2" in msg and "swinir-light-x3" in msg and "swinir-light-x4" in msg
    assert "--scale" in msg


@pytest.mark.unit
def test_short_name_with_a_missing_scale_lists_scales():
    with pytest.raises(McirError, match=r"no x8 .*edsr-light-x2, edsr-light-x4"):
        get_preset("edsr-light", 8)


@pytest.mark.unit
def test_unknown_name_suggests_close_names():
    with pytest.raises(McirError, match="did you mean.*swinir-light"):
        get_preset("swinir-lite")
    with pytest.raises(McirError, match="did you mean.*dehazeformer"):
        get_preset("dehazformer-t")
    with pytest.raises(McirError, match="mcir models"):
        get_preset("xyzzy")


@pytest.mark.unit
def test_scale_mismatch_is_an_error():
    with pytest.raises(McirError, match="x1, but --scale 4"):
        get_preset("dncnn-gray", 4)


def test_a_checkpoint_of_another_scale_than_its_preset_is_refused():
    """DCTLSA's real x2 file under the x4 preset would train at x2 with the x4 recipe and
    carry the x4 model's card and paper rows: refused like another architecture."""
    x2 = shared_path("weights", "DCTLSA", "X2.pt")
    with pytest.raises(McirError, match="checkpoint is x2, but preset dctlsa-x4 is x4"):
        load_model(checkpoint=x2, model="dctlsa-x4")
    assert load_model(checkpoint=x2, model="dctlsa-x2").scale == 2


@pytest.mark.unit
def test_preset_by_toml_path():
    path = REPO / "presets" / "edsr-light-x2.toml"
    assert get_preset(str(path)).name == "edsr-light-x2"
    with pytest.raises(McirError, match="not found"):
        get_preset(str(path.with_name("nope.toml")))


# --------------------------------------------------------------------------- malformed


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = 'name = "x"\ntask = "sr"\nscale = 2\n[architecture]\nid = "EDSR"\n'


@pytest.mark.unit
@pytest.mark.parametrize(
    "text, match",
    [
        ("task = ", "cannot read preset"),
        ('task = "sr"\n', "malformed preset .*architecture"),
        (GOOD.replace('"sr"', '"colorize"'), "task 'colorize'"),
        (GOOD + "[recipe]\nfoo = 1\n", "malformed preset .*foo"),
        (GOOD + '[recipe]\noptimizer = "sgd"\n', "recipe.optimizer 'sgd'"),
        (GOOD + '[recipe]\nloss = "l3"\n', "recipe.loss 'l3'"),
        (GOOD + '[recipe]\nschedule = "poly"\n', "recipe.schedule 'poly'"),
        (GOOD + "[recipe]\nmilestones = [20, 10]\n", "milestones must be increasing"),
        (GOOD + "[io]\nrange = [1.0, 0.0]\n", "low < high"),
        (GOOD + "[io]\nmean = [0.5, 0.5, 0.5]\nstd = [1.0]\n", "same length"),
        (GOOD.replace("[architecture]", 'params = "1M"\n[architecture]'), "params must be an integer"),
    ],
)
def test_malformed_presets_are_one_line_errors(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(McirError, match=match) as info:
        load_preset_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.unit
def test_valid_minimal_preset_uses_defaults(tmp_path):
    p = load_preset_file(_write(tmp_path, GOOD))
    assert isinstance(p, Preset) and p.io is None and p.recipe.optimizer == "adam"


# --------------------------------------------------------------------------- networks


@pytest.mark.parametrize("name", [n for n in NAMES if n not in TWINS])
def test_builds_with_official_count_and_forward(name):
    p = get_preset(name)
    lm = _built(name)
    assert lm.architecture == p.architecture
    assert lm.scale == p.scale and lm.task == p.task
    assert next(lm.net.parameters()).device.type == "cpu"
    assert lm.num_params == OFFICIAL_PARAMS[name]
    # what spandrel detects from the state dict agrees with the preset's kwargs
    hp = lm.hyperparameters
    for key, value in p.kwargs.items():
        if key in hp:
            want = list(value) if isinstance(value, (list, tuple)) else value
            got = list(hp[key]) if isinstance(hp[key], (list, tuple)) else hp[key]
            assert got == want, key
    # the preset's [io] says what the architecture class itself carries
    arch_io = _io_for(lm.net, lm.architecture, None)
    want_io = p.io or IOSpec()
    assert arch_io.in_range == pytest.approx(want_io.in_range)
    assert arch_io.out_range == pytest.approx(want_io.out_range)
    assert (arch_io.mean is None) == (want_io.mean is None)
    if want_io.mean is not None:
        assert arch_io.mean == pytest.approx(want_io.mean)
        assert arch_io.std == pytest.approx(want_io.std)
    x = _small_input(lm)
    y = _run(lm, x)
    assert y.shape == (1, lm.out_channels, x.shape[-2] * p.scale, x.shape[-1] * p.scale)
    assert torch.isfinite(y).all()


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(IDT_TWINS))
def test_idt_presets_share_one_network(name):
    twin, ref = get_preset(name), get_preset("idt-rain200h")
    assert (twin.architecture, twin.kwargs, twin.params) == (ref.architecture, ref.kwargs, ref.params)
    assert (twin.task, twin.recipe.lr, twin.recipe.batch, twin.recipe.patch) == ("derain", 1e-4, 4, 128)
    assert twin.weights_file != ref.weights_file


@pytest.mark.unit
def test_fbcnn_recipe_and_its_grey_twin():
    """FBCNN options/train_fbcnn_{color,gray}.json: Adam 2e-5, batch 128, patch 96,
    MultiStepLR x0.5, L1 + 0.001 x the quality-factor L1 (QF_lossfn_weight)."""
    colour, grey = get_preset("fbcnn"), get_preset("fbcnn-gray")
    r = colour.recipe
    assert (r.optimizer, r.lr, r.batch, r.patch, r.loss, r.qf_loss) == ("adam", 2e-5, 128, 96, "l1", 0.001)
    assert r.milestones == (200_000, 400_000, 1_200_000, 1_600_000, 1_800_000) and r.gamma == 0.5
    assert (colour.task, grey.task, colour.scale) == ("jpeg", "jpeg", 1)
    assert grey.recipe == r and grey.kwargs == {**colour.kwargs, "in_nc": 1, "out_nc": 1}
    # only the first and last 3x3 convs differ: 2 fewer input and output channels, 2 fewer biases
    assert colour.params - grey.params == 2 * (9 * 64 * 2) + 2


@pytest.mark.unit
def test_idt_recipe_from_train_derain():
    # train_derain.py: Adam 1e-4, batch 4, crop 128, -SSIM, 400 epochs, MultiStepLR at
    # epochs 100/250/350 x 0.1; 1,800 Rain200H pairs = 450 batches per epoch
    r = get_preset("idt-rain200h").recipe
    assert (r.optimizer, r.lr, r.betas, r.weight_decay) == ("adam", 1e-4, (0.9, 0.999), 0.0)
    assert (r.batch, r.patch, r.loss, r.iterations) == (4, 128, "ssim", 180_000)
    assert (r.schedule, r.milestones, r.gamma) == ("multistep", (45_000, 112_500, 157_500), 0.1)
    assert get_preset("idt-spa").recipe.iterations == 400 * 159_616  # 638,464 pairs / 4


@pytest.mark.unit
def test_seeded_builds_are_reproducible():
    a = from_preset(get_preset("imdn-x4"), seed=3).net.state_dict()
    b = from_preset(get_preset("imdn-x4"), seed=3).net.state_dict()
    c = from_preset(get_preset("imdn-x4"), seed=4).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", _marked([n for n in NAMES if n not in BIG | TWINS], SLOW_PATCH))
def test_forward_at_recipe_patch(name):
    p = get_preset(name)
    lm = _built(name)
    x = torch.rand(1, lm.in_channels, p.recipe.patch, p.recipe.patch)
    y = _run(lm, x)
    assert y.shape == (1, lm.out_channels, p.recipe.patch * p.scale, p.recipe.patch * p.scale)
    assert torch.isfinite(y).all()


@pytest.mark.unit
def test_edsr_counts_frozen_meanshift_and_carries_io_range():
    net = _built("edsr-light-x4").net
    trainable = sum(q.numel() for q in net.parameters() if q.requires_grad)
    frozen = sum(q.numel() for q in net.parameters() if not q.requires_grad)
    assert (trainable, frozen) == (1_517_571, 24)
    assert tuple(net.io_range) == (0.0, 255.0)
    assert _built("edsr-light-x4").restorer.io.in_range == (0.0, 255.0)


@pytest.mark.unit
def test_swinir_light_bias_tables_explain_the_papers_897k():
    net = _built("swinir-light-x4").net
    bias = sum(
        q.numel() for k, q in net.named_parameters() if "relative_position_bias_table" in k
    )
    assert bias == 32_400
    assert OFFICIAL_PARAMS["swinir-light-x4"] - bias == 897_228
    assert "32,400" in get_preset("swinir-light-x4").description


# --------------------------------------------------------------------------- round trips


def _assert_same_outputs(a: LoadedModel, b: LoadedModel) -> None:
    x = _small_input(a)
    assert torch.equal(_run(a, x), _run(b, x))


# RealESRNet's 16.7 M RRDBNet round trip costs ~9 s on one core: ESRGAN's save/load is
# spandrel's own path, which tests/e2e/test_realsr.py runs on a tiny RRDBNet (load, retrain, write, evaluate)
@pytest.mark.parametrize("name", _marked([n for n in NAMES if n not in TWINS | {"fbcnn", "realesrnet-x4plus"}],
                                         SLOW_ROUND_TRIP))
def test_save_load_round_trip_both_formats(name, tmp_path):
    p = get_preset(name)
    lm = _built(name)
    sd = lm.file_state_dict()
    st = save_safetensors(sd, tmp_path / f"{name}.safetensors", {"preset": name})
    pth = save_like(Checkpoint(None, dict(sd)), sd, tmp_path / f"{name}.pth")
    x = _small_input(lm)
    want = _run(lm, x)  # the built model's output, once for both files
    for path in (st, pth):
        ckpt = read_checkpoint(path)
        assert set(ckpt.state_dict) == set(sd)
        back = load_checkpoint_model(path, p, p.scale)
        assert back.architecture == p.architecture and back.num_params == OFFICIAL_PARAMS[name]
        assert torch.equal(_run(back, x), want)


# --------------------------------------------------------------------------- real weights


@pytest.fixture
def weights_env(monkeypatch):
    root = shared_path("weights")
    monkeypatch.setenv("MCIR_WEIGHTS", str(root))
    return root


@pytest.mark.parametrize("name", sorted(REAL_WEIGHTS))
def test_real_weights_load_through_the_preset(name, weights_env, tmp_path):
    arch, scale, rel = REAL_WEIGHTS[name]
    p = get_preset(name)
    assert p.weights_file == rel
    lm = load_model(model=name)
    assert lm.checkpoint is not None and lm.checkpoint.path == weights_env / rel
    assert (lm.architecture, lm.scale, lm.preset.name) == (arch, scale, name)
    assert lm.num_params == OFFICIAL_PARAMS[name]
    assert lm.net.state_dict().keys() == _built(name).net.state_dict().keys()
    x = _small_input(lm)
    y = _run(lm, x)
    assert y.shape[-2:] == (x.shape[-2] * scale, x.shape[-1] * scale)
    assert torch.isfinite(y).all()
    # written back in the input's layout (IMDN keeps its `module.` prefix) and reloaded
    out = save_like(lm.checkpoint, lm.file_state_dict(), tmp_path / Path(rel).name)
    original = torch.load(weights_env / rel, map_location="cpu", weights_only=True)
    rewritten = torch.load(out, map_location="cpu", weights_only=True)
    assert list(rewritten) == list(original)
    _assert_same_outputs(lm, load_checkpoint_model(out, p, scale))


@pytest.mark.unit
def test_dctlsa_x4_by_short_name(weights_env):
    lm = load_model(model="dctlsa", scale=4)
    assert lm.checkpoint.path.name == "X4.pt" and lm.scale == 4


@pytest.mark.unit
def test_dncnn_preset_matches_what_spandrel_detects(weights_env):
    lm = load_model(model="dncnn-gray")
    assert lm.hyperparameters["act_mode"] == get_preset("dncnn-gray").kwargs["act_mode"] == "R"
    assert lm.in_channels == lm.out_channels == 1


@pytest.mark.unit
def test_missing_weights_name_the_file_and_url(monkeypatch, tmp_path):
    monkeypatch.setenv("MCIR_WEIGHTS", str(tmp_path))
    with pytest.raises(McirError) as info:
        load_model(model="dctlsa-x4")
    msg = str(info.value)
    assert "DCTLSA/X4.pt" in msg and "https://github.com/zengkun301/DCTLSA" in msg
    lm = load_model(model="dctlsa-x4", allow_random=True)
    assert lm.checkpoint is None and lm.num_params == OFFICIAL_PARAMS["dctlsa-x4"]


# --------------------------------------------------------------------------- packaging


def test_presets_ship_in_the_wheel(tmp_path):
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling is not installed (pip install hatchling), cannot build the wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
           "--no-cache-dir", "-q", "-w", str(tmp_path), str(REPO)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("mcir-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mcir_cli/presets/swinir-light-x4.toml" in names
    shipped = {n.rsplit("/", 1)[1][:-5] for n in names if n.startswith("mcir_cli/presets/")}
    assert shipped == set(OFFICIAL_PARAMS)
