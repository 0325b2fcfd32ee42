"""LARS as in SimSiam's official linear evaluation: SGD wrapped by apex's LARC with
trust_coefficient 0.001 and clip=False (no apex needed).

Per parameter: local_lr = eta * ||w|| / (||g|| + wd * ||w||) when both norms are non-zero (else 1),
then SGD with momentum on (g + wd * w) * local_lr. Applied to every parameter, biases included, as LARC does.
"""

from __future__ import annotations

import torch


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
