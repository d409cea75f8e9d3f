"""The model card beside a retrained model: `README.md` in Hugging Face's model-card form and
`openmodeldb.json`, one entry in OpenModelDB's schema, both from the run folder's own
records (config.json, log.jsonl, val.json, the weights) and optionally a `mcir compare
--json` comparison for the evidence table.

OpenModelDB's schema is `src/lib/schema.ts` of github.com/OpenModelDB/open-model-database
at commit SCHEMA_COMMIT (read 2026-12-03); architecture ids come from its
`data/architectures.json` and tag ids from `data/tags.json` at the same commit.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcir_cli._helpers.fsutil import atomic_write_text, sha256_file, write_json
from mcir_cli.data.datasets import discover_all
from mcir_cli.errors import McirError
from mcir_cli.models.checkpoint import read_checkpoint
from mcir_cli.models.loading import load_checkpoint_model

log = logging.getLogger("mcir")

SCHEMA_COMMIT = "782aac088bd83dd3fc438a42eb0c3868dc559110"
# spandrel/mcir architecture id -> OpenModelDB's id (data/architectures.json @ SCHEMA_COMMIT)
OPENMODELDB_ARCH = {
    "ATD": "atd", "CRAFT": "craft", "DAT": "dat", "DCTLSA": "dctlsa", "DITN": "ditn", "DRCT": "drct",
    "EDSR": "edsr", "ESRGAN": "esrgan", "GRL": "grl", "HAT": "hat", "MoSR": "mosr", "OmniSR": "omnisr",
    "RCAN": "rcan", "RealCUGAN": "real-cugan", "RealPLKSR": "realplksr", "RGT": "rgt", "SPAN": "span",
    "SRFormer": "srformer", "SwinIR": "swinir", "Compact": "compact", "SPSR": "spsr",
}
# mcir task -> OpenModelDB tag ids (data/tags.json @ SCHEMA_COMMIT)
TASK_TAGS = {"sr": ["general-upscaler", "photo"], "dehaze": ["restoration", "photo"],
             "derain": ["restoration", "photo"], "deblur": ["deblur", "photo"], "denoise": ["denoise", "photo"]}
HF_TASK_TAGS = {"sr": "super-resolution", "dehaze": "dehazing", "derain": "deraining", "deblur": "deblurring",
                "denoise": "denoising"}
CARD_FILES = ("README.md", "openmodeldb.json")
COMPARISON_FILE = "card-comparison.json"  # the comparison a card shows, copied into the run folder


@dataclass
class RunFacts:
    """What a run folder says about its model, read once for both card files."""

    root: Path
    info: dict[str, Any]
    loaded: Any
    steps: int
    best: dict[str, Any] | None
    val_conventions: str
    resources: list[dict[str, Any]]
    date: str

    @property
    def cfg(self) -> dict[str, Any]:
        return self.info["config"]


def _steps(loaded: Any) -> int:
    """The steps behind the final weights, from model.safetensors' metadata (`training`,
    written by `validation.weights_metadata`)."""
    meta = (loaded.checkpoint.metadata or {}) if loaded.checkpoint is not None else {}
    try:
        return int(json.loads(meta.get("training", "{}"))["steps"])
    except (ValueError, KeyError, TypeError):
        raise McirError("model.safetensors has no training metadata of mcir retrain", loaded.checkpoint.path) from None


def _resources(root: Path) -> list[dict[str, Any]]:
    """The final weights (and an ONNX export in the folder): OpenModelDB resources, urls
    empty until the files are uploaded."""
    out = []
    for name, kind, platform in (("model.safetensors", "safetensors", "pytorch"), ("model.pth", "pth", "pytorch")):
        if (root / name).is_file():
            out.append({"platform": platform, "type": kind, "size": (root / name).stat().st_size,
                        "sha256": sha256_file(root / name), "urls": []})
    for onnx in sorted(root.glob("*.onnx")):
        out.append({"platform": "onnx", "type": "onnx", "size": onnx.stat().st_size,
                    "sha256": sha256_file(onnx), "urls": []})
    return out


def read_run(run: str | Path) -> RunFacts:
    """The run folder's facts; one line when `run` is not a finished run of mcir retrain."""
    root = Path(run)
    config = root / "config.json"
    try:
        info = json.loads(config.read_text())
        info["config"]["iters"], info["model"]["architecture"]  # noqa: B018 - the keys a run folder has
    except (OSError, ValueError, KeyError, TypeError):
        raise McirError("not a run folder of mcir retrain (no readable config.json)", root) from None
    weights = root / "model.safetensors"
    if not weights.is_file():
        raise McirError("the run has no model.safetensors yet (unfinished: --resume it first)", root)
    val = root / "val.json"
    history: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):  # no or a damaged val.json: the card says nothing of it
        history = json.loads(val.read_text()) if val.is_file() else {}
    best, conv = history.get("best"), (history.get("conventions") or {}).get("description", "")
    date = datetime.date.fromtimestamp(weights.stat().st_mtime).isoformat()
    loaded = load_checkpoint_model(weights)
    return RunFacts(root, info, loaded, _steps(loaded), best, conv, _resources(root), date)


