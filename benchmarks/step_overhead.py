"""What SPN costs per training step: plain vs naive SPN vs mcir's SPN, in one run.

Five measurements on the same model, batch and patch (ms/step = median over the timed
steps; on CUDA every step is bracketed by torch.cuda.synchronize()):

  (a) eager plain   the BasicSR way: fp32, model(lq) -> L1 -> backward -> Adam step
  (b) mcir plain    mcir's step (step.spn_step without negatives): the target in fp32
                    (--amp bf16: bf16 autocast), channels_last where retrain's decision
                    says so, optional torch.compile (--compile), one host sync per step
  (c) naive SPN     the authors' README way: N deep-copied negatives run one after another
                    in fp32, one VGG call per negative plus one for the output
  (d) mcir SPN      step.spn_step: NegativeBank (vmap on CUDA, loop on CPU, as
                    retrain's "auto"), SPNLoss (one embedding call for the output, one
                    batched call for all N negatives); precision as --amp (auto: fp32)
  (e) mcir parts    the pieces of (d) timed separately and summed: target fwd+bwd+step,
                    negatives forward, embedding + SPN loss (+ its backward to the output)

The embedding is a RANDOM-weight VGG16 (the ImageNet weights are not downloaded): same
cost as the pretrained one, not the paper's loss values. Weights of the restoration model
are the preset's random initialisation (speed does not depend on them).

Peak memory: on CUDA torch.cuda.max_memory_allocated() during the steps minus what was
allocated before the configuration was built (model copy, optimizer, negatives, VGG and
activations are all counted). On CPU: the peak resident set size (RSS, /proc/self/statm
sampled every ~1 ms during two extra steps) minus the RSS before the configuration was
built, after gc + malloc_trim; it includes allocator slack and is noisier.

    python benchmarks/step_overhead.py --quick --device cpu
    python benchmarks/step_overhead.py --device cuda --batch 32 --patch 64 --json h200.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

warnings.filterwarnings("ignore", message="torch.meshgrid")  # SwinIR, inside spandrel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcir_cli.losses.embeddings import make_embedding  # noqa: E402
from mcir_cli.losses.reconstruction import make_rec_loss  # noqa: E402
from mcir_cli.losses.spn import SPNLoss  # noqa: E402
from mcir_cli.negatives.bank import NegativeBank  # noqa: E402
from mcir_cli.train.speed import channels_last_decision, compile_training, precision_decision  # noqa: E402

ISSUE_H200 = {  # the issue author's numbers, SwinIR-light x4, N=4, batch 32, patch 64
    "device": "NVIDIA H200 (issue author)",
    "plain_ms": 110.0,
    "naive_spn_ms": 419.0,
}
DEFAULT_STEPS = (100, 500, 1000, 2000)
LAMBDA = 1e-4

NAMES = {
    "eager_plain": "(a) eager plain (fp32, BasicSR way)",
    "mcir_plain": "(b) mcir plain",
    "naive_spn": "(c) naive SPN (README way)",
    "mcir_spn": "(d) mcir SPN",
    "mcir_parts": "(e) sum of mcir's parts",
}


# ---------------------------------------------------------------- model
def build_model(preset_name: str, quick: bool, seed: int = 0) -> tuple[nn.Module, str, int]:
    """(restorer in [0, 1] -> [0, 1], description, scale); random weights."""
    from mcir_cli.models.loading import Restorer, from_preset
    from mcir_cli.models.presets import IOSpec, get_preset

    try:
        preset = get_preset(preset_name)
    except Exception as exc:  # noqa: BLE001 - presets folder missing or being written
        if preset_name != "swinir-light-x4":
            raise
        print(f"note: preset {preset_name} unavailable ({exc}); building SwinIR-light x4 directly")
        from spandrel.architectures.SwinIR import SwinIR

        depths = [2, 2] if quick else [6, 6, 6, 6]
        torch.manual_seed(seed)
        net = SwinIR(
            upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=depths,
            embed_dim=60, num_heads=[6] * len(depths), mlp_ratio=2,
            upsampler="pixelshuffledirect", resi_connection="1conv",
        )
        return Restorer(net, IOSpec()), f"SwinIR-light x4 (depths {depths})", 4
    desc = preset.name
    if quick and preset.architecture == "SwinIR":
        kw = dict(preset.kwargs)
        kw["depths"] = [2, 2]
        kw["num_heads"] = list(kw.get("num_heads", [6, 6, 6, 6]))[:2]
        preset = dataclasses.replace(preset, kwargs=kw)
        desc += f" (quick: depths {kw['depths']})"
    loaded = from_preset(preset, seed)
    return loaded.restorer, desc, loaded.scale


# ---------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[], Any], warmup: int, steps: int, device: torch.device, first: list[float] | None = None
) -> list[float]:
    """ms of each timed step; the first warm-up step's ms is appended to `first` (with
    --compile it includes the compile time)."""
    for i in range(warmup):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        if i == 0 and first is not None:
            first.append((time.perf_counter() - t) * 1000.0)
    sync(device)
    out = []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        out.append((time.perf_counter() - t) * 1000.0)
    return out


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the high-water mark
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def trim_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Samples the process RSS on a thread (~1 kHz) and keeps the maximum."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def memory_base(device: torch.device) -> int:
    trim_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return rss_bytes()


def measure(
    setup: Callable[[], Callable[[], Any]],
    device: torch.device,
    warmup: int,
    steps: int,
    memory_steps: int = 2,
) -> dict[str, Any]:
    """Build a configuration, time its step, measure its peak memory."""
    base = memory_base(device)
    step = setup()
    first: list[float] = []
    times = time_steps(step, warmup, steps, device, first)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with PeakRSS() as sampler:
            for _ in range(memory_steps):
                step()
        peak = sampler.peak - base
    del step
    trim_memory(device)
    ms = statistics.median(times)
    return {"ms": ms, "times_ms": [round(t, 3) for t in times], "peak_bytes": int(peak),
            "first_step_ms": first[0] if first else None}


# ---------------------------------------------------------------- the steps
@dataclasses.dataclass
class Setting:
    base: nn.Module
    device: torch.device
    lq: torch.Tensor
    gt: torch.Tensor
    num: int
    amp_dtype: torch.dtype | None  # the target's autocast dtype in (b), (d), (e)
    spn_dtype: torch.dtype | None  # negatives + embedding in (d), (e)
    channels_last: bool
    channels_last_mode: str
    compile: bool
    compile_backend: str
    compile_mode: str | None
    batched: bool

    @property
    def neg_steps(self) -> list[int]:
        steps = list(DEFAULT_STEPS)
        while len(steps) < self.num:
            steps.append(steps[-1] * 2)
        return steps[: self.num]

    def target(self) -> nn.Module:
        model = copy.deepcopy(self.base).to(self.device)
        model.train()
        return model

    def autocast(self):
        """The target's autocast in mcir's steps."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def eager_plain(s: Setting) -> Callable[[], Any]:
    model = s.target()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.99))

    def step() -> None:
        opt.zero_grad()
        out = model(s.lq)
        loss = F.l1_loss(out, s.gt)
        loss.backward()
        opt.step()

    return step


