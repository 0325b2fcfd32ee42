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


def projection_mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 3) -> nn.Sequential:
    """BN on every fc, output included (BN without affine); no ReLU on the output (Sec. 3).

    The official code keeps the output fc's bias but freezes it ("hack: not use bias as it is
    followed by BN"); BN cancels any bias, so we build the fc without one.
    """
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        dim = hidden
    mods += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False)]
    return nn.Sequential(*mods)


def prediction_mlp(dim: int, pred_dim: int) -> nn.Sequential:
    """Bottleneck h: BN on the hidden fc only; the output fc has a bias and no BN (Sec. 3)."""
    return nn.Sequential(
        nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True),
        nn.Linear(pred_dim, dim),
    )


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, z), averaged over the batch (Eq. 1). No stop-gradient here."""
    return -F.cosine_similarity(p, z, dim=-1).mean()


def z_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse statistic (Fig. 2): per-channel std of z/||z|| over the batch, averaged over
    channels. About 1/sqrt(d) when the outputs spread over the sphere, 0 when collapsed."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


class SimSiam(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int = 2048, pred_dim: int = 512,
                 proj_layers: int = 3, proj_hidden: int = 2048, stop_gradient: bool = True,
                 predictor: bool = True, concat_views: bool = False):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_mlp(feature_dim, proj_hidden, dim, proj_layers)
        self.encoder = nn.Sequential(backbone, self.projector)  # f
        self.predictor = prediction_mlp(dim, pred_dim) if predictor else nn.Identity()  # h
        self.stop_gradient = stop_gradient
        self.concat_views = concat_views
        self.dim = dim

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.concat_views:
            z1, z2 = self.encoder(torch.cat([x1, x2])).chunk(2)
        else:
            z1, z2 = self.encoder(x1), self.encoder(x2)  # NxC each
        p1, p2 = self.predictor(z1), self.predictor(z2)  # NxC
        # The stop-gradient (Sec. 3): the one place it lives.
        t1, t2 = (z1.detach(), z2.detach()) if self.stop_gradient else (z1, z2)
        loss = negative_cosine(p1, t2) / 2 + negative_cosine(p2, t1) / 2
        return {"loss": loss, "z_std": z_std(z1), "z1": z1, "z2": z2, "p1": p1, "p2": p2}

    def param_groups(self) -> list[dict]:
        """Encoder and predictor apart: the predictor's lr stays fixed with `fix_pred_lr`."""
        return [
            {"name": "encoder", "params": list(self.encoder.parameters()), "fix_lr": False},
            {"name": "predictor", "params": list(self.predictor.parameters()), "fix_lr": True},
        ]


def build(cfg, backbone: nn.Module, feature_dim: int) -> SimSiam:
    return SimSiam(backbone, feature_dim, dim=cfg.dim, pred_dim=cfg.pred_dim, proj_layers=cfg.proj_layers,
                   proj_hidden=cfg.proj_hidden, stop_gradient=cfg.stop_gradient, predictor=cfg.predictor,
                   concat_views=cfg.concat_views)
