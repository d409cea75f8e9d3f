"""`mcir study`: the evidence, as a command. From one start checkpoint (fine-tuning) or one
random initialisation per seed (`from_scratch`, a preset's recipe) and one training folder,
K seeds of plain training and of MCIR (and chosen variants) at equal steps and identical
data order, each evaluated on held-out benchmark folders; resumable arm by arm.

A study folder holds `plan.json` (what was asked: a resume must ask the same),
`init/s<seed>.safetensors` (from scratch: every arm of a seed starts from it),
`runs/<arm>-s<seed>/` (ordinary run folders), `results/<arm>-s<seed>.json` and
`results/start.json` or `results/start-s<seed>.json` (ordinary `mcir evaluate` results,
plus the unit's `training` record: steps, collapses), `units/` (each unit's lock and claim
log: study_units.py, which runs the units, also sharded over processes and machines;
study_submit.py hands them to Slurm), then `study.json`, `study.md` and `report.html`.

One rule for every arm: a unit's first collapse stops it (the guard rolls back to the last
good weights, which are scored), and the unit is reported and left out of the Δ statistics;
no arm goes on at a halved lr or λ that its partner never had."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcir_cli._helpers.fsutil import atomic_write_text, writable_target, write_json
from mcir_cli.compare.study_results import delta_matrix, run_name, summarise, to_markdown, validation_curves
from mcir_cli.data.datasets import overlapping
from mcir_cli.data.jpeg import benchmark_qualities
from mcir_cli.errors import McirError
from mcir_cli.evaluate.benchmarks import Scoring, evaluate_labelled
from mcir_cli.losses.embeddings import make_embedding
from mcir_cli.models.checkpoint import save_safetensors
from mcir_cli.models.loading import load_model
from mcir_cli.models.presets import lam_key
from mcir_cli.render.report import study_report, write_report
from mcir_cli.train.config import TrainConfig, absolute, load_run_config, make_config, parse_steps
from mcir_cli.train.run import retrain

# built-in arms: what `--arm NAME` means without "=" settings
BUILTIN_ARMS: dict[str, dict[str, Any]] = {
    "plain": {"negative_init": "none"},  # the baseline every other arm is compared with
    "mcir": {},  # mcir's defaults (the authors' mix init, the paper's periods)
    "mcir-paper": {"negative_init": "mix", "negative_steps": "paper"},  # the same, whatever the defaults become
    "mcir-fitted": {"negative_init": "copy", "negative_steps": "auto"},  # copied negatives, periods fitted to the run
    "mcir-copy": {"negative_init": "copy"},
}
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_PER_ARM = {"negative_init", "negative_steps", "negative_weight", "negative_mix", "lam", "lam_auto", "embedding",
            "amp", "loss", "lr", "ema_decay"}

OnEvent = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class Arm:
    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items()) or "mcir defaults"


def _value(arm: str, key: str, text: str) -> Any:
    if key == "negative_steps":
        try:
            return parse_steps(text.replace("/", ","))
        except McirError:
            raise McirError(f"--arm {arm}: negative_steps={text!r} is not auto, paper or a list such as 100/500") from None
    if key == "lam_auto":
        if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise McirError(f"--arm {arm}: lam_auto={text!r} is not true or false")
        return text.lower() in ("1", "true", "yes", "on")
    if key in ("negative_init", "embedding", "amp", "loss"):
        return text
    try:
        return float(text)
    except ValueError:
        raise McirError(f"--arm {arm}: {key}={text!r} is not a number") from None


def parse_arm(text: str) -> Arm:
    """'plain', 'mcir', 'mcir-paper', ... or 'NAME:key=value,key=value' (keys: TrainConfig
    fields that differ between arms, e.g. lam=1e-3,negative_init=mix,negative_steps=100/500)."""
    name, _, spec = text.partition(":")
    name = name.strip()
    if not name or "/" in name or name.startswith("."):
        raise McirError(f"--arm needs a plain name (got {text!r})")
    if not spec:
        if name not in BUILTIN_ARMS:
            raise McirError(f"--arm {name!r} is not built in ({', '.join(BUILTIN_ARMS)}); "
                            "give settings as NAME:key=value,...")
        return Arm(name, dict(BUILTIN_ARMS[name]))
    settings: dict[str, Any] = {}
    for item in spec.split(","):
        key, eq, val = item.partition("=")
        key = key.strip().replace("-", "_")
        key = lam_key(key)
        if not eq or key not in _PER_ARM:
            raise McirError(f"--arm {name}: {item!r} is not key=value with a key among {', '.join(sorted(_PER_ARM))}")
        if key in settings:
            raise McirError(f"--arm {name}: {key} is given twice")
        settings[key] = _value(name, key, val.strip())
    return Arm(name, settings)


@dataclass
class StudyPlan:
    """What a study runs; saved as plan.json, and a resume must ask for the same."""

    output: str
    data: list[str]
    benchmarks: list[str]
    checkpoint: str | None = None
    model: str | None = None
    scale: int | None = None
    arms: list[Arm] = field(default_factory=lambda: [parse_arm("plain"), parse_arm("mcir")])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    iters: int = 1000
    common: dict[str, Any] = field(default_factory=dict)  # make_config overrides for every arm
    device: str = "auto"
    from_scratch: bool = False  # a preset's recipe from one random initialisation per seed
    val_every: int = 0  # > 0: every run scores `val` every this many steps (the curves)
    val: list[str] = field(default_factory=list)  # the curves' folders (empty: the benchmarks)

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if "plain" not in names:
            raise McirError("a study needs the 'plain' arm: every other arm is compared with it")
        if len(set(names)) != len(names) or len(names) < 2:
            raise McirError(f"--arm names must be distinct, plain and at least one more (got {names})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise McirError(f"--seeds must be distinct integers (got {self.seeds})")
        if self.from_scratch and not self.model:
            raise McirError("--from-scratch needs --model PRESET: its recipe and architecture")
        if self.from_scratch and self.checkpoint:
            raise McirError("--from-scratch starts every seed from a random initialisation: drop --checkpoint")
        if self.val_every < 0 or self.val_every > self.iters:
            raise McirError(f"--val-every must be between 0 and --iters {self.iters} (got {self.val_every})")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arms"] = [{"name": a.name, "settings": a.settings} for a in self.arms]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StudyPlan:
        """A plan from plan.json; keys it does not know (the recipe note) are left out and
        keys an older plan.json lacks take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d["arms"] = [Arm(a["name"], a["settings"]) for a in d["arms"]]
        return cls(**d)

    def run_name(self, arm: Arm | str, seed: int) -> str:
        """The unit of `arm` (or the arm of that name) with `seed`: its run folder,
        results file and row in study.json (`study_results.run_name`)."""
        return run_name(arm.name if isinstance(arm, Arm) else arm, seed)

    def start_name(self, seed: int) -> str:
        """The table's start row: the pretrained model, or each seed's initialisation."""
        return self.run_name("start", seed) if self.from_scratch else "start"

    def init_path(self, seed: int) -> Path:
        return Path(self.output) / "init" / f"s{seed}.safetensors"

    def config(self, arm: Arm, seed: int) -> TrainConfig:
        root = Path(self.output)
        overrides = {**self.common, **arm.settings, "seed": seed, "iters": self.iters, "device": self.device,
                     "max_collapses": 1}  # the study's one rule: a collapse stops the unit (see the module)
        if self.val_every:
            overrides.update(val=tuple(self.val or self.benchmarks), val_every=self.val_every)
        start = self.checkpoint
        if self.from_scratch:
            start, overrides["allow_random_init"] = str(self.init_path(seed)), True
        return make_config(self.data, root / "runs" / self.run_name(arm, seed), checkpoint=start,
                           model=self.model, scale=self.scale, **overrides)

    def recipe_note(self) -> str:
        """How the runs train (the preset's recipe, its schedule scaled to --iters), for
        plan.json, study.md and the report."""
        return self.config(self.arms[0], self.seeds[0]).recipe_note


