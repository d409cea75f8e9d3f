"""Checkpoint I/O: wrappers, prefixes, refusing code, write-back in the input's layout."""

from __future__ import annotations

import re
from collections import OrderedDict

import pytest
import torch
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.errors import McirError
from mcir_cli.models.checkpoint import read_checkpoint, save_like, save_safetensors
from mcir_cli.models.loading import load_checkpoint_model
from tests.conftest import NeedsCode, shared_path

runner = CliRunner()


@pytest.fixture(scope="module")
def dctlsa_sd() -> dict[str, torch.Tensor]:
    return read_checkpoint(shared_path("weights", "DCTLSA", "X4.pt")).state_dict


@pytest.mark.parametrize("wrapper", ["params_ema", "params", "state_dict", "model", "net", "g_ema"])
def test_unwraps_known_wrappers_and_writes_them_back(tmp_path, dctlsa_sd, wrapper):
    path = tmp_path / "in.pth"
    torch.save({wrapper: {f"module.{k}": v for k, v in dctlsa_sd.items()}, "iter": 1000}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.wrapper_keys == (wrapper,) and ckpt.prefix == "module."
    assert ckpt.is_ema is (wrapper in ("params_ema", "g_ema"))
    assert set(ckpt.state_dict) == set(dctlsa_sd)
    out = save_like(ckpt, ckpt.state_dict, tmp_path / "out.pth")
    raw = torch.load(out, weights_only=True)
    assert set(raw) == {wrapper, "iter"} and raw["iter"] == 1000
    assert all(k.startswith("module.") for k in raw[wrapper])


@pytest.mark.unit
def test_basicsr_file_prefers_ema_and_rewrites_both(tmp_path, dctlsa_sd):
    other = {k: v + 1 if v.is_floating_point() else v for k, v in dctlsa_sd.items()}
    path = tmp_path / "basicsr.pth"
    torch.save({"params": other, "params_ema": dctlsa_sd}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.wrapper_keys == ("params_ema",) and ckpt.sibling_weight_keys == ("params",)
    assert torch.equal(ckpt.state_dict["fea_conv.weight"], dctlsa_sd["fea_conv.weight"])
    save_like(ckpt, ckpt.state_dict, tmp_path / "out.pth")
    raw = torch.load(tmp_path / "out.pth", weights_only=True)
    assert torch.equal(raw["params"]["fea_conv.weight"], raw["params_ema"]["fea_conv.weight"])


@pytest.mark.unit
def test_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": NeedsCode()}, path)
    with pytest.raises(McirError, match="never executes pickled code") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.unit
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_a_one_line_error(tmp_path, dctlsa_sd, suffix):
    path = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save(dctlsa_sd, path)
    else:
        save_safetensors(dctlsa_sd, path)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(McirError, match="truncated or corrupt|not a readable") as err:
        read_checkpoint(cut)
    assert str(cut) in str(err.value)


@pytest.mark.unit
def test_safetensors_round_trip_keeps_metadata(tmp_path, dctlsa_sd):
    path = save_safetensors(dctlsa_sd, tmp_path / "m.safetensors", {"architecture": "DCTLSA", "training": {"steps": 3}})
    ckpt = read_checkpoint(path)
    assert ckpt.format == "safetensors" and ckpt.metadata["architecture"] == "DCTLSA"
    assert ckpt.metadata["training"] == '{"steps": 3}'
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in dctlsa_sd.items())


def to_basicsr_names(key: str, num_blocks: int) -> str:
    """spandrel's old ESRGAN layout -> BasicSR's RRDBNet names (the published mapping)."""
    m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key)
    if m:
        return f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"
    fixed = {"model.0": "conv_first", f"model.1.sub.{num_blocks}": "conv_body", "model.3": "conv_up1",
             "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}
    stem, leaf = key.rsplit(".", 1)
    return f"{fixed[stem]}.{leaf}"


@pytest.mark.unit
def test_renamed_layout_is_written_back_in_the_input_names(tmp_path):
    """spandrel renames BasicSR's ESRGAN keys on load; the .pth mcir writes uses the input's."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    old = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=4).state_dict()
    basicsr = OrderedDict((to_basicsr_names(k, 2), v) for k, v in old.items())
    path = tmp_path / "RRDB_basicsr.pth"
    torch.save({"params_ema": basicsr}, path)
    loaded = load_checkpoint_model(path)
    assert loaded.architecture == "ESRGAN"
    assert set(loaded.net.state_dict()) != set(basicsr)  # spandrel renamed them
    written = loaded.file_state_dict()
    assert list(written) == list(basicsr)
    assert all(torch.equal(written[k], basicsr[k]) for k in basicsr)
    save_like(loaded.checkpoint, written, tmp_path / "out.pth")
    again = load_checkpoint_model(tmp_path / "out.pth")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(again.restorer.eval()(x), loaded.restorer.eval()(x))


@pytest.mark.unit
def test_missing_and_empty_files(tmp_path):
    with pytest.raises(McirError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(McirError, match="empty file"):
        read_checkpoint(empty)
    no_sd = tmp_path / "nosd.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 1.0}}, no_sd)
    with pytest.raises(McirError, match="no state dict found"):
        read_checkpoint(no_sd)


@pytest.mark.unit
def test_models_inspect_describes_a_checkpoint(tmp_path, dctlsa_sd):
    path = tmp_path / "wrapped.pth"
    torch.save({"params_ema": {f"module.{k}": v for k, v in dctlsa_sd.items()}}, path)
    res = runner.invoke(app, ["models", "inspect", str(path)])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "DCTLSA" in out and "x4" in out and "['params_ema'], prefix 'module.' stripped" in out
    assert "EMA copy yes" in out.replace("│", " ").replace("  ", " ") or "yes" in out


@pytest.mark.unit
def test_models_lists_presets_and_architectures():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    for name in ("swinir-light-x4", "edsr-light-x4", "nafnet-gopro-w32", "dctlsa-x4", "IMDN", "SwinIR"):
        assert name in res.output


@pytest.mark.unit
def test_unknown_preset_suggests_names():
    res = runner.invoke(app, ["evaluate", "--model", "swinir-lite", "--scale", "4", "--data", "x"])
    assert res.exit_code == 2 and "swinir-light" in res.output


@pytest.mark.unit
def test_a_file_that_is_no_checkpoint_is_not_called_a_code_pickle(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("# just some text\n")
    with pytest.raises(McirError, match="not a torch checkpoint") as err:
        read_checkpoint(path)
    assert "pickled code" not in str(err.value)


@pytest.mark.unit
def test_prefixes_are_stripped_in_every_order(tmp_path, dctlsa_sd):
    path = tmp_path / "compiled_ddp.pth"
    torch.save({f"_orig_mod.module.{k}": v for k, v in dctlsa_sd.items()}, path)
    ckpt = read_checkpoint(path)
    assert set(ckpt.state_dict) == set(dctlsa_sd) and ckpt.prefix == "_orig_mod.module."


@pytest.mark.unit
@pytest.mark.parametrize("content", [
    b"PK\x03\x04" + bytes(range(256)) * 20,  # torch's zip reader: a bare OSError(EINVAL)
    b"PK\x03\x04",
    b"PK\x03\x04" + b"\0" * 100,
])
def test_zip_garbage_is_a_one_line_error_naming_the_file(tmp_path, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(McirError, match="not a readable torch checkpoint") as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert "internal miniz error" not in msg and "Could this error message be improved" not in msg


@pytest.mark.unit
def test_an_unreadable_checkpoint_names_the_file(tmp_path, monkeypatch):
    import builtins
    import errno

    path = tmp_path / "x.pth"
    torch.save({"w": torch.zeros(1)}, path)
    real_open = builtins.open

    def eio(file, *args, **kwargs):
        if str(file) == str(path):
            raise OSError(errno.EIO, "Input/output error", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", eio)
    with pytest.raises(McirError, match=r"x\.pth: cannot read the checkpoint \(Input/output error\)"):
        read_checkpoint(path)
