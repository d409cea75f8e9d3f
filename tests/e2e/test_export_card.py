"""`mcir export` (ONNX checked in onnxruntime) and `mcir card` (Hugging Face README +
OpenModelDB entry), through the CLI, on real weights from ../shared/weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.train.config import TrainConfig
from mcir_cli.train.run import retrain
from tests.conftest import set5_crops, shared_path

runner = CliRunner()
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openmodeldb"

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
jsonschema = pytest.importorskip("jsonschema")


def _schema() -> dict:
    return json.loads((FIXTURES / "model.schema.json").read_text())


def _mcir(*args: str):
    return runner.invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------- export


def _export_ok(ckpt: Path, out: Path, *extra: str) -> str:
    r = _mcir("export", ckpt, "--onnx", out, *extra)
    assert r.exit_code == 0, r.output + (r.stderr or "")
    assert out.is_file() and not list(out.parent.glob(".*.tmp"))
    return r.stdout


def _run_onnx(path: Path, x: torch.Tensor):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})[0]


def test_export_imdn_matches_torch_at_new_sizes_and_states_its_contract(imdn, tmp_path):
    from mcir_cli.data.imageio import read_image
    from mcir_cli.models.loading import load_model

    out = tmp_path / "imdn.onnx"
    stdout = _export_ok(imdn, out)
    assert "2x27x41" in stdout and "2x45x38" in stdout and "tolerance" in stdout
    assert "opset 17" in stdout and "float32 Nx3xHxW" in stdout and "[0, 1]" in stdout
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["mcir:architecture"] == "IMDN" and meta["mcir:batch"] == "dynamic"
    assert "values in [0, 1]" in meta["mcir:io"] and len(meta["mcir:source_sha256"]) == 64
    # a size the export never saw, on another real image (Set5 LR), batch 3
    lr = read_image(shared_path("data", "sr", "Set5", "LR_bicubic", "X4", "birdx4.png"))[:, :23, :37]
    x = torch.stack([lr, lr.flip(-1), lr.flip(-2)]).contiguous()
    with torch.no_grad():
        want = load_model(imdn).restorer.eval()(x).numpy()
    got = _run_onnx(out, x)
    assert got.shape == (3, 3, 92, 148)
    assert abs(got - want).max() < 1e-4


def test_export_fp16_and_an_existing_path_is_refused(tmp_path):
    aod = shared_path("weights", "AODNet", "dehazer.pth")
    out = tmp_path / "aod.onnx"
    stdout = _export_ok(aod, out, "--fp16")
    assert "float16" in stdout and "fp16" in stdout
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    before = out.read_bytes()
    r = _mcir("export", aod, "--onnx", out)
    assert r.exit_code == 2 and "exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before
    r = _mcir("export", tmp_path / "missing.pth", "--onnx", tmp_path / "x.onnx")
    assert r.exit_code == 2 and not (tmp_path / "x.onnx").exists()


def test_export_rfdn_and_edsr(tmp_path):
    from mcir_cli.models.loading import load_model

    _export_ok(shared_path("weights", "RFDN", "RFDN_AIM.pth"), tmp_path / "rfdn.onnx")
    edsr = tmp_path / "edsr.pth"  # the edsr-light-x2 preset's network, random init, as a user's file
    torch.save(load_model(model="edsr-light-x2", allow_random=True).net.state_dict(), edsr)
    assert "EDSR x2" in _export_ok(edsr, tmp_path / "edsr.onnx")


def test_export_window_attention_models_at_sizes_off_the_window(tmp_path):
    """SwinIR (the swinir-light-x4 preset's class and settings, 1 block of depth 2 so the
    test stays small) and DCTLSA (real x4 weights): both pad to their window inside."""
    from mcir_cli.models.loading import build_network
    from mcir_cli.models.presets import get_preset

    preset = get_preset("swinir-light", 4)
    small = dataclasses.replace(preset, kwargs={**preset.kwargs, "depths": [2], "num_heads": [2], "embed_dim": 12})
    torch.manual_seed(0)
    swin = tmp_path / "swinir.pth"
    torch.save(build_network(small).state_dict(), swin)
    assert "SwinIR x4" in _export_ok(swin, tmp_path / "swinir.onnx")
    stdout = _export_ok(shared_path("weights", "DCTLSA", "X4.pt"), tmp_path / "dctlsa.onnx")
    assert "DCTLSA x4" in stdout
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "dctlsa.onnx")).metadata_props}
    # DCTLSA's window_reverse turns the batch into a Python int: batch fixed at 1, said
    assert (meta["mcir:batch"] == "fixed 1") == ("batch fixed at 1" in stdout)
    if meta["mcir:batch"] == "fixed 1":  # declared in the graph: onnxruntime refuses batch 2
        assert onnx.load(str(tmp_path / "dctlsa.onnx")).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


# --------------------------------------------------------------------------- card


@pytest.fixture(scope="module")
def run(imdn, train_dir, tmp_path_factory):
    """A real 3-step MCIR retrain of IMDN x4, validated, and a comparison with its start."""
    root = tmp_path_factory.mktemp("card")
    crops = set5_crops(root / "set5", ("baby", "bird"), 48)
    folder = retrain(TrainConfig(data=[str(train_dir)], output=str(root / "run"), checkpoint=str(imdn), iters=3,
                                 batch=1, patch=16, lr=1e-4, negative_steps=(1, 2), embedding="pixel", lam=1e-2,
                                 val=(str(crops),), val_every=0, seed=0, device="cpu")).run_dir
    cmp_json = root / "cmp.json"
    r = _mcir("compare", "--checkpoint", imdn, "--checkpoint", folder / "model.safetensors", "--data", crops,
              "--json", cmp_json, "--resamples", "200")
    assert r.exit_code == 0, r.output + (r.stderr or "")
    return {"run": folder, "cmp": cmp_json, "imdn": imdn}


def test_real_openmodeldb_entries_pass_the_schema_and_broken_ones_fail():
    from mcir_cli.train.card import OPENMODELDB_ARCH, TASK_TAGS

    ids = json.loads((FIXTURES / "ids.json").read_text())  # mcir's id tables name only what exists there
    assert set(OPENMODELDB_ARCH.values()) <= set(ids["architectures"])
    assert {t for tags in TASK_TAGS.values() for t in tags} | {"research"} <= set(ids["tags"])
    schema = _schema()
    for f in sorted(FIXTURES.glob("[0-9]*.json")):
        jsonschema.validate(json.loads(f.read_text()), schema)
    entry = json.loads((FIXTURES / "4x-dctlsa-pretrained.json").read_text())
    for broken in ({**entry, "resources": [{**entry["resources"][0], "type": "onnx"}]},  # onnx on pytorch
                   {k: v for k, v in entry.items() if k != "images"}, {**entry, "date": "27/11/2023"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_retrain_writes_a_card_that_validates(run):
    from mcir_cli._helpers.fsutil import sha256_file

    folder = run["run"]
    entry = json.loads((folder / "openmodeldb.json").read_text())
    jsonschema.validate(entry, _schema())
    ids = json.loads((FIXTURES / "ids.json").read_text())
    assert set(entry["tags"]) <= set(ids["tags"])
    assert entry["architecture"] == "IMDN" and "IMDN" not in ids["architectures"]  # spandrel's id, said so
    assert entry["trainingIterations"] == 3 and entry["trainingHRSize"] == 64 and entry["datasetSize"] == 20
    assert entry["license"] is None and entry["scale"] == 4
    by_type = {r["type"]: r for r in entry["resources"]}
    assert by_type["safetensors"]["sha256"] == sha256_file(folder / "model.safetensors")
    assert by_type["pth"]["size"] == (folder / "model.pth").stat().st_size and by_type["pth"]["urls"] == []
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\nlicense: \"unknown\"\npipeline_tag: image-to-image\n")
    assert sha256_file(run["imdn"]) in readme and "λ = 0.01" in readme and "OpenModelDB" in readme
    assert "has no entry for it" in readme and "No comparison yet" in readme


def test_card_command_adds_the_evidence_and_keeps_what_the_user_set(run, tmp_path):
    folder = run["run"]
    r = _mcir("card", folder, "--comparison", run["cmp"], "--license", "Apache-2.0", "--author", "someone")
    assert r.exit_code == 0, r.output + (r.stderr or "")
    readme = (folder / "README.md").read_text()
    cmp = json.loads(run["cmp"].read_text())
    psnr = cmp["table"]["IMDN_x4"]["set5"]["psnr"]
    assert f"| IMDN_x4 | {psnr:.2f}" in readme and "| Δ run vs IMDN_x4 |" in readme
    assert cmp["evidence"][0] in readme and cmp["conventions_text"] in readme
    assert 'license: "apache-2.0"' in readme and "metrics:\n- \"psnr\"" in readme
    r = _mcir("card", folder)  # a rewrite keeps --license, --author and the evidence
    entry = json.loads((folder / "openmodeldb.json").read_text())
    assert r.exit_code == 0 and entry["license"] == "Apache-2.0" and entry["author"] == "someone"
    assert (folder / "README.md").read_text() == readme
    jsonschema.validate(entry, _schema())


def test_a_retrain_of_a_retrained_model_inherits_its_license(run, train_dir, tmp_path):
    folder = run["run"]
    r = _mcir("card", folder, "--license", "Apache-2.0")
    assert r.exit_code == 0
    second = retrain(TrainConfig(data=[str(train_dir)], output=str(tmp_path / "again"),
                                 checkpoint=str(folder / "model.safetensors"), iters=1, batch=1, patch=16,
                                 negative_init="none", embedding="pixel", seed=0, device="cpu")).run_dir
    entry = json.loads((second / "openmodeldb.json").read_text())
    assert entry["license"] == "Apache-2.0" and entry["trainingIterations"] == 1
    assert "plain fine-tuning" in entry["description"]


def test_card_refuses_what_is_not_a_run(run, tmp_path):
    r = _mcir("card", tmp_path)
    assert r.exit_code == 2 and "not a run folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    r = _mcir("card", run["run"], "--comparison", run["run"] / "config.json")
    assert r.exit_code == 2 and "not a comparison JSON" in r.stderr
    # a comparison of other models (here: the run's weights replaced by a stranger's digest)
    other = json.loads(run["cmp"].read_text())
    other["models"] = [{**m, "sha256": "0" * 64} for m in other["models"]]
    (tmp_path / "other.json").write_text(json.dumps(other))
    before = {n: (run["run"] / n).read_bytes() for n in ("README.md", "openmodeldb.json")}
    r = _mcir("card", run["run"], "--comparison", tmp_path / "other.json")
    assert r.exit_code == 2 and "does not score this run's model.safetensors" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert {n: (run["run"] / n).read_bytes() for n in before} == before
    r = _mcir("card", run["run"], "--license", "NOT-A-LICENSE")  # OpenModelDB wants SPDX
    assert r.exit_code == 2 and "not an SPDX license expression" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert {n: (run["run"] / n).read_bytes() for n in before} == before


def test_license_is_spelled_as_spdx_does():
    from mcir_cli.train.card import spdx_license

    assert spdx_license("apache-2.0") == "Apache-2.0" and spdx_license("mit OR cc-by-4.0") == "MIT OR CC-BY-4.0"