def _check_same_plan(plan: StudyPlan, path: Path) -> None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise McirError(f"plan.json is damaged ({type(exc).__name__})", path) from None
    try:
        saved = json.loads(json.dumps(StudyPlan.from_json(saved).to_json()))
    except (KeyError, TypeError, McirError):
        saved = {}
    ours = json.loads(json.dumps(plan.to_json()))
    if saved != ours:
        diff = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
        raise McirError(f"this study folder was started with other settings ({', '.join(diff)} differ); "
                        "continue it with the same flags, or choose a new --output", path)


def evaluate_unit(plan: StudyPlan, weights: str | Path | None, label: str, out: Path,
              training: dict[str, Any] | None = None) -> dict[str, Any]:
    loaded = load_model(weights, plan.model, plan.scale, res_scale=plan.common.get("res_scale"))
    scoring = Scoring(device=plan.device, task=plan.common.get("task"),
                      jpeg_quality=benchmark_qualities(plan.common.get("jpeg_quality")))
    return evaluate_labelled(loaded, plan.benchmarks, scoring, label, out=out,
                             extra={"training": training} if training is not None else None)


def write_init(plan: StudyPlan, seed: int) -> Path:
    """The seed's random initialisation, written once: every arm of the seed starts from
    these very weights."""
    path = plan.init_path(seed)
    if not path.exists():
        loaded = load_model(None, plan.model, plan.scale, allow_random=True, seed=seed)
        save_safetensors(loaded.net.state_dict(), path, {"mcir_init": f"{plan.model} seed {seed}"})
    return path


