"""How close mcir's torch JPEG (`jpeg_sim.jpeg`, the Real-ESRGAN degradation's) is to
Pillow's libjpeg: PSNR of each decoded image against the clean one, and of the two
against each other, on 250x250 top-left crops of Set5's baby and butterfly, at several
qualities. The numbers in docs/datasets.md come from this script.

    MCIR_SHARED=../shared OMP_NUM_THREADS=1 python3 benchmarks/jpeg_vs_libjpeg.py
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mcir_cli.data.imageio import read_image
from mcir_cli.data.realesrgan.jpeg_sim import jpeg

SHARED = Path(os.environ.get("MCIR_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def libjpeg(img: torch.Tensor, q: int) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=q)
    return torch.from_numpy(np.asarray(Image.open(buf), dtype=np.float32) / 255).permute(2, 0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a * 255).round() - (b * 255).round()).double().pow(2).mean())
    return 10 * math.log10(255**2 / mse)


def main() -> None:
    print("| image | q | torch JPEG vs clean | libjpeg vs clean | torch vs libjpeg |")
    print("|---|---|---|---|---|")
    for name in ("baby", "butterfly"):
        img = read_image(SHARED / "data" / "sr" / "Set5" / "HR" / f"{name}.png")[:, :250, :250]
        for q in (10, 30, 50, 90, 95):
            ours, ref = jpeg(img[None], torch.tensor([float(q)]))[0], libjpeg(img, q)
            print(f"| {name} | {q} | {psnr(ours, img):.2f} | {psnr(ref, img):.2f} | {psnr(ours, ref):.2f} |")


if __name__ == "__main__":
    main()