def _mcir_setup(s: Setting, spn: bool) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.Tensor, Any, Any]:
    """(raw model, module to call, optimizer, input, bank, spn loss) set up the way
    retrain does: channels_last (model, input, embedding) per the decision, the
    negatives stacked from the model, then torch.compile of all three parts."""
    model = s.target()
    lq = s.lq
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
        lq = lq.contiguous(memory_format=torch.channels_last)
    bank = loss = None
    if spn:
        # init "copy": the same forward cost as the paper's "mix", without building N
        # random models first
        bank = NegativeBank(model, s.neg_steps, init="copy", batched=s.batched).to(s.device)
        embedding = make_embedding("vgg16", init="random")
        if channels_last_decision(embedding, s.device, s.channels_last_mode)[0]:
            embedding.to(memory_format=torch.channels_last)
        loss = SPNLoss(embedding).to(s.device)
    call = compile_training(model, bank, loss, s.compile_backend, s.compile_mode) if s.compile else model
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-4, betas=(0.9, 0.99))
    return model, call, opt, lq, bank, loss


def _train_step(model, call, opt, rec_loss, bank, spn, s: Setting, lq, gt) -> tuple[float, ...]:
    """mcir_cli.train.step.spn_step, minus the DDP wrapper (the lr is fixed)."""
    opt.zero_grad(set_to_none=True)
    with s.autocast():
        out = call(lq)
        l_rec = rec_loss(out.float(), gt)
    if bank is not None:
        neg = bank(lq, s.spn_dtype)
        l_neg = spn(out.float(), neg.float(), s.spn_dtype)
        loss = l_rec - LAMBDA * l_neg
    else:
        l_neg = torch.zeros((), device=s.device)
        loss = l_rec
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    values = torch.stack([loss.detach(), l_rec.detach(), l_neg.detach().float(), gnorm.detach().float()]).tolist()
    opt.step()
    return tuple(values)


