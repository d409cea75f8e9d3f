"""Scoring several checkpoints on the same folders with identical conventions: what
`mcir compare --checkpoint A --checkpoint B --data DIR` compares, with the loaded models
kept for its pictures. Kept next to `evaluate.py`, which scores one model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mcir_cli.data.datasets import Dataset, discover_all
from mcir_cli.data.jpeg import with_qualities
from mcir_cli.errors import McirError
from mcir_cli.evaluate.benchmarks import Scoring, evaluate_labelled
from mcir_cli.models.loading import LoadedModel, checkpoint_label, load_model

ModelsProgress = Callable[[str, str, int, int], None]  # (model label, dataset, done, total)



def load_comparable(checkpoints: list[Path], scale: int | None, res_scale: float | None = None) -> list[LoadedModel]:
    """All models first: checkpoints that cannot be compared (different scales) are refused
    before any work (`res_scale`: EDSR's, `--res-scale`)."""
    models = [load_model(path, None, scale, res_scale=res_scale) for path in checkpoints]
    if len({m.scale for m in models}) > 1:
        found = ", ".join(f"{checkpoint_label(p)} x{m.scale}" for p, m in zip(checkpoints, models))
        raise McirError(f"the checkpoints restore at different scales ({found}); compare models of one "
                        "scale, on the same benchmark")
    return models


def evaluate_checkpoints(
    checkpoints: list[Path],
    data: list[Path],
    scoring: Scoring = Scoring(),
    *,
    progress: ModelsProgress | None = None,
) -> tuple[list[dict], list[LoadedModel], dict[str, Dataset]]:
    """Evaluate every checkpoint on the same folders with identical conventions (what
    `mcir compare --checkpoint` scores).

    Returns (results, loaded models, datasets by name); `progress(label, dataset, done,
    total)` is called per image. The models are kept for the visuals."""
    models = load_comparable(checkpoints, scoring.scale, scoring.res_scale)
    results = []
    for path, model in zip(checkpoints, models):
        label = checkpoint_label(path)

        def per_image(name: str, done: int, total: int, label: str = label) -> None:
            if progress:
                progress(label, name, done, total)

        results.append(evaluate_labelled(model, data, scoring, label, progress=per_image))
    first = models[0]
    found = discover_all(data, first.scale if first.scale > 1 else None, results[0].get("task"))
    datasets = {d.name: d for d in with_qualities(found, scoring.jpeg_quality)}
    return results, models, datasets
