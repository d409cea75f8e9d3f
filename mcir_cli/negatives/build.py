"""How a `negatives.NegativeBank` is built, one function per stage: its settings checked,
the target's canonical tensor names, the N negatives' starting weights stacked (mix, copy,
random or frozen), the stateless skeleton on the meta device, and the N modules whose
tensors are views of the stacked storage. The bank only calls these in order."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mcir_cli.choices import NEGATIVE_INITS

RandomModel = Callable[[], nn.Module]  # a freshly initialised model of the target's architecture


def check_settings(steps: Sequence[int], init: str, weight: float, batched: bool | str) -> list[int]:
    """The update periods as ints; a ValueError for settings no bank can have."""
    steps = [int(s) for s in steps]
    if not steps:
        raise ValueError("NegativeBank needs at least one negative (steps is empty)")
    if any(s < 1 for s in steps):
        raise ValueError(f"negative update steps must be >= 1, got {steps}")
    if init not in NEGATIVE_INITS:
        raise ValueError(f"unknown negative init {init!r}; expected one of {NEGATIVE_INITS}")
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"EMA weight must be in [0, 1], got {weight}")
    if batched not in (True, False, "auto"):
        raise ValueError(f"batched must be True, False or 'auto', got {batched!r}")
    return steps


def canonical_names(target: nn.Module) -> tuple[list[str], list[str]]:
    """(parameter names, buffer names): named_parameters()/named_buffers() without
    duplicates (tied weights appear once, functional_call re-ties them). Non-floating
    parameters (rare) are treated like buffers: copied, never mixed."""
    params = dict(target.named_parameters())
    floating = [n for n, p in params.items() if p.is_floating_point()]
    others = [n for n, p in params.items() if not p.is_floating_point()]
    return floating, others + list(dict(target.named_buffers()))


def _reset_all(module: nn.Module) -> nn.Module:
    """Re-initialise every submodule that has a `reset_parameters()` method."""
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
    return module


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Run `build` with the CPU generator seeded, leaving every global RNG untouched.

    Only the CPU generator is seeded (not `torch.manual_seed`, which would also seed -- or
    lazily queue a seed for -- every CUDA device): random models are built on the CPU so
    that they do not depend on the training device.
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        return build()


_NEGATIVE_STREAM = 0x6E656761  # "nega": the negatives' random models draw from their own stream


def negative_seed(seed: int, i: int) -> int:
    """The seed of negative i's random model. Its own stream, so it never equals a seed
    that builds a target: a from-scratch target of seed s is built with seed s, and
    `seed + i` made negative 0's "random" model the target itself (a copy, not the
    authors' mix) and negative i seed s + i's initialisation."""
    state = np.random.SeedSequence([_NEGATIVE_STREAM, int(seed), int(i)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def random_params(target: nn.Module, names: list[str], seed: int, random_model: RandomModel | None) -> list[Tensor]:
    """The parameters `names` of a random model built with the CPU generator seeded to
    `seed`: `random_model()`, or a deepcopy of the target with `reset_parameters()` called
    on every submodule that has one; on the target's device and dtypes."""
    def build() -> nn.Module:
        if random_model is not None:
            return random_model()
        fresh = copy.deepcopy(target).to("cpu")
        return _reset_all(fresh)

    named = dict(_seeded(seed, build).named_parameters())
    refs = dict(target.named_parameters())
    out = []
    for k in names:
        ref = refs[k]
        if k not in named or named[k].shape != ref.shape:
            raise ValueError(
                f"random_model() does not match the target: parameter {k!r} "
                f"{'missing' if k not in named else tuple(named[k].shape)} vs {tuple(ref.shape)}"
            )
        out.append(named[k].detach().to(device=ref.device, dtype=ref.dtype))
    return out


@torch.no_grad()
def initial_weights(
    target: nn.Module, names: tuple[list[str], list[str]], n: int, init: str, mix: float, seed: int,
    random_model: RandomModel | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(params, buffers) of N negatives, stacked (leading dim N), requires_grad=False.
    "copy"/"frozen": the target's parameters; "random": random model i (seeded to
    `negative_seed(seed, i)`); "mix": mix * random model i + (1 - mix) * the target's. Buffers: the
    target's, in every negative."""
    param_names, buffer_names = names
    t_params = dict(target.named_parameters())
    theta = [t_params[k].detach() for k in param_names]
    rows: list[list[Tensor]] = []
    for i in range(n):
        if init in ("copy", "frozen"):
            rows.append([p.clone() for p in theta])
            continue
        rand = random_params(target, param_names, negative_seed(seed, i), random_model)
        if init == "random":
            rows.append(rand)
        else:  # mix
            rows.append([mix * r + (1.0 - mix) * p for r, p in zip(rand, theta)])
    params = {k: torch.stack([rows[i][j] for i in range(n)]).contiguous() for j, k in enumerate(param_names)}
    src = {**t_params, **dict(target.named_buffers())}
    buffers = {k: torch.stack([src[k].detach()] * n).clone() for k in buffer_names}
    for t in (*params.values(), *buffers.values()):
        t.requires_grad_(False)
    return params, buffers


def meta_copy(target: nn.Module) -> nn.Module:
    """The target's structure without its weights (every tensor on the meta device, eval
    mode): the vmap base and the template of the loop path's modules. Every parameter and
    buffer is swapped for a meta tensor in the memo, so deepcopy never duplicates real
    storage."""
    memo: dict[int, Any] = {}
    for p in target.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
    for b in target.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    skel = copy.deepcopy(target, memo)
    skel.eval()
    for p in skel.parameters():
        p.requires_grad_(False)
    return skel


def _aliases(target: nn.Module) -> dict[str, str]:
    """Every (possibly tied) parameter and buffer name -> its canonical name."""
    alias: dict[str, str] = {}
    canon = {id(p): k for k, p in target.named_parameters()}
    for k, p in target.named_parameters(remove_duplicate=False):
        alias[k] = canon[id(p)]
    canon_b = {id(b): k for k, b in target.named_buffers()}
    for k, b in target.named_buffers(remove_duplicate=False):
        alias[k] = canon_b[id(b)]
    return alias


def view_modules(target: nn.Module, skeleton: nn.Module, params: dict[str, Tensor],
                 buffers: dict[str, Tensor], n: int) -> list[nn.Module]:
    """N modules (eval mode) whose parameters/buffers are views of the stacked storage."""
    alias = _aliases(target)
    modules = []
    for i in range(n):
        m = copy.deepcopy(skeleton)
        for k, src in alias.items():
            owner_name, _, leaf = k.rpartition(".")
            owner = m.get_submodule(owner_name)
            if src in params:
                owner._parameters[leaf] = nn.Parameter(params[src][i], requires_grad=False)
            elif leaf in owner._parameters:  # non-float parameter
                owner._parameters[leaf] = nn.Parameter(buffers[src][i], requires_grad=False)
            else:
                owner._buffers[leaf] = buffers[src][i]
        m.eval()
        modules.append(m)
    return modules
