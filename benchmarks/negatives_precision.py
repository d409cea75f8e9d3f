"""Is a bf16 negative accurate enough? Its rounding error against the signal it carries.

After K plain fine-tuning steps of a real checkpoint, the negative (a copy of the start,
as `--negative-init copy` gives) differs from the target by |f_θ − f_θ'|. The SPN loss's
L1 gradient follows sign(φ(f_θ) − φ(f_θ')); a bf16 negative adds |f_θ'_bf16 − f_θ'|. The
script prints both side by side, their ratio, and the share of pixels (and of VGG
features) whose sign flips, for each precision.

    python benchmarks/negatives_precision.py --checkpoint ../shared/weights/IMDN/IMDN_x4.pth
    python benchmarks/negatives_precision.py --device cuda --steps 100 ...   # on a GPU
"""

from __future__ import annotations

import argparse
import copy

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default="../shared/data/train/SunHays80_color_subset20")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from mcir_cli.data.datasets import PatchDataset, discover_all
    from mcir_cli.losses.embeddings import make_embedding
    from mcir_cli.models.loading import load_model

    torch.manual_seed(0)
    dev = torch.device(args.device)
    from mcir_cli.train.speed import true_fp32

    true_fp32(dev)  # the reference is true fp32 on CUDA too (TF32 off), as training runs it
    loaded = load_model(args.checkpoint)
    target = loaded.restorer.to(dev).train()
    negative = copy.deepcopy(target).eval()  # the start: what a copy-initialised negative holds
    patches = PatchDataset(discover_all([args.data], loaded.scale, None), args.patch, length=10**9, seed=0)
    opt = torch.optim.Adam(target.parameters(), lr=args.lr, betas=(0.9, 0.99))
    for i in range(args.steps):
        lq, gt = zip(*(patches[i * args.batch + j] for j in range(args.batch)))
        lq, gt = torch.stack(lq).to(dev), torch.stack(gt).to(dev)
        opt.zero_grad()
        (target(lq) - gt).abs().mean().backward()
        opt.step()
    target.eval()
    lq = torch.stack([patches[10**6 + j][0] for j in range(args.batch)]).to(dev)
    vgg = make_embedding("vgg16", None, "random", 0).to(dev)
    with torch.no_grad():
        out = target(lq)
        neg32 = negative(lq)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            neg16 = negative(lq).float()
        f_out, f32, f16 = vgg(out), vgg(neg32), None
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            f16 = [f.float() for f in vgg(neg16)]
    tf32 = _tf32_output(negative, lq) if dev.type == "cuda" else None
    signal = (out - neg32).abs().mean().item()
    error = (neg16 - neg32).abs().mean().item()
    flips = (torch.sign(out - neg32) != torch.sign(out - neg16)).float().mean().item()
    feat_flips = [(torch.sign(a - b) != torch.sign(a - c)).float().mean().item() for a, b, c in zip(f_out, f32, f16)]
    print(f"{loaded.architecture} x{loaded.scale} on {dev}, after {args.steps} fine-tuning steps (lr {args.lr:g}), "
          f"batch {args.batch} x {args.patch}^2 LR:")
    print(f"  |f_θ − f_θ'| (fp32, the signal)          {signal:.3e}")
    print(f"  |f_θ'(bf16) − f_θ'(fp32)| (the rounding)  {error:.3e}   ratio rounding/signal {error / signal:.2f}")
    print(f"  pixels whose sign(f_θ − f_θ') flips in bf16: {flips:.1%}")
    print("  VGG16 features (relu1_2, relu2_2, relu3_3) whose sign flips: "
          + ", ".join(f"{x:.1%}" for x in feat_flips) + " (random VGG weights)")
    if tf32 is not None:  # why training turns TF32 off on CUDA (speed.true_fp32), or may stop doing so
        t_err = (tf32 - neg32).abs().mean().item()
        t_flips = (torch.sign(out - neg32) != torch.sign(out - tf32)).float().mean().item()
        print(f"  |f_θ'(TF32) − f_θ'(fp32)| (the rounding)  {t_err:.3e}   ratio rounding/signal {t_err / signal:.2f}")
        print(f"  pixels whose sign(f_θ − f_θ') flips in TF32: {t_flips:.1%}")


def _tf32_output(net: torch.nn.Module, lq: torch.Tensor) -> torch.Tensor:
    """The negative's output with cuDNN convolutions and matmuls in TF32 (torch's default
    for convolutions), the flags restored afterwards."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.no_grad():
            return net(lq).float()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


if __name__ == "__main__":
    main()
