"""BYOL (Grill et al., NeurIPS 2020), as the SimSiam paper compares it (Sec. 6, Table 4).

    online:  z = f(x) (backbone + projector), p = h(z)        trained by SGD
    target:  z' = f'(x), f' a moving average of f             no gradient: f' <- tau f' + (1 - tau) f per step
    L = (2 - 2 cos(p1, z2')) + (2 - 2 cos(p2, z1'))           symmetric (BYOL Eq. 2-3)
    tau = 1 - (1 - tau_base) (cos(pi progress) + 1) / 2       tau_base (0.99 on CIFAR, 0.996 ImageNet) -> 1

"SimSiam can be thought of as BYOL without the momentum encoder" (Sec. 6.2). The heads are
SimSiam's MLPs shaped as BYOL's: no BN on the projector's output, the predictor a bottleneck of
--pred-dim. `.backbone` is the online backbone: it is what gets evaluated and exported; the target
lives in the state_dict (`target.*`), so checkpoints and --resume carry it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MethodOptions
from ..options import Range, opt
from .base import Method, StepOutput, Targets, Views
from .heads import ema_tau, ema_update, float32, prediction_mlp, projection_mlp, z_std


@float32
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z) = ||p/|p| - z/|z|||^2, averaged over the batch."""
    return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()


@dataclass
class BYOLOptions(MethodOptions):
    ema_tau: float = opt(
        0.99,
        "base EMA rate of the target encoder, raised to 1 by a cosine over the steps "
        "(BYOL: 0.996 on ImageNet, 0.99 on CIFAR)",
        check=Range(ge=0, le=1),
    )
    predictor: bool = opt(True, "the online predictor h; off: BYOL without a predictor (collapses, BYOL Table 5b)")


class BYOL(Method):
    Options = BYOLOptions
    # BYOL's colour jitter (saturation 0.2) and its asymmetric solarize (view 1: 0, view 2: 0.2).
    # Its asymmetric blur (view 1: 1.0, view 2: 0.1) is left to the preset, because DEFAULTS apply
    # after it and would turn blur on at 32 px, where the presets have none (App. D); at 224 px
    # (--preset imagenet) add --blur-p 1.0 --blur-p2 0.1. BYOL decays the predictor's lr too.
    DEFAULTS = dict(jitter=(0.4, 0.4, 0.2, 0.1), solarize_p2=0.2, fix_pred_lr=False)

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        dim: int = 2048,
        pred_dim: int = 512,
        proj_layers: int = 3,
        proj_hidden: int = 2048,
        ema_tau: float = 0.99,
        predictor: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_mlp(feature_dim, proj_hidden, dim, proj_layers, bn="hidden")
        self.encoder = nn.Sequential(backbone, self.projector)  # online f
        self.predictor = prediction_mlp(dim, pred_dim) if predictor else nn.Identity()  # h
        self.target = copy.deepcopy(self.encoder).requires_grad_(False)  # f', same init as f
        self.tau_base = ema_tau
        self.dim = dim

    def forward(self, views: Views, targets: Targets | None = None) -> StepOutput:
        x1, x2 = views.x1, views.x2
        z1, z2 = self.encoder(x1), self.encoder(x2)  # NxC each
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():  # BYOL's stop-gradient: the target branch has no graph at all
            t1, t2 = self.target(x1), self.target(x2)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return StepOutput(loss, z_std(z1), z1, z2, p1, p2)

    def after_step(self, progress: float) -> None:
        """f' <- tau f' + (1 - tau) f after every optimizer step, tau from tau_base to 1 (cosine)."""
        ema_update(self.target, self.encoder, ema_tau(self.tau_base, progress))