def _dataset_size(facts: RunFacts) -> int | None:
    """Training pairs in the --data folders, when they are still there."""
    cfg = facts.cfg
    try:
        return sum(len(d) for d in discover_all(cfg["data"], cfg.get("scale") or facts.loaded.scale,
                                                 cfg.get("task") or facts.info.get("task")))
    except (McirError, OSError):
        return None


def _start(facts: RunFacts) -> tuple[str, str | None]:
    model = facts.info["model"]
    path = model.get("checkpoint_path")
    name = Path(path).name if path else f"random initialisation of preset {facts.cfg.get('model')}"
    return name, model.get("checkpoint_sha256")


def _method(cfg: dict[str, Any]) -> str:
    if cfg["negative_init"] == "none":
        return "plain fine-tuning (no negatives, the baseline MCIR is compared with)"
    steps = "/".join(str(s) for s in cfg["negative_steps"])
    lam = "auto (steered to the contrast-ratio band)" if cfg.get("lam_auto") else f"{cfg['lam']:g}"
    return (f"MCIR (model contrastive learning, AAAI 2024): L = L_rec - λ·L_neg, λ = {lam}, "
            f"{len(cfg['negative_steps'])} EMA negatives (init {cfg['negative_init']}, w = "
            f"{cfg['negative_weight']:g}, updated every {steps} steps)")


def openmodeldb_entry(facts: RunFacts, *, author: str, license: str | None,
                      pretrained_id: str | None = None) -> dict[str, Any]:
    """One OpenModelDB model entry (schema.ts `Model` @ SCHEMA_COMMIT); its id is the
    file name it is stored under there, which the user picks when submitting."""
    cfg, loaded = facts.cfg, facts.loaded
    task = facts.info.get("task") or loaded.task or "sr"
    start, sha = _start(facts)
    arch = OPENMODELDB_ARCH.get(loaded.architecture, loaded.architecture)
    entry: dict[str, Any] = {
        "name": facts.root.name, "author": author, "license": license,
        "tags": [*TASK_TAGS.get(task, ["restoration"]), "research"],
        "description": (f"{loaded.architecture} x{loaded.scale} retrained from {start}"
                        + (f" (sha256 {sha})" if sha else "") + f" by mcir: {_method(cfg)}; "
                        f"{facts.steps} steps on {', '.join(Path(d).name for d in cfg['data'])}."),
        "date": facts.date, "architecture": arch, "size": None, "scale": loaded.scale,
        "inputChannels": loaded.in_channels, "outputChannels": loaded.out_channels,
        "resources": facts.resources, "images": [],
        "trainingIterations": facts.steps, "trainingBatchSize": int(facts.info.get("global_batch", cfg["batch"])),
        "trainingHRSize": int(cfg["patch"]) * loaded.scale,
        "trainingOTF": task == "denoise" and cfg.get("noise_sigma") is not None,
        "dataset": ", ".join(Path(d).name for d in cfg["data"]),
    }
    size = _dataset_size(facts)
    if size is not None:
        entry["datasetSize"] = size
    if pretrained_id:
        entry["pretrainedModelG"] = pretrained_id
    return entry


def _yaml_list(key: str, items: list[str]) -> str:
    return f"{key}:\n" + "".join(f"- {json.dumps(i)}\n" for i in items) if items else ""


def _front_matter(facts: RunFacts, entry: dict[str, Any], comparison: dict[str, Any] | None) -> str:
    """Hugging Face model-card metadata (YAML; JSON strings are valid YAML scalars)."""
    task = facts.info.get("task") or "sr"
    lic = (entry["license"] or "unknown").lower()
    tags = ["mcir", "image-restoration", HF_TASK_TAGS.get(task, task), facts.loaded.architecture, "spandrel", "pytorch"]
    if any(r["type"] == "onnx" for r in entry["resources"]):
        tags.append("onnx")
    datasets = [Path(d).name for d in facts.cfg["data"]]
    metrics = ["psnr", "ssim"] if comparison or facts.best else []
    return ("---\n" + f"license: {json.dumps(lic)}\n" + "pipeline_tag: image-to-image\n"
            + _yaml_list("tags", tags) + _yaml_list("datasets", datasets) + _yaml_list("metrics", metrics) + "---\n")


