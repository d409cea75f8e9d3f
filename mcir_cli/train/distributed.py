"""torchrun / DDP support: one process per device, the same command as a single run.

`DistContext.from_env()` reads the variables torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK) and picks the backend (nccl on CUDA, gloo on CPU). Each rank keeps its own
negatives; they stay identical because DDP keeps the target's parameters identical, and
`check_sync` verifies that with a checksum every `sync_every` steps.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mcir_cli.errors import McirError

log = logging.getLogger("mcir")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    sync_every: int = 50

    @classmethod
    def single(cls) -> DistContext:
        return cls()

    @classmethod
    def from_env(cls, device: str = "auto", sync_every: int = 50) -> DistContext:
        """A context from torchrun's environment; a single process when it is absent."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(sync_every=sync_every)
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device != "cpu" and torch.cuda.is_available()
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local)
        dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        return cls(rank, world, local, dev, backend, sync_every)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size <= 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean(self, values: list[float]) -> list[float]:
        """The mean of each value over ranks (the values themselves on one process)."""
        if self.world_size <= 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return (t / self.world_size).tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank (a stop signal, say)."""
        if self.world_size <= 1:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def agree(self, value: str) -> str:
        """Rank 0's `value` on every rank: for what only one rank may choose (a run
        folder named after the clock)."""
        if self.world_size <= 1:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def check_sync(self, parts, step: int, force: bool = False) -> list[list[float]] | None:
        """Stop with an error if the ranks' target or negatives have drifted apart.
        Returns every rank's checksum when a check ran (None otherwise)."""
        if self.world_size <= 1 or (not force and step % self.sync_every):
            return None
        local = checksum(parts)
        gathered = [torch.zeros_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        bad = [r for r, g in enumerate(gathered) if not torch.equal(g, gathered[0])]
        if bad:
            raise McirError(
                f"ranks {bad} drifted from rank 0 at step {step} (target or negative weights "
                "differ): stopping; check for non-deterministic code or hardware faults"
            )
        return [g.tolist() for g in gathered]

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


@torch.no_grad()
def checksum(parts) -> torch.Tensor:
    """Two float64 sums over the target's and the negatives' parameters (plain and
    position-weighted, so swapped values are caught too)."""
    tensors = [p.detach() for p in parts.model.parameters()]
    if parts.bank is not None:
        tensors += list(parts.bank.params.values())
    total = torch.zeros(2, dtype=torch.float64, device=tensors[0].device)
    for i, t in enumerate(tensors):
        flat = t.double().flatten()
        total[0] += flat.sum()
        total[1] += (flat * (i + 1)).sum() + flat.abs().sum()
    return total
