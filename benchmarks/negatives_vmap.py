"""Time N=4 EMA negatives: one batched (vmap) call vs a loop of 4 calls.

Model: SwinIR-light x4 (embed_dim 60, depths 6x4, window 8, pixelshuffledirect).

    python benchmarks/negatives_vmap.py --quick
    python benchmarks/negatives_vmap.py --device cuda --batch 16 --patch 64 --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build_swinir_light(depth: int) -> torch.nn.Module:
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    return SwinIR(
        img_size=64, embed_dim=60, depths=[6] * depth, num_heads=[6] * depth, window_size=8,
        mlp_ratio=2, upsampler="pixelshuffledirect", upscale=4,
    ).eval()


def timed(fn, x, repeats: int, device: torch.device) -> list[float]:
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    from mcir_cli.negatives.bank import NegativeBank

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=64, help="LR patch size")
    ap.add_argument("--num", type=int, default=4, help="number of negatives")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    ap.add_argument("--quick", action="store_true", help="batch 1, patch 32, 2 RSTB stages, 3 repeats")
    args = ap.parse_args()
    depth = 4
    if args.quick:
        args.batch, args.patch, args.repeats, depth = 1, 32, 3, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None

    model = build_swinir_light(depth).to(device)
    steps = [100, 500, 1000, 2000, 4000, 8000, 16000, 32000][: args.num]
    fast = NegativeBank(model, steps, batched=True).to(device)
    slow = NegativeBank(model, steps, batched=False).to(device)
    x = torch.rand(args.batch, 3, args.patch, args.patch, device=device)

    a, b = fast(x, dtype), slow(x, dtype)  # warm-up (and correctness)
    rel = ((a - b).abs().max() / b.abs().max()).item()
    t_fast = timed(lambda v: fast(v, dtype), x, args.repeats, device)
    t_slow = timed(lambda v: slow(v, dtype), x, args.repeats, device)
    with torch.no_grad():
        t_upd = timed(lambda _: fast.update(2000), None, args.repeats, device)

    params = sum(p.numel() for p in model.parameters())
    f, s = statistics.median(t_fast), statistics.median(t_slow)
    print(
        f"SwinIR-light x4 ({depth} RSTB, {params / 1e3:.0f}K params), N={args.num} negatives, "
        f"batch {args.batch}, patch {args.patch}, {args.dtype}, device {device}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"batched (vmap): {f:8.1f} ms   (median of {args.repeats})")
    print(f"loop          : {s:8.1f} ms")
    print(f"loop / batched: {s / f:8.2f}x   max rel diff {rel:.2e}")
    print(f"EMA update of all {args.num}: {statistics.median(t_upd):.2f} ms")


if __name__ == "__main__":
    main()
