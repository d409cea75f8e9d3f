"""Speed switches for training: when to `torch.compile`, when channels_last is worth it.

Both are decisions, not guesses at run time: `compile_decision` and
`channels_last_decision` return (yes/no, a one-line note saying what was decided and
why); the training loop logs the notes and writes them to log.jsonl. `compile_training`
compiles the three parts of an SPN step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mcir_cli.choices import AMP_MODES, AUTO_ON_OFF

# Break-even of torch.compile for a training run, from the speed issue's H200 numbers for
# SwinIR-light x4 at batch 32 x LR patch 64 (bf16):
#   compile time  ~150 s per graph (~2.5 min), about 3 graphs per run (training
#                 forward+backward, plus recompiles, e.g. the autocast / grad-mode
#                 variants)                                            -> ~450 s
#   saving        ~45 ms per plain step (compile halved the plain step)
#   break-even    3 * 150 s / 0.045 s  ~= 10,000 steps
# Below this many steps "auto" stays eager: compiling would cost more than it saves.
# Smaller models/patches save less per step, so this is a lower bound in practice.
COMPILE_SECONDS_PER_GRAPH = 150.0
COMPILE_GRAPHS_PER_RUN = 3
COMPILE_SAVING_S_PER_STEP = 0.045
AUTO_COMPILE_MIN_ITERS = 10_000  # ~= COMPILE_GRAPHS_PER_RUN * COMPILE_SECONDS_PER_GRAPH / COMPILE_SAVING_S_PER_STEP

# channels_last pays off for convolution-dominated networks (cuDNN NHWC kernels under
# bf16/fp16); transformer-style networks (SwinIR: ~20 % of parameters in convolutions)
# spend their time in matmuls/attention and only pay the layout conversions.
CHANNELS_LAST_MIN_CONV_SHARE = 0.5


def _compiler_available(device: torch.device) -> tuple[bool, str]:
    """Whether torch.compile can generate code for `device` (Triton on CUDA)."""
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return False, "torch.compile is not supported on this Python/platform"
    except Exception as exc:  # noqa: BLE001 - a broken install means "do not compile"
        return False, f"torch._dynamo unavailable ({type(exc).__name__})"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton

            if not has_triton():
                return False, "Triton is not installed (pip install triton)"
        except Exception:  # noqa: BLE001
            return False, "Triton is not importable"
    return True, ""


def compile_decision(device: torch.device | str, iters: int, mode: str = "auto") -> tuple[bool, str]:
    """(compile?, reason). mode "off": never; "on": always (where a compiler exists);
    "auto": only on CUDA and only for runs of at least AUTO_COMPILE_MIN_ITERS steps."""
    if mode not in AUTO_ON_OFF:
        raise ValueError(f"compile mode must be one of {', '.join(AUTO_ON_OFF)}, got {mode!r}")
    device = torch.device(device)
    if mode == "off":
        return False, "torch.compile off (--compile off)"
    if mode == "on":
        ok, why = _compiler_available(device)
        if not ok:
            return False, f"torch.compile requested but not available: {why}; running eager"
        if device.type != "cuda":
            return True, (
                f"torch.compile on {device.type} (--compile on): expect minutes of compile "
                "time and no speed-up on CPU"
            )
        return True, "torch.compile on (--compile on)"
    # auto
    if device.type != "cuda":
        return False, f"torch.compile auto: eager on {device.type} (compile is a CUDA speed-up)"
    if iters < AUTO_COMPILE_MIN_ITERS:
        return False, (
            f"torch.compile auto: eager for {iters} steps (compiling takes minutes and repays "
            f"itself after ~{AUTO_COMPILE_MIN_ITERS} steps; --compile on forces it)"
        )
    ok, why = _compiler_available(device)
    if not ok:
        return False, f"torch.compile auto: eager ({why})"
    return True, f"torch.compile auto: compiling for {iters} steps (>= {AUTO_COMPILE_MIN_ITERS})"


def conv_parameter_share(module: nn.Module) -> float:
    """Fraction of the module's parameters that belong to 2-D convolutions."""
    total = sum(p.numel() for p in module.parameters())
    if total == 0:
        return 0.0
    conv = sum(
        p.numel()
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
        for p in m.parameters(recurse=False)
    )
    return conv / total


def channels_last_ok(module: nn.Module, sample: torch.Tensor | None = None, rtol: float = 1e-4) -> bool:
    """Whether to train `module` in channels_last memory format.

    True when at least CHANNELS_LAST_MIN_CONV_SHARE of the parameters are 2-D
    convolutions (where NHWC kernels help) and, if `sample` (a small NCHW input) is
    given, a channels_last forward of a copy runs and matches the NCHW one within
    `rtol` (some networks `.view()` conv outputs and fail, or silently misbehave, on
    NHWC strides). The module itself is not modified.
    """
    if conv_parameter_share(module) < CHANNELS_LAST_MIN_CONV_SHARE:
        return False
    if sample is None:
        return True
    import copy

    was_training = module.training
    ref_model = copy.deepcopy(module).eval()
    nhwc_model = copy.deepcopy(module).eval().to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            ref = ref_model(sample)
            got = nhwc_model(sample.contiguous(memory_format=torch.channels_last))
    except Exception:  # noqa: BLE001 - any failure means "keep NCHW"
        return False
    finally:
        module.train(was_training)
    if got.shape != ref.shape:
        return False
    scale = ref.abs().max().clamp_min(1e-12)
    return bool(((got - ref).abs().max() / scale).item() <= rtol)