def _stopped_run(run: Path) -> dict[str, Any] | None:
    """The `end` record of a run that a collapse stopped before its --iters: a resume of
    the study must score it as it is, not train it on. A run stopped by a signal (Ctrl-C,
    SIGTERM, a preemption) is not one: it is resumed."""
    log_path = run / "log.jsonl"
    if not log_path.exists():
        return None
    ends = [r for r in map(json.loads, log_path.read_text().splitlines()) if r.get("event") == "end"]
    if not ends or not ends[-1].get("stopped_early"):
        return None
    # logs from before the "stop" field: a signal's stop says how to continue
    signalled = ends[-1].get("stop", "signal" if "continue with --resume" in ends[-1]["stopped_early"] else None)
    return None if signalled == "signal" else ends[-1]


class UnitStopped(KeyboardInterrupt):
    """A unit's run stopped by a signal (Ctrl-C, SIGTERM, a scheduler's preemption): its
    state is saved and a resume continues it bit-exactly."""

    def __init__(self, unit: str, signal: str | None, step: int) -> None:
        super().__init__(f"{unit}: stopped by {signal or 'a signal'} at step {step}, state saved")
        self.unit, self.signal, self.step = unit, signal, step


def train_unit(plan: StudyPlan, arm: Arm, seed: int, on_step: Callable[[int], None] | None,
           preempt_signals: tuple[int, ...] = ()) -> tuple[Path, dict[str, Any]]:
    """The arm's run folder, trained to plan.iters (a new run, a resume of an interrupted
    one, or a finished one as it is), and its training record."""
    cfg = plan.config(arm, seed)
    run = Path(cfg.output)
    callback = (lambda s: on_step(s.step)) if on_step else None
    stopped = _stopped_run(run)
    if stopped is not None:
        return run, {"steps": stopped["step"], "iters": plan.iters, "collapses": stopped.get("collapses", 0),
                     "stopped": stopped["stopped_early"]}
    resume = (run / "config.json").exists()
    result = retrain(load_run_config(run) if resume else cfg, on_step=callback, resume=resume,
                     preempt_signals=preempt_signals)
    if result.stop_kind == "signal":
        raise UnitStopped(plan.run_name(arm, seed), result.stop_signal, result.steps)
    return run, {"steps": result.steps, "iters": plan.iters, "collapses": result.collapses,
                 "stopped": result.stopped_early}


def create_study(plan: StudyPlan) -> None:
    """A new study folder: plan.json (with the recipe note) and results/; the plan is
    checked first, nothing is written when it is wrong (`--plan-only` stops here)."""
    root = Path(plan.output)
    check_plan(plan)  # bad input is found before anything is written or trained
    if root.exists():
        raise McirError("study folder exists; continue it with --resume or choose a new --output", root)
    writable_target(root, "study folder")
    (root / "results").mkdir(parents=True)
    plan_json = {**plan.to_json(), "recipe": plan.recipe_note()}
    write_json(root / "plan.json", plan_json)


def open_study(plan: StudyPlan) -> None:
    """An existing study folder, to continue: its plan.json must be this plan."""
    root = Path(plan.output)
    check_plan(plan)
    if not (root / "plan.json").exists():
        raise McirError("not a study folder (no plan.json)", root)
    writable_target(root / "results", "study folder")
    _check_same_plan(plan, root / "plan.json")


def run_study(plan: StudyPlan, on_event: OnEvent | None = None, on_step: Callable[[str, int], None] | None = None,
              resume: bool = False) -> dict[str, Any]:
    """Run every unit (start rows, then each arm x seed) not yet evaluated, then summarise.
    `resume` continues a study folder (finished units are kept as they are); units that
    other processes hold (`mcir study --shard`) are waited for, or taken up if they die."""
    from mcir_cli.workflows.study_units import work  # lazy: cycle, study_units imports study

    (open_study if resume else create_study)(plan)
    try:
        summary = work(plan, wait=True, on_event=on_event, on_step=on_step).summary
    except McirError:
        if not resume:
            _remove_if_untrained(plan)
        raise
    if summary is None:  # pragma: no cover - every unit was run here or waited for
        raise RuntimeError("a study unit is unfinished after waiting for it")
    if on_event:
        total = len(plan.arms) * len(plan.seeds) + 1
        on_event("summary", total, total)
    return summary


