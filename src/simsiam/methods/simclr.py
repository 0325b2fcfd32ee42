"""SimCLR (Chen et al., ICML 2020), as the SimSiam paper compares it (Sec. 6, Table 4, Sec. 6.2).

    z1, z2 = f(x1), f(x2)        f = backbone + projection MLP
    L = NT-Xent over the 2N views: each view's positive is the other view of its image, the other
        2N - 2 views are its negatives; logits = cos / T, cross-entropy (SimCLR Eq. 1)

The paper's Table 4 runs every method as its own reproduction ("repro.+": better than the
original paper) with two 224 px views; here every method gets SimSiam's projection MLP (3 layers
on ImageNet, 2 on CIFAR, BN on every layer as in SimCLR's own head), so that only the loss differs.
In DDP the negatives are gathered from every rank with their gradients (`parallel.gather_with_grad`).
Sec. 6.2's hubs: `--predictor` puts SimSiam's h on the anchors (p = h(z) against the candidates
z: 66.4 vs 66.5) and `--stop-gradient` then detaches the candidates (66.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MethodOptions
from ..options import POSITIVE, opt
from ..parallel import gather_with_grad, rank_and_world
from .base import Method, StepOutput, Targets, Views
from .heads import float32, prediction_mlp, projection_mlp, z_std


@float32
def nt_xent(a1: torch.Tensor, a2: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Anchors a1, a2 (views 1 and 2 of this rank's N images) against candidates c1, c2 (the same
    views, gathered over all ranks: 2M). Anchor i of view 1 has candidate i of view 2 as its
    positive; candidate i of its own view (itself, when a = c as in SimCLR) is masked out."""
    n = a1.shape[0]
    rank, _ = rank_and_world()
    anchors = F.normalize(torch.cat([a1, a2]), dim=1)  # 2N x C
    cands = F.normalize(torch.cat([gather_with_grad(c1), gather_with_grad(c2)]), dim=1)  # 2M x C
    m = cands.shape[0] // 2
    logits = anchors @ cands.T / temperature  # 2N x 2M
    mine = torch.arange(n, device=a1.device) + rank * n  # this rank's images among the M
    own = torch.cat([mine, mine + m])  # same image, same view: not a negative
    positive = torch.cat([mine + m, mine])  # same image, other view
    logits = logits.masked_fill(F.one_hot(own, 2 * m).bool(), float("-inf"))
    return F.cross_entropy(logits, positive)


@dataclass
class SimCLROptions(MethodOptions):
    """SimCLR itself: no predictor, no stop-gradient; Sec. 6.2's hubs turn them on. T = 0.2 for
    every dataset: inside SimCLR's ImageNet range (0.1-0.2 at batch 4096) and solo-learn's CIFAR
    value (lightly: 0.5 there)."""

    temperature: float = opt(0.2, "NT-Xent temperature T", check=POSITIVE)
    predictor: bool = opt(False, "Sec. 6.2 hub: SimSiam's predictor h on the anchors (66.4 vs 66.5)")
    stop_gradient: bool = opt(False, "Sec. 6.2 hub: detach the candidates (with --predictor: 66.0)")


class SimCLR(Method):
    Options = SimCLROptions

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        dim: int = 2048,
        pred_dim: int = 512,
        proj_layers: int = 3,
        proj_hidden: int = 2048,
        temperature: float = 0.2,
        predictor: bool = False,
        stop_gradient: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_mlp(feature_dim, proj_hidden, dim, proj_layers)
        self.encoder = nn.Sequential(backbone, self.projector)  # f
        self.predictor = prediction_mlp(dim, pred_dim) if predictor else nn.Identity()  # h (hub only)
        self.temperature = temperature
        self.stop_gradient = stop_gradient
        self.dim = dim

    def forward(self, views: Views, targets: Targets | None = None) -> StepOutput:
        z1, z2 = self.encoder(views.x1), self.encoder(views.x2)  # NxC each
        p1, p2 = self.predictor(z1), self.predictor(z2)  # NxC; p = z without the hub's predictor
        t1, t2 = (z1.detach(), z2.detach()) if self.stop_gradient else (z1, z2)  # the hub's stop-gradient
        loss = nt_xent(p1, p2, t1, t2, self.temperature)
        return StepOutput(loss, z_std(z1), z1, z2, p1, p2)
