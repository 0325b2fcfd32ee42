"""BYOL (Grill et al., NeurIPS 2020) as the SimSiam paper compares it (Sec. 6, Table 4).

    online:  z = f(x) (backbone + projector), p = h(z)        trained by SGD
    target:  z' = f'(x), f' an EMA of f, no gradient          f' <- tau f' + (1 - tau) f per step
    L = (2 - 2 cos(p1, z2')) + (2 - 2 cos(p2, z1'))           symmetric (BYOL Eq. 2)
    tau = 1 - (1 - tau_base) (cos(pi progress) + 1) / 2       tau_base 0.99 -> 1 at the end

The heads are SimSiam's (same projector and predictor for every method in the comparison).
`.backbone` is the online backbone: it is what gets evaluated and exported.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .simsiam import prediction_mlp, projection_mlp, z_std


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()


def ema_tau(tau_base: float, progress: float) -> float:
    return 1 - (1 - tau_base) * (math.cos(math.pi * progress) + 1) / 2


class BYOL(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int = 2048, proj_hidden: int = 2048,
                 proj_layers: int = 3, pred_dim: int = 512, tau_base: float = 0.99):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_mlp(feature_dim, proj_hidden, dim, proj_layers)
        self.encoder = nn.Sequential(backbone, self.projector)  # online f
        self.predictor = prediction_mlp(dim, pred_dim)  # h
        self.target = copy.deepcopy(self.encoder).requires_grad_(False)  # f', same init as f
        self.tau_base = tau_base
        self.dim = dim

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, **unused) -> dict[str, torch.Tensor]:
        z1, z2 = self.encoder(x1), self.encoder(x2)  # NxC each
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1, t2 = self.target(x1), self.target(x2)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return {"loss": loss, "z_std": z_std(z1), "z1": z1, "z2": z2}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """f' <- tau f' + (1 - tau) f after every optimizer step; BN running statistics copied."""
        tau = ema_tau(self.tau_base, progress)
        for t, o in zip(self.target.parameters(), self.encoder.parameters()):
            t.mul_(tau).add_(o.detach(), alpha=1 - tau)
        for t, o in zip(self.target.buffers(), self.encoder.buffers()):
            t.copy_(o)

    def param_groups(self) -> list[dict]:
        return [{"name": "encoder", "params": list(self.encoder.parameters()), "fix_lr": False},
                {"name": "predictor", "params": list(self.predictor.parameters()), "fix_lr": True}]


def build(cfg, backbone: nn.Module, feature_dim: int) -> BYOL:
    return BYOL(backbone, feature_dim, dim=cfg.dim, proj_hidden=cfg.proj_hidden, proj_layers=cfg.proj_layers,
                pred_dim=cfg.pred_dim, tau_base=cfg.ema_tau)


# BYOL's colour recipe (saturation 0.2) and asymmetric solarize (view 2: 0.2). Its asymmetric blur
# (1.0 / 0.1) is not set here, because 32 px presets have no blur: on ImageNet add
# --blur-p 1.0 --blur-p2 0.1. BYOL has no fixed-predictor-lr trick.
DEFAULTS = dict(jitter=(0.4, 0.4, 0.2, 0.1), solarize_p2=0.2, fix_pred_lr=False)
