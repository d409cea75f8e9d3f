"""Can the data pipeline keep up with training? Patches/s of PatchDataset vs what a step eats.

Measures the patches per second that `mcir_cli.data.datasets.PatchDataset` delivers through a
`torch.utils.data.DataLoader` (as `loop.Run.batches` builds it) for workers 0 and 2 and
the decoded-image cache on and off, on an HR-only folder (LR made per patch by MATLAB
bicubic, the `--data` default for SR), and divides it by the patches per second a plain
training step consumes (batch / step time). A ratio below 1 means the GPU would wait.

The step time comes from `--step-ms` (e.g. a number from benchmarks/step_overhead.py on
the training GPU) or, without it, is measured here with mcir's plain step on `--device`.

    python benchmarks/input_pipeline.py --step-ms 55 --batch 32 --patch 64
    python benchmarks/input_pipeline.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mcir_cli.data.datasets import PatchDataset, discover  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "train" / "SunHays80_color_subset20"


def loader_rate(ds: PatchDataset, batch: int, workers: int, batches: int, offset: int) -> float:
    """Patches/s over `batches` batches, after the first batch (worker start-up)."""
    indices = list(range(offset, offset + (batches + 1) * batch))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, sampler=indices, num_workers=workers, drop_last=True,
        persistent_workers=False, generator=torch.Generator(),
    )
    it = iter(loader)
    next(it)  # start-up (fork, first decode) is not the steady state
    t = time.perf_counter()
    n = 0
    for lq, _gt in it:
        n += lq.shape[0]
    dt = time.perf_counter() - t
    del it, loader
    return n / dt


def measure_step_ms(args: argparse.Namespace) -> float:
    import step_overhead as so  # benchmarks/step_overhead.py

    device = torch.device(args.device)
    base, _, _ = so.build_model(args.preset, args.quick)
    lq = torch.rand(args.batch, 3, args.patch, args.patch)
    with torch.no_grad():
        shape = base.eval()(lq[:1]).shape
    gt = torch.rand(args.batch, *shape[1:])
    s = so.Setting(
        base=base, device=device, lq=lq.to(device), gt=gt.to(device), num=0,
        amp_dtype=torch.bfloat16 if device.type == "cuda" else None, channels_last=False,
        compile_mode="off", batched=False,
    )
    step = so.mcir_plain(s)
    return statistics.median(so.time_steps(step, 1, args.step_repeats, device))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48, help="LR patch size")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per configuration")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--step-ms", type=float, default=None, help="plain step time to compare with")
    ap.add_argument("--preset", default="swinir-light-x4", help="model for measuring the step")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--step-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="batch 4, patch 32, 4 batches, SwinIR depths [2, 2]")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.patch, args.batches = 4, 32, 4
    if args.threads:
        torch.set_num_threads(args.threads)

    data = discover(args.data, args.scale, "sr")
    rows = []
    offset = 0
    for cache in (True, False):
        t = time.perf_counter()
        ds = PatchDataset([data], args.patch, length=10**7, seed=0, cache=cache)
        build_s = time.perf_counter() - t
        for workers in args.workers:
            rate = loader_rate(ds, args.batch, workers, args.batches, offset)
            offset += (args.batches + 1) * args.batch  # fresh samples each time
            rows.append({"cache": cache, "workers": workers, "patches_per_s": rate, "build_s": build_s})
            print(f"cache {'on ' if cache else 'off'}  workers {workers}: {rate:8.1f} patches/s", flush=True)

    if args.step_ms is not None:
        step_ms, source = args.step_ms, "--step-ms"
    else:
        step_ms = measure_step_ms(args)
        source = f"measured: mcir plain step, {args.preset}{' (quick)' if args.quick else ''}, {args.device}"
    need = args.batch / (step_ms / 1000.0)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=(f"{data.name} ({len(data.pairs)} HR images, x{args.scale} bicubic on the fly), "
                         f"batch {args.batch} x LR patch {args.patch}"))
    for col in ("cache", "workers", "patches/s", "dataset build", "supply / demand"):
        table.add_column(col, justify="right")
    for r in rows:
        r["ratio"] = r["patches_per_s"] / need
        table.add_row("on" if r["cache"] else "off", str(r["workers"]), f"{r['patches_per_s']:.1f}",
                      f"{r['build_s']:.2f} s", f"{r['ratio']:.2f}x")
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print(f"demand: {need:.1f} patches/s = batch {args.batch} / {step_ms:.1f} ms per step ({source}); "
                  f"supply/demand < 1 means training waits for data. CPU cores here: {os.cpu_count()}, "
                  f"torch threads {torch.get_num_threads()}")
    res = {"data": str(args.data), "batch": args.batch, "patch": args.patch, "scale": args.scale,
           "step_ms": step_ms, "step_source": source, "demand_patches_per_s": need, "rows": rows,
           "torch": torch.__version__, "cpu_count": os.cpu_count()}
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return res


if __name__ == "__main__":
    main()