def _training_rows(facts: RunFacts, entry: dict[str, Any]) -> list[tuple[str, str]]:
    cfg = facts.cfg
    start, sha = _start(facts)
    lr = f"{cfg['lr']:g} ({cfg['optimizer']}, {cfg['schedule']})"
    return [
        ("start checkpoint", f"`{start}`" + (f", sha256 `{sha}`" if sha else "")),
        ("method", _method(cfg)),
        ("data", ", ".join(f"`{Path(d).name}`" for d in cfg["data"])
         + (f" ({entry['datasetSize']} training pairs)" if "datasetSize" in entry else "")),
        ("steps", f"{facts.steps} of {cfg['iters']}, global batch {entry['trainingBatchSize']}, "
                  f"LQ patch {cfg['patch']} (HR {entry['trainingHRSize']})"),
        ("recipe", (f"preset `{cfg['model']}`, " if cfg.get("model") else "")
         + f"loss {cfg['loss']}, lr {lr}, EMA of the weights {cfg['ema_decay']:g}, seed {cfg['seed']}"
         + (f"; {cfg['recipe_note']}" if cfg.get("recipe_note") else "")),
        ("SPN embedding", str(facts.info.get("embedding", cfg.get("embedding")))),
        ("I/O", "images in [0, 1] through mcir (`mcir_cli.models.loading.Restorer` maps the network's own range: "
                f"{json.dumps(facts.info['model'].get('io'))})"),
    ]


def _evidence(comparison: dict[str, Any]) -> str:
    """The comparison's table (PSNR/SSIM per dataset and model, Δ vs the baseline) and its
    evidence sentences, as `mcir compare --json` wrote them."""
    labels = list(comparison["table"])
    cols = [c for c in next(iter(comparison["table"].values()))]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for lab in labels:
        row = comparison["table"][lab]
        lines.append(f"| {lab} | " + " | ".join(f"{row[c]['psnr']:.2f} / {row[c]['ssim']:.4f}" for c in cols) + " |")
    for lab, row in comparison.get("deltas", {}).items():
        lines.append(f"| Δ {lab} vs {comparison['baseline']} | "
                     + " | ".join(f"{row[c]['psnr']:+.2f} / {row[c]['ssim']:+.4f}" for c in cols) + " |")
    conv = comparison.get("conventions_text", "")
    return ("\n".join(lines) + f"\n\nPSNR (dB) / SSIM, {conv}.\n\n"
            + "".join(f"- {e}\n" for e in comparison.get("evidence", [])))


def model_card(facts: RunFacts, entry: dict[str, Any], comparison: dict[str, Any] | None) -> str:
    """README.md: front matter, what the model is, how it was trained, the evidence."""
    loaded, arch = facts.loaded, entry["architecture"]
    arch_note = (f"OpenModelDB architecture id `{arch}`" if loaded.architecture in OPENMODELDB_ARCH else
                 f"`{arch}` is spandrel's architecture id: OpenModelDB (data/architectures.json at "
                 f"{SCHEMA_COMMIT[:7]}) has no entry for it")
    rows = "".join(f"| {k} | {v} |\n" for k, v in _training_rows(facts, entry))
    files = "".join(f"| `{r['type']}` | {r['size']:,} | `{r['sha256']}` |\n" for r in entry["resources"])
    val = (f"Validation during training (the run's --val, {facts.val_conventions}): best "
           f"{facts.best['psnr']:.2f} dB at step {facts.best['step']}.\n\n" if facts.best else "")
    if comparison is not None:
        evidence = f"## Evaluation\n\nFrom `{COMPARISON_FILE}` beside this file (`mcir compare --json`):\n\n" + _evidence(comparison)
    else:
        evidence = ("## Evaluation\n\nNo comparison yet: run `mcir compare --checkpoint START --checkpoint "
                    f"{facts.root.name}/model.safetensors --data BENCH/ --json cmp.json`, then "
                    f"`mcir card {facts.root.name} --comparison cmp.json`.\n")
    return (_front_matter(facts, entry, comparison)
            + f"\n# {entry['name']}\n\n{entry['description']}\n\n"
            + f"{loaded.architecture} ({arch_note}), x{loaded.scale}, {loaded.in_channels} -> "
            + f"{loaded.out_channels} channels, {loaded.num_params:,} parameters. License: "
            + f"{entry['license'] or 'unknown (the start checkpoint declares none known to mcir; set it with mcir card --license)'}.\n\n"
            + f"## Training\n\n| | |\n|---|---|\n{rows}\n{val}"
            + f"## Files\n\n| type | bytes | sha256 |\n|---|---:|---|\n{files}\n" + evidence
            + "\n`openmodeldb.json` beside this file is the model's OpenModelDB entry (schema "
            + f"`src/lib/schema.ts` at {SCHEMA_COMMIT}); fill in `urls` after uploading.\n")


