"""Running under ``torchrun``: process group, which rank writes, and checks across ranks.

On CUDA each rank binds its GPU (``torch.cuda.set_device(LOCAL_RANK)``) before joining a group
whose backend covers both kinds of tensor, ``"cpu:gloo,cuda:nccl"`` (an NCCL-only group cannot
reduce a CPU tensor: "No backend type associated with device type cpu"), with ``device_id`` and a
timeout long enough for rank 0's checkpoints (``train.ddp_timeout_min``).

``medp2p train`` runs unchanged under ``torchrun --nproc_per_node N``: the generator and the
discriminator are wrapped in DistributedDataParallel (gradients averaged across ranks), each rank
draws its own stream of slices (seeded by ``(train.seed, rank)``: a distributed sampler for
weighted sampling with replacement), and only rank 0 writes checkpoints, logs and previews.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world`` (1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives put their tensors

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

    def any(self, flag: bool | torch.Tensor) -> bool:
        """True when ``flag`` is True on any rank (a collective: every rank must call it); one read back."""
        if not self.enabled:
            return bool(flag)
        t = (
            flag.detach().float().reshape(1).to(self.device)
            if isinstance(flag, torch.Tensor)
            else torch.tensor([float(flag)], device=self.device)
        )
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def all_gather_rows(self, rows: list[Any]) -> list[Any]:
        """Every rank's ``rows`` lists, concatenated in rank order (a collective)."""
        return [row for part in self.gather(rows) for row in part]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a collective)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def process_group_backend(cuda: bool) -> str:
    """The backend string of a run's process group: CPU and CUDA tensors both covered on GPUs.

    Example:
        >>> process_group_backend(True), process_group_backend(False)
        ('cpu:gloo,cuda:nccl', 'gloo')
    """
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init_distributed(device_name: str, timeout_min: float = 30.0) -> Dist:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    On CUDA: ``set_device(LOCAL_RANK)`` first, then ``init_process_group("cpu:gloo,cuda:nccl",
    device_id=...)``; on CPU: gloo. ``timeout_min`` bounds how long a rank waits in a collective
    (rank 0 writing a large checkpoint while the others wait at the barrier).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = device_name.strip().lower()
    use_cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    device_id = None
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_id = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(process_group_backend(use_cuda), timeout=timedelta(minutes=timeout_min), device_id=device_id)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, f"cuda:{local_rank}" if use_cuda else "cpu")


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