def channels_last_decision(
    module: nn.Module, device: torch.device | str, mode: str = "auto", sample: torch.Tensor | None = None
) -> tuple[bool, str]:
    """(train in channels_last?, reason). "auto": on CUDA only, where `channels_last_ok`
    says the network is convolution-dominated and runs correctly in NHWC; "on" forces it
    (any device, e.g. to test it on CPU); "off" never."""
    if mode not in AUTO_ON_OFF:
        raise ValueError(f"channels_last mode must be one of {', '.join(AUTO_ON_OFF)}, got {mode!r}")
    device = torch.device(device)
    share = conv_parameter_share(module)
    if mode == "off":
        return False, "channels_last off"
    if mode == "on":
        return True, f"channels_last on (--channels-last on; {share:.0%} of parameters in convolutions)"
    if device.type != "cuda":
        return False, f"channels_last auto: NCHW on {device.type} (NHWC kernels are a CUDA speed-up)"
    if share < CHANNELS_LAST_MIN_CONV_SHARE:
        return False, f"channels_last auto: NCHW ({share:.0%} of parameters in convolutions)"
    if not channels_last_ok(module, sample):
        return False, "channels_last auto: NCHW (the network's NHWC forward fails or differs)"
    return True, f"channels_last auto: NHWC ({share:.0%} of parameters in convolutions)"


def compile_training(
    call: nn.Module, bank: Any = None, spn: Any = None, backend: str = "inductor", mode: str | None = None
) -> nn.Module:
    """torch.compile the three parts of an SPN step: returns the compiled target call;
    compiles `bank`'s batched forward (`NegativeBank.compile`) and `spn.embedding` in place.
    Compiled wrappers share the raw modules' parameters (the optimizer, the EMA updates
    and state_dict() keep using the raw modules). `mode` is torch.compile's (e.g.
    "reduce-overhead" for CUDA graphs: training shapes are static); `retrain` uses the
    default until a GPU measurement shows CUDA graphs pay (benchmarks/step_overhead.py
    --compile-mode)."""
    if bank is not None:
        bank.compile(backend, mode)
    if spn is not None:
        spn.embedding = torch.compile(spn.embedding, backend=backend, mode=mode)
    return torch.compile(call, backend=backend, mode=mode)


def precision_decision(
    amp: str | None, device: torch.device | str, supports_bf16: bool = True
) -> tuple[torch.dtype | None, torch.dtype | None, str]:
    """(target autocast dtype, negatives + embedding dtype, note); None means fp32.

    "auto" (the default) is fp32 everywhere: in fine-tuning a negative differs from the
    target by about as much as bf16 rounds it (IMDN x4 after 100 steps: |f_θ − f_θ'| 1.6e-3,
    bf16 error 1.6e-3, the SPN gradient's sign flipped on ~1/3 of the pixels;
    benchmarks/negatives_precision.py, docs/evidence.md), so bf16 negatives train on noise.
    "bf16-negatives": the negatives and the VGG embedding in bf16 on CUDA (faster, for
    long from-scratch runs where the negatives are far from the target); "bf16": the
    target's forward under bf16 autocast too; "fp32": everything fp32. On CPU everything
    is fp32 (bf16 there is slower, not faster)."""
    mode = "fp32" if amp == "none" else (amp or "auto")
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    device = torch.device(device)
    if device.type != "cuda":
        return None, None, f"fp32 on {device.type}"
    if mode in ("fp32", "auto"):
        return None, None, (f"fp32, TF32 off (--amp {mode}: bf16 would round the negatives by as much as they "
                            "differ; TF32's 10-bit mantissa is not yet measured against that gap)")
    if not supports_bf16:
        return None, None, "fp32: the architecture does not support bf16 (spandrel)"
    if mode == "bf16":
        return torch.bfloat16, torch.bfloat16, "bf16 autocast: target, negatives and embedding (--amp bf16)"
    return None, torch.bfloat16, "target fp32 (TF32 off); negatives and embedding bf16 (--amp bf16-negatives)"


def true_fp32(device: torch.device | str) -> None:
    """fp32 that is fp32 on CUDA: torch leaves cuDNN convolutions in TF32 by default (and
    matmuls follow `allow_tf32`), which rounds to a 10-bit mantissa, about as coarse as the
    difference between a fine-tuned target and its negatives. Training turns both off
    until a GPU measurement says TF32 is safe (benchmarks/gpu_check.sh has the stage)."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
