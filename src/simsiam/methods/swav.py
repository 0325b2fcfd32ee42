"""SwAV (Caron et al., NeurIPS 2020), as the SimSiam paper compares it (Sec. 6, Table 4, Sec. 6.2).

    z = normalize(g(f(x)))          projector without output BN, l2-normalised
    s = C z                         C: K prototypes, l2-normalised rows, no bias
    q = Sinkhorn-Knopp(sg(s))       codes: an equipartition of the batch over the prototypes
    L = swapped prediction: l(s2, q1) + l(s1, q2),  l(s, q) = -sum_k q_k log softmax(s / T)_k

Multi-crop: the small views (`views.small`) predict the codes of both large views. A queue of past z
(`queue_size`, used from `queue_start_epoch` once full) enlarges the batch Sinkhorn balances:
it is filled from the first step, with both views' z in one queue (the official code keeps one
queue per view and starts filling at the start epoch). Prototypes are frozen during the first
`freeze_prototypes_epochs`. Sec. 6.2's hubs: `--predictor` (h before the prototypes on the
predicting side: 65.2 vs 66.5) and `--no-stop-gradient` (the codes keep their gradient: "NaN").
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..parallel import global_sum
from ..runtime import rank_and_world
from .base import Method, ParamGroup, StepOutput, Targets, Views
from .heads import float32, prediction_mlp, projection_mlp, z_std


def sinkhorn(scores: torch.Tensor, iters: int = 3, eps: float = 0.05) -> torch.Tensor:
    """Codes q (B x K) from scores (B x K), as the official `distributed_sinkhorn`: every row sums
    to 1 (a distribution over prototypes per sample) and each column to about B/K, exactly after
    convergence, B the batch of all ranks (the sums are all-reduced). No detach here."""
    q = torch.exp(scores.float() / eps).T  # K x B; scores are cosines: exp(1/eps) = e^20 at most
    k, b = q.shape[0], q.shape[1] * rank_and_world()[1]
    q = q / global_sum(q.sum())
    for _ in range(iters):
        q = q / global_sum(q.sum(dim=1, keepdim=True)) / k  # each prototype: total mass 1/K
        q = q / q.sum(dim=0, keepdim=True) / b  # each sample: mass 1/B
    return (q * b).T


@float32
def swapped_prediction(q: torch.Tensor, scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """l(s, q) = -sum_k q_k log softmax(s / T)_k, averaged over the batch."""
    return -(q * F.log_softmax(scores / temperature, dim=1)).sum(dim=1).mean()


class SwAV(Method):
    OPTIONS = frozenset({"small_crops"})
    # SwAV itself: no predictor, detached codes, T = 0.1 (SwAV's value for ImageNet and CIFAR).
    DEFAULTS = dict(predictor=False, stop_gradient=True, temperature=0.1)
    queue: torch.Tensor  # buffers: past z, newest rows first, and how many rows were filled
    queued: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        dim: int = 2048,
        proj_hidden: int = 2048,
        proj_layers: int = 3,
        prototypes: int = 3000,
        temperature: float = 0.1,
        sinkhorn_iters: int = 3,
        sinkhorn_eps: float = 0.05,
        freeze_epochs: int = 1,
        queue_size: int = 0,
        queue_start_epoch: int = 0,
        predictor: bool = False,
        pred_dim: int = 512,
        stop_gradient: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_mlp(feature_dim, proj_hidden, dim, proj_layers, bn="hidden")
        self.encoder = nn.Sequential(backbone, self.projector)  # f, then g
        self.predictor = prediction_mlp(dim, pred_dim) if predictor else nn.Identity()  # h (hub only)
        self.prototypes = nn.Linear(dim, prototypes, bias=False)  # C
        # Queue state lives in the state_dict, so --resume continues with the same queue.
        self.register_buffer("queue", torch.zeros(queue_size, dim))  # newest rows first
        self.register_buffer("queued", torch.zeros((), dtype=torch.long))  # rows filled so far
        self.temperature, self.iters, self.eps = temperature, sinkhorn_iters, sinkhorn_eps
        self.freeze_epochs, self.queue_start_epoch = freeze_epochs, queue_start_epoch
        self.stop_gradient = stop_gradient
        self.epoch = 0  # set by the loop's on_epoch_start (also after a resume)
        self.dim = dim

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module, feature_dim: int) -> SwAV:
        return cls(
            backbone,
            feature_dim,
            dim=cfg.dim,
            proj_hidden=cfg.proj_hidden,
            proj_layers=cfg.proj_layers,
            prototypes=cfg.prototypes,
            temperature=cfg.temperature,
            sinkhorn_iters=cfg.sinkhorn_iters,
            sinkhorn_eps=cfg.sinkhorn_eps,
            freeze_epochs=cfg.freeze_prototypes_epochs,
            queue_size=cfg.queue_size,
            queue_start_epoch=cfg.queue_start_epoch,
            predictor=cfg.predictor,
            pred_dim=cfg.pred_dim,
            stop_gradient=cfg.stop_gradient,
        )

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def codes(self, s: torch.Tensor) -> torch.Tensor:
        """q for the batch's scores s (N x K); the queue's rows only shape the equipartition."""
        s = s.detach() if self.stop_gradient else s  # SwAV's stop-gradient: the one place it lives
        n = s.shape[0]
        if len(self.queue) and self.epoch >= self.queue_start_epoch and self.queued >= len(self.queue):
            with torch.no_grad():
                s = torch.cat([s, self.prototypes(self.queue)])  # (N + Q) x K
        return sinkhorn(s, self.iters, self.eps)[:n]

    def forward(self, views: Views, targets: Targets | None = None) -> StepOutput:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        xs = [views.x1, views.x2, *views.small]
        z = [self.encoder(x) for x in xs]  # the projector's outputs, NxC each (before the l2 norm)
        scores = [self.prototypes(F.normalize(zi, dim=1)) for zi in z[:2]]  # NxK, for the codes
        preds = [self.prototypes(F.normalize(self.predictor(zi), dim=1)) for zi in z]  # NxK, predicting

        def swapped(i: int) -> torch.Tensor:  # every other view predicts large view i's codes
            q = self.codes(scores[i])
            others = [v for v in range(len(xs)) if v != i]
            terms = [swapped_prediction(q, preds[v], self.temperature) for v in others]
            return sum(terms) / len(others)  # type: ignore[return-value]

        loss = 0.0 + swapped(0) + swapped(1)
        if len(self.queue):
            with torch.no_grad():
                new = F.normalize(torch.cat(z[:2]).float(), dim=1)  # 2N x C
                self.queue.copy_(torch.cat([new, self.queue])[: len(self.queue)])
                self.queued += len(new)
        return StepOutput(loss / 2, z_std(z[0]), z[0], z[1])

    def after_backward(self, epoch: int) -> None:
        if epoch < self.freeze_epochs:  # no gradient: SGD skips them, no step, no weight decay
            self.prototypes.weight.grad = None

    def param_groups(self) -> list[ParamGroup]:
        return [
            {"name": "encoder", "params": [*self.encoder.parameters(), *self.prototypes.parameters()], "fix_lr": False},
            {"name": "predictor", "params": list(self.predictor.parameters()), "fix_lr": True},
        ]