def mcir_plain(s: Setting) -> Callable[[], Any]:
    model, call, opt, lq, _, _ = _mcir_setup(s, spn=False)
    rec = make_rec_loss("l1")
    return lambda: _train_step(model, call, opt, rec, None, None, s, lq, s.gt)


def mcir_spn(s: Setting) -> Callable[[], Any]:
    model, call, opt, lq, bank, spn = _mcir_setup(s, spn=True)
    rec = make_rec_loss("l1")
    return lambda: _train_step(model, call, opt, rec, bank, spn, s, lq, s.gt)


def naive_spn(s: Setting) -> Callable[[], Any]:
    model = s.target()
    negatives = [copy.deepcopy(model).eval().requires_grad_(False) for _ in range(s.num)]
    vgg = make_embedding("vgg16", init="random").to(s.device)
    weights = vgg.layer_weights
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.99))

    def step() -> None:
        opt.zero_grad()
        out = model(s.lq)
        l_rec = F.l1_loss(out, s.gt)
        f_out = vgg(out)
        l_neg = 0.0
        for neg_model in negatives:  # one after another, fp32
            with torch.no_grad():
                f_neg = vgg(neg_model(s.lq))
            l_neg = l_neg + sum(w * F.l1_loss(a, b) for w, a, b in zip(weights, f_out, f_neg))
        loss = l_rec - LAMBDA * l_neg / len(negatives)
        loss.backward()
        opt.step()

    return step


def _time_parts(s: Setting, warmup: int, steps: int) -> dict[str, float]:
    model, call, opt, lq, bank, spn = _mcir_setup(s, spn=True)
    rec = make_rec_loss("l1")
    with torch.no_grad(), s.autocast():
        out_fixed = call(lq).float()
    neg_fixed = bank(lq, s.spn_dtype).float()

    def target_step() -> None:
        _train_step(model, call, opt, rec, None, None, s, lq, s.gt)

    def negatives() -> None:
        bank(lq, s.spn_dtype)

    def embedding_loss() -> None:
        out = out_fixed.detach().requires_grad_(True)
        spn(out, neg_fixed, s.spn_dtype).backward()

    parts = {}
    for name, fn in (("target_step", target_step), ("negatives_forward", negatives), ("embedding_loss", embedding_loss)):
        parts[name] = statistics.median(time_steps(fn, warmup, steps, s.device))
    return parts  # the objects above are freed on return


def mcir_parts(s: Setting, warmup: int, steps: int) -> dict[str, Any]:
    """Time the three parts of (d) separately on one set of objects."""
    base = memory_base(s.device)
    parts = _time_parts(s, warmup, steps)
    peak = torch.cuda.max_memory_allocated(s.device) - base if s.device.type == "cuda" else None
    trim_memory(s.device)
    return {"ms": sum(parts.values()), "parts_ms": parts, "peak_bytes": peak}


