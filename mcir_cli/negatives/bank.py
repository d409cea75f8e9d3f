"""EMA negative models for model contrastive learning (MCIR).

A `NegativeBank` holds N "negative" models: exponential moving averages of the target's
own history. After the optimizer step that completes step t, negative i is updated when
t % s_i == 0:

    theta'_i <- w * theta'_i + (1 - w) * theta        (w = 0.1 by default)

The N negatives' floating parameters and all buffers are stored STACKED (leading dim N).
`forward(x)` runs all N with one `torch.vmap` over `torch.func.functional_call` on a
stateless base copy (on the meta device). Architectures that vmap cannot trace (custom
`autograd.Function`s such as NAFNet's LayerNorm2d, data-dependent control flow, in-place
writes to the input) fall back to running N module copies in a loop; those copies'
parameters are views of the same stacked storage, so both paths always see the same
weights and an EMA update is a single in-place op per parameter.

The negatives never appear in the target's parameters: the bank is a plain class, and
every stacked tensor has requires_grad=False. `negative_init.py` builds it (starting
weights, skeleton, views); this module holds its schedule, updates, forward and state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mcir_cli.negatives.build import (
    RandomModel,
    canonical_names,
    check_settings,
    initial_weights,
    meta_copy,
    view_modules,
)

log = logging.getLogger("mcir")

STATE_FORMAT = 1


class NegativeBank:
    """N EMA negatives of a target model, stacked for one batched (vmap) forward.

    Parameters
    ----------
    target: the model being trained (pass the raw module, not a DDP / torch.compile
        wrapper: parameter names must match the model's own).
    steps: the update period s_i of each negative (e.g. (100, 500, 1000, 2000)).
    weight: EMA weight w of the old negative (0.1 in the paper's code).
    init: "mix" (theta' = mix * theta_rand + (1 - mix) * theta, the authors' code),
        "copy" (theta' = theta), "random" (a fixed random model, never updated),
        "frozen" (a fixed copy of the starting model, never updated).
    mix: alpha of the "mix" init.
    seed: random model i is built with the CPU generator seeded to seed + i.
    random_model: builds a freshly initialised model of the target's architecture; when
        None, a deepcopy of the target has `reset_parameters()` called on every submodule
        that has one (parameters initialised elsewhere, e.g. SwinIR's relative-position
        bias tables, then keep the target's values).
    batched: "auto" tries vmap and falls back to the loop on the first failure; True
        forces vmap (errors propagate); False forces the loop.
    """

    def __init__(
        self,
        target: nn.Module,
        steps: Sequence[int],
        weight: float = 0.1,
        init: str = "mix",
        mix: float = 0.1,
        seed: int = 0,
        random_model: RandomModel | None = None,
        batched: bool | str = "auto",
    ) -> None:
        self.steps = check_settings(steps, init, weight, batched)
        self.weight = float(weight)
        self.init = init
        self.mix = float(mix)
        self.seed = int(seed)
        self.target = target
        self.arch_name = type(target).__name__
        self._batched: bool | str = batched
        self._warned = False
        self._version = 0  # bumped whenever the stacked weights change
        self._cast_cache: tuple | None = None
        self._batched_fn: Callable[..., Tensor] | None = None
        self.compile_backend: str | None = None
        self._compile_mode: str | None = None
        self.fallback_reason: str | None = None
        self.param_names, self.buffer_names = canonical_names(target)
        self.params, self.buffers = initial_weights(target, (self.param_names, self.buffer_names), self.num,
                                                    init, self.mix, self.seed, random_model)
        self._skeleton = meta_copy(target)  # the vmap base and the loop path's template
        self._modules: list[nn.Module] = []
        self._rebuild_views()

    def _rebuild_views(self) -> None:
        """Make N modules whose parameters/buffers are views of the stacked storage."""
        self._modules = view_modules(self.target, self._skeleton, self.params, self.buffers, self.num)

    # ------------------------------------------------------------------ schedule
    @property
    def num(self) -> int:
        return len(self.steps)

    @property
    def updates_enabled(self) -> bool:
        return self.init in ("mix", "copy")

    def due(self, step: int) -> list[int]:
        """Indices i with step % s_i == 0 (step = completed optimizer steps, >= 1)."""
        if step < 1:
            return []
        return [i for i, s in enumerate(self.steps) if step % s == 0]

    @torch.no_grad()
    def update(self, step: int, target: nn.Module | None = None) -> list[int]:
        """EMA-update the negatives due at `step`; return their indices.

        Call after `optimizer.step()` with step = number of completed steps. `target`
        defaults to the module given at construction (pass the unwrapped model if the
        live one was replaced, e.g. after loading a checkpoint into a new object).
        """
        if not self.updates_enabled:
            return []
        idx = self.due(step)
        if not idx:
            return []
        tgt = self.target if target is None else target
        t_params = dict(tgt.named_parameters())
        t_all = {**t_params, **dict(tgt.named_buffers())}
        theta = [t_params[k].detach() for k in self.param_names]
        bufs_src = [t_all[k].detach() for k in self.buffer_names]
        end_w = 1.0 - self.weight
        for i in idx:
            rows = [self.params[k][i] for k in self.param_names]
            if rows:
                torch._foreach_lerp_(rows, theta, end_w)
            if self.buffer_names:
                dst = [self.buffers[k][i] for k in self.buffer_names]
                torch._foreach_copy_(dst, bufs_src)
        self._version += 1
        return idx

    # ------------------------------------------------------------------ forward
    @property
    def batched(self) -> bool | str:
        """True / False / "auto" (not yet decided)."""
        return self._batched

    def _low_precision(self, dtype: torch.dtype) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Stacked params/buffers cast to `dtype`, cached until the next EMA update.

        Autocast does not reach convolutions and batch norm inside torch.vmap (measured
        with torch 2.14: EDSR's batched "bf16" output equalled fp32), so the batched path
        casts weights and inputs itself (and keeps autocast on for the rest); fp32 masters
        keep the EMA exact."""
        key = (dtype, self._version)
        if self._cast_cache is None or self._cast_cache[0] != key:
            def cast(d: dict[str, Tensor]) -> dict[str, Tensor]:
                return {k: v.to(dtype) if v.is_floating_point() else v for k, v in d.items()}

            self._cast_cache = (key, cast(self.params), cast(self.buffers))
        return self._cast_cache[1], self._cast_cache[2]

    def compile(self, backend: str = "inductor", mode: str | None = None) -> None:
        """torch.compile the batched forward: all N negatives become one compiled graph.
        The loop fallback stays eager (a compile failure under batched="auto" falls back
        to it like any other vmap failure)."""
        self.compile_backend, self._compile_mode = backend, mode
        self._batched_fn = None

    def _batched_call(self) -> Callable[..., Tensor]:
        if self._batched_fn is None:
            skel = self._skeleton

            def one(p: dict[str, Tensor], b: dict[str, Tensor], inp: Tensor) -> Tensor:
                return torch.func.functional_call(skel, (p, b), (inp,))

            fn = torch.vmap(one, in_dims=(0, 0, None))
            if self.compile_backend is not None:
                fn = torch.compile(fn, backend=self.compile_backend, mode=self._compile_mode)
            self._batched_fn = fn
        return self._batched_fn

    def _vmap_forward(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        # x is cloned (or cast): a model that writes into its input in place (RCAN) must
        # not change the caller's tensor.
        batched = self._batched_call()
        if dtype is None:
            return batched(self.params, self.buffers, x.clone())
        params, buffers = self._low_precision(dtype)
        # autocast as well: it still casts what the model computes in fp32 on its own
        # (e.g. SwinIR's attention mask) before matmuls meet the low-precision weights
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            return batched(params, buffers, x.to(dtype))

    def _loop_forward(self, x: Tensor) -> Tensor:
        # Each negative gets its own copy of the input (some models, e.g. RCAN, scale
        # their input in place).
        return torch.stack([m(x.clone()) for m in self._modules])

    @torch.no_grad()
    def forward(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Outputs of all negatives for input x (B, C, H, W) -> (N, B, C', H', W').

        `dtype` (e.g. torch.bfloat16): the batched path runs in pure `dtype` (weights
        cast once per update), the loop path under torch.autocast; the result is cast back
        to x's dtype.
        """
        return self._forward(x, dtype).to(x.dtype)

    __call__ = forward

    def _loop(self, x: Tensor, dtype: torch.dtype | None) -> Tensor:
        if dtype is None:
            return self._loop_forward(x)
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            return self._loop_forward(x)

    def _forward(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        if self._batched is False:
            return self._loop(x, dtype)
        if self._batched is True:
            return self._vmap_forward(x, dtype)
        try:  # "auto"
            return self._vmap_forward(x, dtype)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means "use the loop"
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            if not self._warned:
                log.warning(
                    "negatives: batched (vmap) forward does not work for %s (%s); "
                    "running the %d negatives one after another instead",
                    self.arch_name, reason, self.num,
                )
                self._warned = True
            self._batched = False
            self.fallback_reason = reason
            return self._loop(x, dtype)

    # ------------------------------------------------------------------ inspection / state
    def module(self, i: int) -> nn.Module:
        """Negative i as a module (eval mode). Its tensors are live views of the bank's
        storage: later updates show through; do not modify it."""
        return self._modules[i]

    def parameters(self) -> list[Tensor]:
        """The stacked parameter tensors (for memory accounting; never optimise these)."""
        return list(self.params.values())

    def to(self, device: torch.device | str) -> NegativeBank:
        self.params = {k: v.to(device) for k, v in self.params.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        self._version += 1
        self._rebuild_views()
        return self

    @property
    def device(self) -> torch.device:
        for t in (*self.params.values(), *self.buffers.values()):
            return t.device
        return torch.device("cpu")

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": {
                "steps": list(self.steps),
                "weight": self.weight,
                "init": self.init,
                "mix": self.mix,
                "seed": self.seed,
                "arch": self.arch_name,
            },
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "buffers": {k: v.detach().clone() for k, v in self.buffers.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore stacked tensors (in place, keeping the current device)."""
        cfg = sd.get("config", {})
        if list(cfg.get("steps", self.steps)) != list(self.steps):
            raise ValueError(
                f"negative bank state has steps {cfg.get('steps')}, this bank has {self.steps}"
            )
        for key, store in (("params", self.params), ("buffers", self.buffers)):
            saved = sd[key]
            missing = sorted(set(store) - set(saved))
            extra = sorted(set(saved) - set(store))
            if missing or extra:
                raise ValueError(
                    f"negative bank state does not match the model: {key} missing {missing[:5]}, "
                    f"unexpected {extra[:5]}"
                )
            for k, v in store.items():
                if saved[k].shape != v.shape:
                    raise ValueError(
                        f"negative bank state: {key} {k!r} has shape {tuple(saved[k].shape)}, "
                        f"expected {tuple(v.shape)}"
                    )
                v.copy_(saved[k])
        # weight / init / mix come from the saved run so a resume continues identically.
        self.weight = float(cfg.get("weight", self.weight))
        self.init = cfg.get("init", self.init)
        self.mix = float(cfg.get("mix", self.mix))
        self._version += 1

    def __repr__(self) -> str:
        return (
            f"NegativeBank({self.arch_name}, steps={self.steps}, weight={self.weight}, "
            f"init={self.init!r}, mix={self.mix}, batched={self._batched!r})"
        )
