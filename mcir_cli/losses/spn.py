"""The SPN (negative) loss of MCIR and the total objective.

Total objective (the sign matters): L = L_rec - lambda * L_neg, where

    L_neg = (1/N) sum_i sum_l w_l * mean | phi_l(I_rec) - phi_l(I_neg_i) |

with phi a frozen embedding (`losses.embeddings`: VGG16 / VGG19 / pixels) and I_neg_i the
output of negative model i (no gradient). Pushing the restored image away from the
negatives' outputs in feature space is the "self-prior-guided negative" term. L_rec is one
of `losses.reconstruction`.

All images are float tensors in [0, 1], NCHW.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def total_loss(l_rec: Tensor, l_neg: Tensor, lam: float) -> Tensor:
    """MCIR objective: L_rec - lambda * L_neg (larger distance to negatives is better)."""
    return l_rec - lam * l_neg


class SPNLoss(nn.Module):
    """L_neg = (1/N) sum_i sum_l w_l * mean_{B,C,H,W} |phi_l(rec) - phi_l(neg_i)|."""

    def __init__(self, embedding: nn.Module, layer_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        self.layer_weights = list(layer_weights if layer_weights is not None else embedding.layer_weights)

    def forward(
        self, restored: Tensor, negatives: Tensor, dtype: torch.dtype | None = None
    ) -> Tensor:
        if negatives.dim() != restored.dim() + 1 or negatives.shape[1:] != restored.shape:
            raise ValueError(
                f"negatives must be (N, *restored.shape); got {tuple(negatives.shape)} "
                f"for restored {tuple(restored.shape)}"
            )
        n = negatives.shape[0]
        device_type = restored.device.type
        ctx = (
            torch.autocast(device_type=device_type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            with torch.no_grad():
                neg_feats = self.embedding(negatives.detach().flatten(0, 1))
            rec_feats = self.embedding(restored)
        if len(rec_feats) != len(self.layer_weights):
            raise ValueError(
                f"embedding returned {len(rec_feats)} maps for {len(self.layer_weights)} weights"
            )
        total = restored.new_zeros((), dtype=torch.float32)
        for w, fr, fn in zip(self.layer_weights, rec_feats, neg_feats):
            fn = fn.detach().unflatten(0, (n, fr.shape[0]))
            # per-negative mean over (B, C, H, W), then mean over negatives
            dist = (fr.unsqueeze(0) - fn).abs().mean(dtype=torch.float32)
            total = total + w * dist
        return total
