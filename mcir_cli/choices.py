"""The allowed values of every choice a run, a preset and the CLI share, in one place:
config checks, presets, losses, speed decisions and negatives all read them from here."""

from __future__ import annotations

LOSSES = ("l1", "charbonnier", "mse", "psnr", "ssim")  # reconstruction losses (losses.reconstruction.REC_LOSSES)
EMBEDDINGS = ("vgg16", "vgg19", "pixel")  # SPN embeddings (losses.embeddings.make_embedding)
EMBEDDING_INITS = ("pretrained", "random")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("multistep", "cosine", "constant")
NEGATIVE_INITS = ("mix", "copy", "random", "frozen")  # "none" in a run: no negatives (plain training)
AUTO_ON_OFF = ("auto", "on", "off")  # --compile, --channels-last, --batched-negatives, --cache
AMP_MODES = ("auto", "fp32", "bf16-negatives", "bf16")

# the contrast-ratio band λ·l_neg/l_rec for warnings and --lambda auto: mcir's heuristic,
# not the paper's or the authors' code's (neither gives a target for the ratio)
RATIO_BAND = (0.01, 0.10)
