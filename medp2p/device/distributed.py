"""Running under ``torchrun``: process group, which rank writes, and checks across ranks.

``medp2p train`` runs unchanged under ``torchrun --nproc_per_node N``: the generator and the
discriminator are wrapped in DistributedDataParallel (gradients averaged across ranks), each rank
draws its own stream of slices (seeded by ``(train.seed, rank)``: a distributed sampler for
weighted sampling with replacement), and only rank 0 writes checkpoints, logs and previews.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world`` (1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains (under torchrun)."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (a no-op in a single process)."""
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is True on any rank (a collective: every rank must call it)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a collective)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def init_distributed(device_name: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); gloo on CPU, NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters, to compare replicas across ranks.

    Buffers are left out: BatchNorm running statistics are updated locally after DDP broadcasts
    them, so they legitimately differ between ranks at the end of a step.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