# ---------------------------------------------------------------- report
def goals(r: dict[str, dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    a, b, c, d, e = (r[k]["ms"] for k in ("eager_plain", "mcir_plain", "naive_spn", "mcir_spn", "mcir_parts"))
    mem_d, mem_b = r["mcir_spn"]["peak_bytes"], r["mcir_plain"]["peak_bytes"]
    rows = [
        ("mcir SPN <= 1.0x eager plain", d / a, "<=", 1.0),
        ("mcir SPN >= 3x faster than naive SPN", c / d, ">=", 3.0),
        ("mcir plain <= 0.5x eager plain", b / a, "<=", 0.5),
        ("mcir SPN <= 1.1x sum of its parts", d / e, "<=", 1.1),
        ("SPN peak memory <= 1.5x plain (d vs b)", mem_d / mem_b if mem_b > 0 else float("nan"), "<=", 1.5),
    ]
    out = []
    for goal, value, op, limit in rows:
        ok = value <= limit if op == "<=" else value >= limit
        if value != value:  # nan
            ok = None
        out.append({"goal": goal, "value": value, "op": op, "limit": limit, "pass": ok,
                    "binding": device.type == "cuda"})
    return out


def fmt_mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def print_report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    meta, r = res["meta"], res["results"]
    console = Console(width=max(110, Console().width))
    a, c = r["eager_plain"]["ms"], r["naive_spn"]["ms"]
    table = Table(title=(f"{meta['model']}, N={meta['negatives']}, batch {meta['batch']} x LR patch "
                         f"{meta['patch']}, {meta['device_name']}, {meta['dtype']}"))
    for col in ("step", "ms/step", "vs (a)", "vs (c)", f"peak memory ({meta['memory_kind']})"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for key, label in NAMES.items():
        row = r[key]
        table.add_row(label, f"{row['ms']:.1f}", f"{row['ms'] / a:.2f}x", f"{row['ms'] / c:.2f}x", fmt_mb(row.get("peak_bytes")))
    console.print(table)
    parts = r["mcir_parts"]["parts_ms"]
    console.print("(e) parts: " + ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items()))
    g = Table(title="goals from the speed issue" + ("" if meta["device"] == "cuda" else
                                                     " (they are CUDA goals: on CPU informative only)"))
    for col in ("goal", "measured", "verdict"):
        g.add_column(col)
    for row in res["goals"]:
        verdict = "n/a" if row["pass"] is None else ("PASS" if row["pass"] else "FAIL")
        if not row["binding"] and row["pass"] is not None:
            verdict = f"({verdict} on CPU)"
        g.add_row(row["goal"], f"{row['value']:.2f}", verdict)
    console.print(g)
    if meta["compile"]:
        firsts = ", ".join(f"{label} {(r[k]['first_step_ms'] - r[k]['ms']) / 1000:.1f} s"
                           for k, label in (("mcir_plain", "(b)"), ("mcir_spn", "(d)"))
                           if r[k].get("first_step_ms") is not None)
        console.print(f"compile time (first step minus a compiled step, {meta['compile_backend']}): {firsts}")
    console.print(f"layout: {meta['layout']}")
    console.print(f"embedding: {meta['embedding']}")
    console.print(f"memory: {meta['memory_note']}")
    console.print(f"timing: median of {meta['steps']} steps after {meta['warmup']} warm-up; "
                  f"issue author's H200 (batch 32, patch 64): plain {ISSUE_H200['plain_ms']:.0f} ms, "
                  f"naive SPN {ISSUE_H200['naive_spn_ms']:.0f} ms")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="swinir-light-x4")
    ap.add_argument("--num", "-n", type=int, default=4, help="number of negatives N")
    ap.add_argument("--batch", type=int, default=None, help="default: 32 on CUDA, 4 on CPU")
    ap.add_argument("--patch", type=int, default=None, help="LR patch; default 64 on CUDA, 32 on CPU")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CUDA, 5 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5 CUDA, 1 CPU)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the target, the batched negatives and the embedding in (b), (d), (e)")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: trace only)")
    ap.add_argument("--compile-mode", default=None, choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                    help="torch.compile mode (reduce-overhead: CUDA graphs)")
    ap.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--amp", choices=["auto", "fp32", "bf16-negatives", "bf16"], default="auto",
                    help="mcir's precision (as retrain --amp): auto = fp32; bf16-negatives = negatives + VGG bf16 on CUDA")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    ap.add_argument("--quick", action="store_true", help="batch 2, patch 16, 3 steps, SwinIR depths [2, 2]")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    if args.quick:
        batch, patch, steps, warmup = 2, 16, 3, 1
    else:
        batch, patch = (32, 64) if cuda else (4, 32)
        steps, warmup = (20, 5) if cuda else (5, 1)
    batch = args.batch or batch
    patch = args.patch or patch
    steps = args.steps or steps
    warmup = args.warmup if args.warmup is not None else warmup

    base, desc, scale = build_model(args.preset, args.quick, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    lq = torch.rand(batch, base.net.in_chans if hasattr(base.net, "in_chans") else 3, patch, patch, generator=g)
    with torch.no_grad():
        out_shape = copy.deepcopy(base).eval()(lq[:1]).shape
    gt = torch.rand(batch, *out_shape[1:], generator=g)
    lq, gt = lq.to(device), gt.to(device)

    cl, layout_note = channels_last_decision(base, device, args.channels_last, lq[:1].cpu())
    amp_dtype, spn_dtype, precision_note = precision_decision(args.amp, device)
    s = Setting(
        base=base, device=device, lq=lq, gt=gt, num=args.num,
        amp_dtype=amp_dtype, spn_dtype=spn_dtype, channels_last=cl, channels_last_mode=args.channels_last,
        compile=args.compile, compile_backend=args.compile_backend, compile_mode=args.compile_mode, batched=cuda,
    )
    print(layout_note)
    if args.compile and not cuda and args.compile_backend == "inductor":
        print("warning: --compile on CPU takes minutes per graph and measured slower than eager")

    torch.manual_seed(args.seed)
    results: dict[str, dict[str, Any]] = {}
    order = (("eager_plain", eager_plain), ("mcir_plain", mcir_plain), ("naive_spn", naive_spn), ("mcir_spn", mcir_spn))
    for key, setup in order:
        print(f"measuring {NAMES[key]} ...", flush=True)
        results[key] = measure(lambda setup=setup: setup(s), device, warmup, steps)
    print(f"measuring {NAMES['mcir_parts']} ...", flush=True)
    results["mcir_parts"] = mcir_parts(s, warmup, steps)

    if cuda:
        device_name = torch.cuda.get_device_name(device)
        memory_kind, memory_note = "CUDA", "torch.cuda.max_memory_allocated() during the steps minus the allocation before the configuration was built"
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        memory_kind = "RSS"
        memory_note = ("peak RSS (/proc/self/statm sampled ~1 kHz over 2 extra steps) minus RSS before the "
                       "configuration was built (after gc + malloc_trim); includes allocator slack")
    res = {
        "meta": {
            "model": desc, "preset": args.preset, "scale": scale, "negatives": args.num, "batch": batch, "patch": patch,
            "device": device.type, "device_name": device_name, "dtype": f"(a), (c) fp32; (b), (d), (e) {precision_note}",
            "channels_last": cl, "layout": layout_note, "compile": args.compile, "compile_backend": args.compile_backend, "compile_mode": args.compile_mode,
            "negatives_batched": "vmap" if s.batched else "loop",
            "steps": steps, "warmup": warmup, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "memory_kind": memory_kind, "memory_note": memory_note,
            "embedding": "VGG16 relu1_2/relu2_2/relu3_3 with RANDOM weights (pretrained weights not available "
                         "offline): same cost, not the paper's loss values",
            "issue_h200": ISSUE_H200,
        },
        "results": results,
    }
    res["goals"] = goals(results, device)
    print_report(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return res


if __name__ == "__main__":
    main()
