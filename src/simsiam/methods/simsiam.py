"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021).

    z1, z2 = f(x1), f(x2)          f = backbone + projection MLP        (Sec. 3)
    p1, p2 = h(z1), h(z2)          h = prediction MLP (bottleneck)
    L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2,   D(p, z) = -cos(p, z)       (Eq. 1-4)

Each view goes through the encoder in its own forward pass, so BatchNorm statistics are per view
as in the official code; `concat_views=True` does one pass over both (faster, different BN).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, z), averaged over the batch (Eq. 1). No stop-gradient here."""
    return -F.cosine_similarity(p, z, dim=-1).mean()


def cross_entropy_similarity(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -softmax(z) . log softmax(p), softmax over channels, no temperature (Sec. 4.5)."""
    return -(F.softmax(z, dim=-1) * F.log_softmax(p, dim=-1)).sum(dim=-1).mean()


SIMILARITY = {"cosine": negative_cosine, "cross-entropy": cross_entropy_similarity}


def z_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse statistic (Fig. 2): per-channel std of z/||z|| over the batch, averaged over
    channels. About 1/sqrt(d) when the outputs spread over the sphere, 0 when collapsed."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


class SimSiam(nn.Module):
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

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, targets=None) -> dict[str, torch.Tensor]:
        """`targets=(t1, t2)` replaces the targets z1, z2 by given ones (Sec. 5.2: eta), no gradient."""
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
        return {"loss": loss, "z_std": z_std(z1), "z1": z1, "z2": z2, "p1": p1, "p2": p2}

    def param_groups(self) -> list[dict]:
        """Encoder and predictor apart: the predictor's lr stays fixed with `fix_pred_lr`.
        A fixed predictor is left out, so neither SGD nor weight decay moves it."""
        return [
            {"name": "encoder", "params": list(self.encoder.parameters()), "fix_lr": False},
            {
                "name": "predictor",
                "params": [p for p in self.predictor.parameters() if p.requires_grad],
                "fix_lr": True,
            },
        ]


def build(cfg, backbone: nn.Module, feature_dim: int) -> SimSiam:
    return SimSiam(
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
