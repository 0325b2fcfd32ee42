"""Collectives behind small guards: on one process (CPU, one GPU, no process group) they are
identities, so every loss runs without torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' `x` concatenated in rank order; gradients flow back to each rank's own slice."""
    if rank_and_world()[1] == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """`x` summed over ranks. The gradient goes to this rank's term only (the other ranks' terms
    are constants here): exact on one process, and what SwAV needs for its detached codes."""
    if rank_and_world()[1] == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    return x + (total - x.detach())
