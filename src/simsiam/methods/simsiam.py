"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021).

    z1, z2 = f(x1), f(x2)          f = backbone + projection MLP        (Sec. 3)
    p1, p2 = h(z1), h(z2)          h = prediction MLP (bottleneck)
    L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2,   D(p, z) = -cos(p, z)       (Eq. 1-4)

Each view goes through the encoder in its own forward pass, so BatchNorm statistics are per view
as in the official code; `concat_views=True` does one pass over both (faster, different BN).
The paper's ablations are constructor options; Sec. 5.2's experiments give the targets.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Method, StepOutput, Targets, Views
from .heads import float32, prediction_mlp, projection_mlp, z_std


@float32
def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, z), averaged over the batch (Eq. 1). No stop-gradient here."""
    return -F.cosine_similarity(p, z, dim=-1).mean()


@float32
def cross_entropy_similarity(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -softmax(z) . log softmax(p), softmax over channels, no temperature (Sec. 4.5)."""
    return -(F.softmax(z, dim=-1) * F.log_softmax(p, dim=-1)).sum(dim=-1).mean()


SIMILARITY = {"cosine": negative_cosine, "cross-entropy": cross_entropy_similarity}


class SimSiam(Method):
    OPTIONS = frozenset(
        {"head_bn", "similarity", "symmetry", "fixed_predictor", "concat_views", "alternation", "target_memory"}
    )

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        dim: int = 2048,
        pred_dim: int = 512,
        proj_layers: int = 3,
        proj_hidden: int = 2048,
        stop_gradient: bool = True,
        predictor: bool = True,
        concat_views: bool = False,
        head_bn: str = "default",
        similarity: str = "cosine",
        symmetric: bool = True,
        fixed_predictor: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_mlp(feature_dim, proj_hidden, dim, proj_layers, head_bn)
        self.encoder = nn.Sequential(backbone, self.projector)  # f
        self.predictor = prediction_mlp(dim, pred_dim, head_bn) if predictor else nn.Identity()  # h
        self.predictor.requires_grad_(not fixed_predictor)  # Table 1b: h stays at its random init
        self.stop_gradient = stop_gradient
        self.concat_views = concat_views
        self.similarity = SIMILARITY[similarity]
        self.symmetric = symmetric
        self.dim = dim

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module, feature_dim: int) -> SimSiam:
        return cls(
            backbone,
            feature_dim,
            dim=cfg.dim,
            pred_dim=cfg.pred_dim,
            proj_layers=cfg.proj_layers,
            proj_hidden=cfg.proj_hidden,
            stop_gradient=cfg.stop_gradient,
            predictor=cfg.predictor,
            concat_views=cfg.concat_views,
            head_bn=cfg.head_bn,
            similarity=cfg.similarity,
            symmetric=cfg.symmetry == "sym",
            fixed_predictor=cfg.fixed_predictor,
        )

    def forward(self, views: Views, targets: Targets | None = None) -> StepOutput:
        """`targets=(t1, t2)` replaces the targets z1, z2 by given ones (Sec. 5.2: eta), no gradient."""
        x1, x2 = views.x1, views.x2
        if self.concat_views:
            z1, z2 = self.encoder(torch.cat([x1, x2])).chunk(2)
        else:
            z1, z2 = self.encoder(x1), self.encoder(x2)  # NxC each
        p1, p2 = self.predictor(z1), self.predictor(z2)  # NxC
        # The stop-gradient (Sec. 3): the one place it lives.
        t1, t2 = (z1.detach(), z2.detach()) if self.stop_gradient else (z1, z2)
        if targets is not None:
            t1, t2 = (t.detach() for t in targets)
        if self.symmetric:
            loss = self.similarity(p1, t2) / 2 + self.similarity(p2, t1) / 2  # Eq. 2
        else:
            loss = self.similarity(p1, t2)  # Sec. 4.6 "asym."
        return StepOutput(loss, z_std(z1), z1, z2, p1, p2)