def _remove_if_untrained(plan: StudyPlan) -> None:
    """A new study that stopped on bad input before any arm finished (an empty benchmark
    folder is found when the start row is scored) leaves nothing behind: the folder is
    the one this call made, so the same command can be run again once the input is fixed."""
    import shutil

    root = Path(plan.output)
    names = {plan.run_name(arm, seed) for arm in plan.arms for seed in plan.seeds}
    if not any((root / "results" / f"{n}.json").exists() for n in names):
        shutil.rmtree(root, ignore_errors=True)


def write_summary(plan: StudyPlan) -> dict[str, Any]:
    """study.json, study.md and report.html from every unit's result (atomic writes; the
    caller holds the summary lock when other processes may finish at the same time)."""
    root = Path(plan.output)
    results = {p.stem: json.loads(p.read_text()) for p in sorted((root / "results").glob("*.json"))}
    runs = {plan.run_name(arm, seed): Path(plan.config(arm, seed).output) for arm in plan.arms for seed in plan.seeds}
    summary = summarise(plan, results, validation_curves(plan, runs) if plan.val_every else None)
    write_json(root / "study.json", summary)
    atomic_write_text(root / "study.md", to_markdown(summary))
    _write_report(plan, summary, results, runs, root / "report.html")
    return summary


def _write_report(plan: StudyPlan, summary: dict[str, Any], results: dict[str, Any], runs: dict[str, Path],
                  path: Path) -> None:
    """report.html: the table, each arm's Δ vs plain with per-image charts (each image's
    Δ averaged over the seeds whose units both finished), and every run's training curves."""
    per_image: dict[str, dict[str, tuple[list[str], list[float]]]] = {}
    for arm, info in summary["deltas"].items():
        for d in info["datasets"] if info["seeds_used"] else ():
            if d in summary["datasets"]:  # not "all images"
                mat, names = delta_matrix(results, arm, info["seeds_used"], d)
                per_image.setdefault(arm, {})[d] = (names, mat.mean(axis=0).tolist())
    write_report(path, study_report(summary, per_image, runs))


def check_plan(plan: StudyPlan) -> None:
    """Every folder there and every arm's configuration valid, before any work."""
    for flag, paths in (("--data", plan.data), ("--benchmark", plan.benchmarks), ("--val", plan.val)):
        for p in paths:
            if not Path(p).exists():
                raise McirError(f"{flag}: folder not found", p)
    if plan.checkpoint and not Path(plan.checkpoint).is_file():
        raise McirError("--checkpoint: file not found", plan.checkpoint)
    for train, bench in overlapping(plan.data, plan.benchmarks):  # the verdict is about held-out images
        raise McirError(f"--benchmark overlaps --data {train}: a study scores held-out images; give a "
                        "benchmark folder that is not (part of) the training data", bench)
    embeddings: set[tuple[Any, ...]] = set()
    for arm in plan.arms:
        try:
            cfg = plan.config(arm, plan.seeds[0])
        except McirError as exc:
            raise McirError(f"--arm {arm.name}: {exc}") from None
        if cfg.negative_init != "none":
            embeddings.add((cfg.embedding, cfg.embedding_weights, cfg.embedding_init))
    for name, weights, init in sorted(embeddings, key=str):  # offline without VGG weights: now, not after an arm
        _check_embedding(name, weights, init)


def _check_embedding(name: str, weights: str | None, init: str) -> None:
    """The SPN embedding can be built (offline, the pretrained VGG needs its weights)."""
    make_embedding(name, weights, init, 0)


def load_plan(root: str | Path) -> StudyPlan:
    """The plan of an existing study folder (for `mcir study --resume DIR`)."""
    path = Path(root) / "plan.json"
    if not path.exists():
        raise McirError("not a study folder (no plan.json)", Path(root))
    try:
        plan = StudyPlan.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise McirError(f"plan.json is damaged ({type(exc).__name__})", path) from None
    if not _same_folder(plan.output, root):  # else the study's writes would go to the other folder
        raise McirError(f"plan.json belongs to the study folder {plan.output}, not this one (a moved or copied "
                        "study: its paths must be those every machine sees)", path)
    return plan


def _same_folder(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).samefile(b)
    except OSError:
        return False


def plan_paths(output: str | Path, data: list[str | Path], benchmarks: list[str | Path],
               checkpoint: str | Path | None, val: list[str | Path] = ()) -> dict[str, Any]:
    """Absolute paths, so a study resumes from any folder."""
    return {"output": absolute(output), "data": [absolute(d) for d in data],
            "benchmarks": [absolute(b) for b in benchmarks], "checkpoint": absolute(checkpoint) if checkpoint else None,
            "val": [absolute(v) for v in val]}
