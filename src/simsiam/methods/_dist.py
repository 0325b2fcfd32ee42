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


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no gradient: used on detached statistics)."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(x)
    return x
