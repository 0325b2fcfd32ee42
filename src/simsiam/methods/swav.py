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

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import IMAGE_SIZE, Config, MethodOptions
from ..data.augment import MultiCrop
from ..errors import ConfigError
from ..options import COUNT, POSITIVE, POSITIVE_INT, Pair, opt
from ..parallel import global_sum, rank_and_world
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


@dataclass
class SwAVOptions(MethodOptions):
    """SwAV itself: no predictor, detached codes, T = 0.1 (SwAV's value for ImageNet and CIFAR);
    Sec. 6.2's hubs turn on the predictor or the codes' gradient."""

    temperature: float = opt(0.1, "softmax temperature T of the swapped prediction", check=POSITIVE)
    prototypes: int = opt(
        3000,
        "number of prototypes K (l2-normalised, no bias); SwAV's 3000 is for ImageNet, "
        "a few hundred suit 10-100 classes (digits preset: 100)",
        check=POSITIVE_INT,
    )
    sinkhorn_iters: int = opt(3, "Sinkhorn-Knopp iterations", check=POSITIVE_INT)
    sinkhorn_eps: float = opt(0.05, "Sinkhorn-Knopp epsilon (entropy regularisation)", check=POSITIVE)
    freeze_prototypes_epochs: int = opt(1, "prototypes get no update during the first N epochs", check=COUNT)
    queue_size: int = opt(0, "queue of past projections used in Sinkhorn (0 = off)", check=COUNT)
    queue_start_epoch: int = opt(0, "epoch from which the queue is used", check=COUNT)
    small_crops: int = opt(0, "multi-crop: number of extra small views (SwAV: 6); 0 = two views only", check=COUNT)
    small_crop_size: int = opt(
        96,
        "multi-crop: size of the small views, below --image-size (SwAV: 96 for 224 px; "
        "18 for 32 px with --small-crop-scale 0.08 0.5; digits preset: 8)",
        check=IMAGE_SIZE,
    )
    small_crop_scale: tuple[float, float] = opt(
        (0.05, 0.14), "multi-crop: area fraction range of the small views", check=Pair(gt=0, le=1), nargs=2
    )
    predictor: bool = opt(False, "Sec. 6.2 hub: SimSiam's predictor h before the prototypes (65.2 vs 66.5)")
    stop_gradient: bool = opt(True, "the codes are detached (SwAV); off is Sec. 6.2's hub (NaN)")

    def check(self, cfg: Config) -> None:
        if self.small_crops and self.small_crop_size >= cfg.image_size:
            raise ConfigError(f"--small-crop-size {self.small_crop_size} must be below --image-size {cfg.image_size}")


class SwAV(Method):
    Options = SwAVOptions
    queue: torch.Tensor  # buffers: past z, newest rows first, and how many rows were filled
    queued: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        dim: int = 2048,
        pred_dim: int = 512,
        proj_layers: int = 3,
        proj_hidden: int = 2048,
        temperature: float = 0.1,
        prototypes: int = 3000,
        sinkhorn_iters: int = 3,
        sinkhorn_eps: float = 0.05,
        freeze_prototypes_epochs: int = 1,
        queue_size: int = 0,
        queue_start_epoch: int = 0,
        small_crops: int = 0,
        small_crop_size: int = 96,
        small_crop_scale: tuple[float, float] = (0.05, 0.14),
        predictor: bool = False,
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
        self.freeze_epochs, self.queue_start_epoch = freeze_prototypes_epochs, queue_start_epoch
        self.multi_crop = MultiCrop(small_crops, small_crop_size, small_crop_scale) if small_crops else None
        self.stop_gradient = stop_gradient
        self.epoch = 0  # set by the loop's on_epoch_start (also after a resume)
        self.dim = dim

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
