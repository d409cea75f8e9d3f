"""mcir: retrain image-restoration models with model contrastive learning (MCIR).

The command line (`mcir`) is a thin layer over this package; every command has a Python
function behind it. The public API below is imported lazily (PEP 562), so `import
mcir_cli` stays cheap and each name resolves to the module that defines it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it (one place for each concept)
_API = {
    "load_model": "mcir_cli.models.loading", "LoadedModel": "mcir_cli.models.loading", "get_preset": "mcir_cli.models.presets",
    "TrainConfig": "mcir_cli.train.config", "make_config": "mcir_cli.train.config", "load_run_config": "mcir_cli.train.config",
    "retrain": "mcir_cli.train.run", "Run": "mcir_cli.train.run", "TrainResult": "mcir_cli.train.run",
    "NegativeBank": "mcir_cli.negatives.bank", "SPNLoss": "mcir_cli.losses.spn", "make_embedding": "mcir_cli.losses.embeddings",
    "make_rec_loss": "mcir_cli.losses.reconstruction", "CollapseGuard": "mcir_cli.train.guard", "LambdaControl": "mcir_cli.train.guard",
    "evaluate_model": "mcir_cli.evaluate.benchmarks", "Scoring": "mcir_cli.evaluate.benchmarks", "compare_results": "mcir_cli.compare.results",
    "load_result": "mcir_cli.compare.files", "paired_stats": "mcir_cli.compare.stats", "seed_image_stats": "mcir_cli.compare.stats",
    "psnr": "mcir_cli.metrics.basicsr", "ssim": "mcir_cli.metrics.basicsr",
    "imresize": "mcir_cli.data.resize", "read_image": "mcir_cli.data.imageio", "StudyPlan": "mcir_cli.workflows.study",
    "run_study": "mcir_cli.workflows.study", "McirError": "mcir_cli.errors", "plot_runs": "mcir_cli.render.plot",
    "RealESRGANSettings": "mcir_cli.data.realesrgan.settings", "Degrader": "mcir_cli.data.realesrgan.pipeline",
    "degrade_dataset": "mcir_cli.workflows.degrade_data", "compare_without_gt": "mcir_cli.workflows.compare_unpaired",
    "restore_images": "mcir_cli.workflows.restore",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mcir_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
