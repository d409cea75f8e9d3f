"""Published dataset layouts, each recognised from the folder a user naturally points at.

Every layout is one `@layout` function below: it looks at a folder (file names, and image
headers where a layout is told by sizes; never pixels) and returns a `Match` (what it is,
which scales it holds, how to pair its images) or None. `match` runs them all. Two matches
are an ambiguity; no match tries the split rule (`train/` + `test/`: train is used, the
others are named), then a folder of datasets (`SOTS/indoor`, `SOTS/outdoor`: each must be
given), then the fallbacks (HR only, clean images). What fails is one line naming the
folder, what it holds and what was expected. docs/datasets.md lists the sources.

`Found` is what a recognised folder yields: image pairs with unique names, the task, the
scale, the layout's name and notes (what was chosen and what was left out).
"""

from mcir_cli.data.layouts import (
           lmdb,  # noqa: F401  (BasicSR's LMDB pairs, tried last)
           sr,  # noqa: F401, I001  (registers the SR layouts first, as they were tried)
)
from mcir_cli.data.layouts._core import LAYOUTS, Found, Layout, Match, Pair, layout, list_images
from mcir_cli.data.layouts.lists import PAIR_LIST_SUFFIXES, read_pair_list
from mcir_cli.data.layouts.recognise import infer_scale, match, recognise, scales_of
from mcir_cli.data.layouts.restoration import PAIRED_LAYOUTS

__all__ = ["Found", "LAYOUTS", "Layout", "Match", "PAIRED_LAYOUTS", "PAIR_LIST_SUFFIXES", "Pair", "infer_scale",
           "layout", "list_images", "match", "read_pair_list", "recognise", "scales_of"]
