"""Optimisers and the learning-rate schedule.

Pretraining: SGD at lr = base_lr x batch/256 with weight decay on every parameter (Sec. 3), a
half-cosine per epoch (official code) or per step, an optional linear warm-up, and the predictor's
groups at a fixed lr (`fix_pred_lr`, Table 1c). The linear probe's LARS takes the same cosine.

LARS (`LARS`) as in SimSiam's official linear evaluation: SGD wrapped by apex's LARC with
trust_coefficient 0.001 and clip=False (no apex needed). Per parameter: local_lr =
eta * ||w|| / (||g|| + wd * ||w||) when both norms are non-zero (else 1), then SGD with momentum on
(g + wd * w) * local_lr. Applied to every parameter, biases included, as LARC does.
"""

from __future__ import annotations

import math

import torch

from .config import Config
from .methods.base import Method


def build_optimizer(method: Method, cfg: Config) -> torch.optim.SGD:
    """SGD at lr = base_lr x batch/256 on every group; weight decay on all parameters (Sec. 3)."""
    groups = [
        dict(g, lr=cfg.scaled_lr, fix_lr=g["fix_lr"] and cfg.fix_pred_lr) for g in method.param_groups() if g["params"]
    ]
    return torch.optim.SGD(groups, lr=cfg.scaled_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def cosine_lr(base_lr: float, progress: float) -> float:
    """Half-cosine from base_lr at progress 0 to 0 at progress 1 (official code)."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def global_step(epoch: int, step: int, steps_per_epoch: int) -> int:
    """Steps done once `step` steps of epoch `epoch` (0-based) are done: the one place this
    arithmetic lives (schedules, checkpoints, the progress of a method's hook, TensorBoard)."""
    return epoch * steps_per_epoch + step


def lr_at(cfg: Config, epoch: int, step: int, steps_per_epoch: int) -> tuple[float, float]:
    """(lr of the decayed groups, lr of the fixed ones) at this step. No warm-up by default
    (official code); `warmup_epochs` ramps both linearly per step, then the cosine runs over the
    remaining epochs, per epoch or per step (`schedule`)."""
    base, warm = cfg.scaled_lr, cfg.warmup_epochs
    done = global_step(epoch, step, steps_per_epoch)  # steps before this one
    if done < warm * steps_per_epoch:
        lr = base * (done + 1) / (warm * steps_per_epoch)
        return lr, lr
    t = epoch if cfg.schedule == "epoch" else done / steps_per_epoch
    return cosine_lr(base, (t - warm) / (cfg.epochs - warm)), base


def set_lr(optimizer: torch.optim.Optimizer, lr: float, fixed_lr: float | None = None) -> None:
    """`lr` on every group; `fixed_lr` instead on the groups marked fix_lr."""
    for group in optimizer.param_groups:
        group["lr"] = fixed_lr if fixed_lr is not None and group.get("fix_lr") else lr


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                local_lr = torch.where(
                    (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / (g_norm + wd * w_norm), torch.ones_like(w_norm)
                )
                d = p.grad.add(p, alpha=wd).mul_(local_lr)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss
