"""mcir: retrain image-restoration models with model contrastive learning (MCIR).

The command line (`mcir`) is a thin layer over this package; every command has a
Python function behind it.
"""

__version__ = "0.1.0"
