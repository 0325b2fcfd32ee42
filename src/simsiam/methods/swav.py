"""SwAV (Caron et al., NeurIPS 2020) as the SimSiam paper compares it (Sec. 6, Table 4, Fig. 3).

    z = normalize(g(f(x)))                    projector without output BN, l2-normalised
    s = C z                                   C: K prototypes, l2-normalised, no bias
    q = Sinkhorn-Knopp(sg(s))                 codes: equipartition over the prototypes (3 iters, eps 0.05)
    L = swapped prediction: -sum_k q1 log softmax(s2 / T) - sum_k q2 log softmax(s1 / T),  T = 0.1

Multi-crop: the small views (`small`) predict the codes of both large views. Optional queue of
past z (from `queue_start_epoch`) enlarges the batch Sinkhorn sees. Prototypes are frozen during
the first `freeze_prototypes_epochs`. Sec. 6.2's hubs: `--predictor` (h before the prototypes on
the predicting side: 65.2 vs 66.5) and `--no-stop-gradient` (codes keep their gradient: NaN/fails).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._dist import all_reduce_sum, rank_and_world
from .simsiam import prediction_mlp, projection_mlp, z_std


def sinkhorn(scores: torch.Tensor, iters: int = 3, eps: float = 0.05) -> torch.Tensor:
    """Codes (B x K) from scores (B x K): each row sums to 1 and, over the whole (all-ranks)
    batch, each prototype gets about B/K of the mass. No detach here: the caller decides."""
    q = torch.exp(scores.float() / eps).T  # K x B; scores are cosines in [-1, 1]: exp(20) at most
    _, world = rank_and_world()
    k, b = q.shape[0], q.shape[1] * world
    q = q / all_reduce_sum(q.sum().detach().clone()) if world > 1 else q / q.sum()
    for _ in range(iters):
        rows = q.sum(dim=1, keepdim=True)
        if world > 1:
            rows = rows + all_reduce_sum((rows.detach()).clone()) - rows.detach()  # global sums, local grad
        q = q / rows / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


class SwAV(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int = 2048, proj_hidden: int = 2048,
                 proj_layers: int = 3, prototypes: int = 3000, temperature: float = 0.1, sinkhorn_iters: int = 3,
                 sinkhorn_eps: float = 0.05, freeze_epochs: int = 1, queue_size: int = 0, queue_start_epoch: int = 0,
                 predictor: bool = False, pred_dim: int = 512, stop_gradient: bool = True):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_mlp(feature_dim, proj_hidden, dim, proj_layers, bn="hidden")
        self.encoder = nn.Sequential(backbone, self.projector)
        self.predictor = prediction_mlp(dim, pred_dim) if predictor else nn.Identity()
        self.prototypes = nn.Linear(dim, prototypes, bias=False)
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queued", torch.zeros((), dtype=torch.long))  # rows of the queue filled so far
        self.temperature, self.iters, self.eps = temperature, sinkhorn_iters, sinkhorn_eps
        self.freeze_epochs, self.queue_start_epoch = freeze_epochs, queue_start_epoch
        self.stop_gradient = stop_gradient
        self.epoch = 0
        self.dim = dim

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def codes(self, s: torch.Tensor) -> torch.Tensor:
        s = s.detach() if self.stop_gradient else s
        n = s.shape[0]
        if len(self.queue) and self.epoch >= self.queue_start_epoch and self.queued >= len(self.queue):
            s = torch.cat([s, self.prototypes(self.queue).detach()])  # queue rows only shape the codes
        return sinkhorn(s, self.iters, self.eps)[:n]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, small=None, **unused) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        views = [x1, x2, *(small or [])]
        z = [self.encoder(x) for x in views]  # the raw projector outputs, NxC
        scores = [self.prototypes(F.normalize(zi, dim=1)) for zi in z[:2]]  # for the codes
        preds = [self.prototypes(F.normalize(self.predictor(zi), dim=1)) for zi in z]  # for the predictions
        loss = 0.0
        for i in range(2):
            q = self.codes(scores[i])
            others = [v for v in range(len(views)) if v != i]
            loss = loss + sum(-(q * F.log_softmax(preds[v] / self.temperature, dim=1)).sum(1).mean()
                              for v in others) / len(others)
        if len(self.queue):
            with torch.no_grad():
                new = F.normalize(torch.cat(z[:2]).detach().float(), dim=1)
                self.queue.copy_(torch.cat([new, self.queue])[:len(self.queue)])
                self.queued += len(new)
        return {"loss": loss / 2, "z_std": z_std(z[0]), "z1": z[0], "z2": z[1]}

    def after_backward(self, epoch: int) -> None:
        if epoch < self.freeze_epochs:  # no gradient -> SGD skips them: no update, no weight decay
            self.prototypes.weight.grad = None

    def param_groups(self) -> list[dict]:
        return [{"name": "encoder", "params": [*self.encoder.parameters(), *self.prototypes.parameters()],
                 "fix_lr": False},
                {"name": "predictor", "params": list(self.predictor.parameters()), "fix_lr": True}]


def build(cfg, backbone: nn.Module, feature_dim: int) -> SwAV:
    return SwAV(backbone, feature_dim, dim=cfg.dim, proj_hidden=cfg.proj_hidden, proj_layers=cfg.proj_layers,
                prototypes=cfg.prototypes, temperature=cfg.temperature, sinkhorn_iters=cfg.sinkhorn_iters,
                sinkhorn_eps=cfg.sinkhorn_eps, freeze_epochs=cfg.freeze_prototypes_epochs,
                queue_size=cfg.queue_size, queue_start_epoch=cfg.queue_start_epoch, predictor=cfg.predictor,
                pred_dim=cfg.pred_dim, stop_gradient=cfg.stop_gradient)


DEFAULTS = dict(predictor=False, stop_gradient=True, temperature=0.1)
