"""The MLP heads every method shares (SimSiam Sec. 3), the collapse statistic, and the moving
average of a target network (BYOL's target; a momentum encoder for MoCo)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..options import Choice

HEAD_BN = Choice(("none", "hidden", "default", "all"))  # where the heads have BN (Table 3)


def projection_mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 3, bn: str = "default") -> nn.Sequential:
    """BN on every fc, output included (BN without affine); no ReLU on the output (Sec. 3).

    The official code keeps the output fc's bias but freezes it ("hack: not use bias as it is
    followed by BN"); BN cancels any bias, so we build the fc without one. `bn` is Table 3's
    ablation: "none" (no BN, so fcs get biases), "hidden" (no BN on the output), "default"/"all".
    """
    hidden_bn, out_bn = bn != "none", bn in ("default", "all")
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [
            nn.Linear(dim, hidden, bias=not hidden_bn),
            *([nn.BatchNorm1d(hidden)] if hidden_bn else []),
            nn.ReLU(inplace=True),
        ]
        dim = hidden
    mods += [nn.Linear(dim, out_dim, bias=not out_bn), *([nn.BatchNorm1d(out_dim, affine=False)] if out_bn else [])]
    return nn.Sequential(*mods)


def prediction_mlp(dim: int, pred_dim: int, bn: str = "default") -> nn.Sequential:
    """Bottleneck h: BN on the hidden fc only; the output fc has a bias and no BN (Sec. 3).
    Table 3 (d), bn="all", adds BN to the output ("unstable"); bn="none" drops the hidden BN."""
    hidden_bn = bn != "none"
    return nn.Sequential(
        nn.Linear(dim, pred_dim, bias=not hidden_bn),
        *([nn.BatchNorm1d(pred_dim)] if hidden_bn else []),
        nn.ReLU(inplace=True),
        nn.Linear(pred_dim, dim),
        *([nn.BatchNorm1d(dim)] if bn == "all" else []),
    )


F_ = TypeVar("F_", bound=Callable[..., torch.Tensor])


def float32(loss: F_) -> F_:
    """Run `loss` in float32 outside autocast: a bf16 run's heads end in bf16, its loss (and the
    logits of NT-Xent, a matmul that autocast would run in bf16) is computed in fp32. A no-op in
    fp32 runs (`.float()` of a float32 tensor is the tensor itself)."""

    @functools.wraps(loss)
    def run(*args, **kwargs):
        device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device, enabled=False):
            return loss(*(a.float() if isinstance(a, torch.Tensor) else a for a in args), **kwargs)

    return run  # type: ignore[return-value]


def z_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse statistic (Fig. 2): per-channel std of z/||z|| over the batch, averaged over
    channels. About 1/sqrt(d) when the outputs spread over the sphere, 0 when collapsed."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


def ema_tau(tau_base: float, progress: float) -> float:
    """BYOL's rate: tau_base at progress 0, raised to 1 by a cosine at progress 1."""
    return 1 - (1 - tau_base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau target + (1 - tau) online, parameter by parameter. Buffers (BN running
    statistics) are copied: in training the target's BN uses batch statistics, so these only
    matter if the target itself is evaluated."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(tau).add_(o, alpha=1 - tau)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)
