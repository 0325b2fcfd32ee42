"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021).

    z1, z2 = f(x1), f(x2)          f = backbone + projection MLP        (Sec. 3)
    p1, p2 = h(z1), h(z2)          h = prediction MLP (bottleneck)
    L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2,   D(p, z) = -cos(p, z)       (Eq. 1-4)

Each view goes through the encoder in its own forward pass, so BatchNorm statistics are per view
as in the official code; `concat_views=True` does one pass over both (faster, different BN).
The paper's ablations are SimSiam's own options (`SimSiamOptions`, the constructor's arguments);
Sec. 5.2's experiments give the targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config, MethodOptions
from ..errors import ConfigError
from ..options import Choice, Pattern, Range, opt
from .base import Method, StepOutput, Targeting, Targets, Views
from .heads import HEAD_BN, float32, prediction_mlp, projection_mlp, z_std


@float32
def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, z), averaged over the batch (Eq. 1). No stop-gradient here."""
    return -F.cosine_similarity(p, z, dim=-1).mean()


@float32
def cross_entropy_similarity(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -softmax(z) . log softmax(p), softmax over channels, no temperature (Sec. 4.5)."""
    return -(F.softmax(z, dim=-1) * F.log_softmax(p, dim=-1)).sum(dim=-1).mean()


SIMILARITY = {"cosine": negative_cosine, "cross-entropy": cross_entropy_similarity}


@dataclass
class SimSiamOptions(MethodOptions):
    """SimSiam's ablations (Sec. 4) and Sec. 5.2's experiments on its targets."""

    stop_gradient: bool = opt(True, "stop-gradient on the target z; off collapses (paper Fig. 2)")
    predictor: bool = opt(True, "predictor MLP h; off collapses (paper Table 1a)")
    fixed_predictor: bool = opt(False, "keep the predictor at its random init, never updated (paper Table 1b: 1.5%)")
    head_bn: str = opt(
        "default",
        "BN in the MLP heads (paper Table 3): none | hidden (hidden layers only) | default "
        "(hidden + projector output) | all (also the predictor output: unstable)",
        check=HEAD_BN,
    )
    similarity: str = opt(
        "cosine",
        "D(p, z): cosine (Eq. 1) | cross-entropy (softmax over channels, Sec. 4.5: 63.2 vs 68.1)",
        check=Choice(tuple(SIMILARITY)),
    )
    symmetry: str = opt(
        "sym",
        "loss terms (Sec. 4.6): sym (Eq. 2) | asym: D(p1, sg(z2)) only | asym2x: asym on two "
        "augmentation pairs per image (same predictions per image as sym)",
        check=Choice(("sym", "asym", "asym2x")),
    )
    concat_views: bool = opt(False, "one forward pass over both views; changes BN statistics, so off (official code)")
    alternation: str = opt(
        "off",
        "Sec. 5.2 k-step alternation: off (SimSiam) | K: targets eta = f(T'(x)) from the frozen "
        "encoder, pre-computed for the next K steps, then K SGD steps against them | epoch",
        check=Pattern("off|epoch|0*[1-9][0-9]*", "off, epoch or a positive number of steps"),
    )
    target_memory: bool = opt(
        False,
        "Sec. 5.2 expectation over augmentations: one target eta_x per training image, a "
        "moving average of f(T'(x)); use with --no-predictor (paper: 55.0%, no collapse)",
    )
    memory_momentum: float = opt(
        0.8, "m in eta_x <- m eta_x + (1 - m) f(T'(x)) for --target-memory (paper: 0.8)", check=Range(ge=0, lt=1)
    )

    def check(self, cfg: Config) -> None:
        if self.alternation != "off" and self.target_memory:
            raise ConfigError("--alternation and --target-memory are two different Sec. 5.2 experiments; choose one")
        if self.alternation != "off" and self.symmetry == "asym2x":
            raise ConfigError("--alternation replays two views per step; it does not combine with --symmetry asym2x")
        if self.target_memory and self.symmetry == "asym2x":
            raise ConfigError("--target-memory has one target per image; --symmetry asym2x does not apply")


class SimSiam(Method):
    Options = SimSiamOptions

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
        fixed_predictor: bool = False,
        head_bn: str = "default",
        similarity: str = "cosine",
        symmetry: str = "sym",
        concat_views: bool = False,
        alternation: str = "off",
        target_memory: bool = False,
        memory_momentum: float = 0.8,
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
        self.symmetric = symmetry == "sym"  # asym2x: asym on two pairs, the view plan's job
        self.pairs = 2 if symmetry == "asym2x" else 1
        self.targeting = Targeting(alternation, target_memory, memory_momentum)
        self.dim = dim

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