def _previous(root: Path) -> dict[str, Any]:
    """The card's earlier openmodeldb.json: what a user set there (author, license,
    pretrainedModelG) survives a rewrite."""
    try:
        old = json.loads((root / "openmodeldb.json").read_text())
        return old if isinstance(old, dict) else {}
    except (OSError, ValueError):
        return {}


def _start_license(facts: RunFacts) -> str | None:
    """The start checkpoint's license, where it says one: a `license` in its safetensors
    metadata, or the card of the mcir run it came from (openmodeldb.json beside it)."""
    path = facts.info["model"].get("checkpoint_path")
    if not path or not Path(path).is_file():
        return None
    if Path(path).suffix == ".safetensors":
        with contextlib.suppress(McirError, OSError):
            stated = read_checkpoint(path).metadata.get("license")
            if stated:
                return stated
    return _previous(Path(path).parent).get("license")


def _load_comparison(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        data["table"], data["baseline"]  # noqa: B018 - what a comparison JSON has
    except (OSError, ValueError, KeyError, TypeError):
        raise McirError("not a comparison JSON of mcir compare --json", path) from None
    return data


def _shows_this_model(comp: dict[str, Any], root: Path) -> bool:
    """Whether a comparison scored this run's final weights: a model card's evidence must be
    about the model it describes (matched by sha256, as `mcir compare --json` records it)."""
    digest = sha256_file(root / "model.safetensors")
    models = comp.get("models") if isinstance(comp.get("models"), list) else []
    return any(isinstance(m, dict) and m.get("sha256") == digest for m in models)


def spdx_license(text: str) -> str:
    """`--license` as OpenModelDB wants it: an SPDX expression, spelled canonically
    (packaging's SPDX list: "apache-2.0" -> "Apache-2.0"); anything else is refused."""
    from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression

    try:
        return str(canonicalize_license_expression(text))
    except InvalidLicenseExpression as exc:
        raise McirError(f"--license {text!r} is not an SPDX license expression ({exc}); e.g. Apache-2.0, MIT, "
                        "CC-BY-NC-4.0 (https://spdx.org/licenses/)") from None


def write_card(run: str | Path, comparison: str | Path | None = None, author: str | None = None,
               license: str | None = None, pretrained_id: str | None = None) -> dict[str, Path]:
    """Write (or rewrite) README.md and openmodeldb.json in a run folder; a comparison
    given once is copied there (COMPARISON_FILE) and shown by every later rewrite."""
    license = spdx_license(license) if license else None
    facts = read_run(run)
    kept = facts.root / COMPARISON_FILE
    comp = _load_comparison(Path(comparison)) if comparison else (_load_comparison(kept) if kept.is_file() else None)
    if comp is not None and not _shows_this_model(comp, facts.root):
        if comparison:
            raise McirError("the comparison does not score this run's model.safetensors (no model in it "
                            "has its sha256): compare with --checkpoint RUN/model.safetensors first",
                            Path(comparison))
        log.warning("%s scores other weights than this run's model.safetensors (trained further "
                    "since?): the card shows no evaluation until a new --comparison", kept)
        comp = None
    old = _previous(facts.root)
    entry = openmodeldb_entry(facts, author=author or old.get("author") or getpass.getuser(),
                              license=license or old.get("license") or _start_license(facts),
                              pretrained_id=pretrained_id or old.get("pretrainedModelG"))
    readme = model_card(facts, entry, comp)
    paths = {"openmodeldb.json": facts.root / "openmodeldb.json", "README.md": facts.root / "README.md"}
    if comparison:  # kept beside the card: a later rewrite keeps the evidence
        write_json(kept, comp)
    write_json(paths["openmodeldb.json"], entry, indent=4, ensure_ascii=False)
    atomic_write_text(paths["README.md"], readme)
    return paths
