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
    "load_model": "mcir_cli.models", "LoadedModel": "mcir_cli.models", "get_preset": "mcir_cli.recipes",
    "TrainConfig": "mcir_cli.config", "make_config": "mcir_cli.config", "load_run_config": "mcir_cli.config",
    "retrain": "mcir_cli.loop", "Run": "mcir_cli.loop", "TrainResult": "mcir_cli.loop",
    "NegativeBank": "mcir_cli.negatives", "SPNLoss": "mcir_cli.losses", "make_embedding": "mcir_cli.losses",
    "make_rec_loss": "mcir_cli.losses", "CollapseGuard": "mcir_cli.guard", "LambdaControl": "mcir_cli.guard",
    "evaluate_model": "mcir_cli.evaluate", "compare_results": "mcir_cli.results",
    "load_result": "mcir_cli.result_files", "paired_stats": "mcir_cli.stats", "seed_image_stats": "mcir_cli.stats",
    "psnr": "mcir_cli.metrics", "ssim": "mcir_cli.metrics",
    "imresize": "mcir_cli.resize", "read_image": "mcir_cli.imageio", "StudyPlan": "mcir_cli.study",
    "run_study": "mcir_cli.study", "McirError": "mcir_cli.errors", "plot_runs": "mcir_cli.plot",
    "RealESRGANSettings": "mcir_cli.degradation_config", "Degrader": "mcir_cli.degradations",
    "degrade_dataset": "mcir_cli.degrade_data", "compare_without_gt": "mcir_cli.compare_unpaired",
    "restore_images": "mcir_cli.restore",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mcir_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
