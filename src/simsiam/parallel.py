"""Data-parallel training under torchrun, on PyTorch's own engine (torch.distributed + DDP): every
distributed helper of simsiam lives here.

- The process group: `process_group` joins torchrun's (NCCL with GPUs, gloo on CPUs) and ends it;
  `rank_and_world`, `is_main` (rank 0 logs and writes), `barrier`, `broadcast_object`, `main_first`.

- Collectives behind small guards: in one process (no group) they are identities, so every loss
  and the loop run without torch.distributed.
- The global batch: `--batch-size` B is the total; each of the W ranks takes B / W images of every
  step (`rank_slice`) from the epoch's permutation. Every rank holds the same generator (seeded
  with --seed) and makes the same draws as one process would: the permutation, and the
  augmentation parameters of the whole global batch, of which it applies its own rows
  (`Augment(part=(rank, W))`). So no two ranks use the same crops, and a run does not depend on
  W: two processes train what one does (up to float summation order), and a checkpoint resumes
  under any number of processes.
- SyncBN (on by default when W > 1, as the official code): PyTorch's `nn.SyncBatchNorm` on GPUs;
  on CPUs, where PyTorch has none, `AllReduceBatchNorm` sums the batch statistics over the ranks.
- `wrap`: DDP around the method (hooks and attributes stay on the unwrapped method), then
  `torch.compile` with --compile.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import ConfigError

# --- the process group and this process's place in it ------------------------------------------


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank 0, the one process that logs and writes (torchrun's RANK, also before the group exists)."""
    return rank_and_world()[0] == 0 and os.environ.get("RANK", "0") == "0"


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Inside: torchrun's process group when this process was started by it (see
    `init_distributed`), ended on the way out if it was created here."""
    own = init_distributed(device)
    try:
        yield
    finally:
        if own:
            shutdown_distributed()


def init_distributed(device: torch.device) -> bool:
    """Join torchrun's process group when this process was started by it with WORLD_SIZE > 1 and
    no group exists yet; on a `device` of type cuda each process then uses GPU LOCAL_RANK. Returns
    whether this call created the group (its caller then ends it with `shutdown_distributed`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run one process (without torchrun)")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started more processes per node than there are GPUs ({torch.cuda.device_count()}); "
                "lower --nproc_per_node"
            )
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return True


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Every process waits here for the others (a no-op in one process)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` (any picklable value) on every process."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the body first (a download, a decode cache), then the others (which find it done)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


# --- collectives and data-parallel modules -------------------------------------------------------


class _AllGather(torch.autograd.Function):
    """Forward: every rank's x (same shape) concatenated in rank order. Backward: this rank's slice
    of the gradient summed over the ranks (each rank's loss used every slice)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


class _AllReduceSum(torch.autograd.Function):
    """Forward: x summed over the ranks. Backward: the gradient summed over the ranks (every rank's
    loss depends on the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' `x` concatenated in rank order; gradients flow back to each rank's own slice."""
    if rank_and_world()[1] == 1:
        return x
    return _AllGather.apply(x)


def sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """`x` summed over the ranks, differentiably (SyncBN's statistics)."""
    if rank_and_world()[1] == 1:
        return x
    return _AllReduceSum.apply(x)


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """`x` summed over ranks. The gradient goes to this rank's term only (the other ranks' terms
    are constants here): exact on one process, and what SwAV needs for its detached codes."""
    if rank_and_world()[1] == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    return x + (total - x.detach())


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over the ranks; `x` itself in one process."""
    world = rank_and_world()[1]
    if world == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    return total / world


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `x` (N_r x ...), concatenated in rank order, on every rank (no gradient);
    the ranks may hold different numbers of rows."""
    world = rank_and_world()[1]
    if world == 1:
        return x
    counts = [torch.zeros((), dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor(len(x), device=x.device))
    most = int(max(c.item() for c in counts))
    padded = torch.zeros((most, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)])


def broadcast(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's `x`, in place on every rank."""
    if rank_and_world()[1] > 1:
        dist.broadcast(x, 0)
    return x


# --- the global batch -------------------------------------------------------------------------


def rank_slice(order: torch.Tensor, global_batch: int) -> torch.Tensor:
    """This rank's part of every global batch of `order` (whole batches only, as drop_last)."""
    rank, world = rank_and_world()
    if world == 1:
        return order
    local = global_batch // world
    steps = len(order) // global_batch
    return order[: steps * global_batch].view(steps, global_batch)[:, rank * local : (rank + 1) * local].reshape(-1)


def shard(n: int) -> torch.Tensor:
    """This rank's contiguous share of indices 0..n-1 (for evaluation: the shares cover all, in order)."""
    rank, world = rank_and_world()
    return torch.arange(n).tensor_split(world)[rank]


# --- SyncBN and the wrappers -------------------------------------------------------------------


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch: per-channel sums over
    every rank (two all-reduces: the mean, then the centred squares, in fp32), with gradients
    through them. For CPU processes (gloo), where
    `nn.SyncBatchNorm` does not run; the same state_dict as BatchNorm1d/2d."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N x C x ...), got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or rank_and_world()[1] == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        n = torch.tensor(float(xf.numel() // xf.shape[1]), device=x.device)
        dist.all_reduce(n)
        mean = sum_with_grad(xf.sum(dims)) / n
        centred = xf - mean.view(shape)
        var = sum_with_grad(centred.square().sum(dims)) / n  # biased, as BN normalises
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)  # unbiased, as BN
        return y.to(x.dtype)


def convert_sync_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `module` as a synchronised one: nn.SyncBatchNorm on GPUs,
    AllReduceBatchNorm elsewhere. Parameters and buffers are kept (the same tensors)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        bn = AllReduceBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            bn.weight, bn.bias = module.weight, module.bias
        bn.running_mean, bn.running_var = module.running_mean, module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        module.add_module(name, convert_sync_bn(child, device))
    return module


def broadcast_bn_stats(module: nn.Module) -> None:
    """Rank 0's BatchNorm running statistics on every rank (what evaluation in eval mode uses):
    without SyncBN each rank's drift apart. Only BN buffers: SwAV's queue stays per rank."""
    if rank_and_world()[1] == 1:
        return
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for buf in m.buffers(recurse=False):
                dist.broadcast(buf, 0)


def wrap(method: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    """What the training step calls: DDP around the method when there are several processes
    (buffers not broadcast: BN statistics are synchronised or evaluated from rank 0, and SwAV's
    queue is each rank's own), then torch.compile with `compile`."""
    model = method
    if rank_and_world()[1] > 1:
        ids = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda"
            else None
        )
        with warnings.catch_warnings():  # torch >= 2.14 deprecates the flag, and says to keep it for rank-local buffers
            warnings.filterwarnings("ignore", message=".*broadcast_buffers", category=FutureWarning)
            model = nn.parallel.DistributedDataParallel(method, device_ids=ids, broadcast_buffers=False)
    if compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model
