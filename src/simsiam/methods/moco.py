"""MoCo v2 (Chen, Fan, Girshick & He, 2020, "Improved Baselines with Momentum Contrastive
Learning"), as the SimSiam paper compares it (Table 4: 67.4 / 69.9 / 71.0 / 72.2 at 100-800 epochs).

    queries:  q = f(x), f = backbone + projection MLP (2 layers, 128-d)  trained by SGD
    keys:     k = f'(x), f' a momentum copy of f                       no gradient: f' <- m f' + (1 - m) f per step
    l(q, k) = -log exp(q.k / T) / (exp(q.k / T) + sum_{n in queue} exp(q.n / T))   InfoNCE (MoCo Eq. 1), l2-normalised
    L = (l(q1, k2) + l(q2, k1)) / 2                                    symmetrised; then the 2N keys enter the queue

Symmetrised as in the SimSiam paper's own reproduction (its supplement: MoCo v2's loss is
asymmetric; 69.9 at 200 epochs against MoCo v2's own 67.5): both views are queries and both views'
keys are enqueued. The projector is SimSiam's (BN on the hidden and output layers), in MoCo v2's
shape; `--head-bn none` gives MoCo v2's own fc-ReLU-fc, which collapses at the digits CPU scale
(docs/design-notes.md). m is constant (MoCo), not BYOL's cosine to 1. The queue starts as random unit
vectors (as MoCo's), its keys overwrite the oldest rows after the loss, and it is a buffer with its
pointer, so checkpoints and --resume carry it. Under torchrun every rank enqueues the keys of all
ranks (MoCo's concat_all_gather), so every rank holds the queue one process would.

No shuffle BN. MoCo shuffles the key batch across GPUs so that per-GPU BN statistics cannot mark the
positive (the only key of the current batch; the negatives are older) from the queue's keys. Here a
view is normalised over the whole batch, on one process and under torchrun's default SyncBN alike,
so no per-GPU subset is left to leak; only a whole-batch signature is, weak at batch 128 and up.
With --no-sync-bn under torchrun the per-rank leak that shuffle BN closes is open.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config, MethodOptions
from ..errors import ConfigError
from ..options import COUNT, POSITIVE, Range, opt
from ..parallel import gather_rows
from .base import Method, StepOutput, Targets, Views
from .heads import HEAD_BN, ema_update, float32, projection_mlp, z_std


@float32
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Query i (of N x C) against its positive key i and the queue's K negatives (K x C, unit rows):
    cross-entropy over the 1 + K logits cos / T with the positive at index 0, averaged over i."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.T], dim=1) / temperature  # N x (1 + K)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@dataclass
class MoCoV2Options(MethodOptions):
    """MoCo v2's T 0.2, no predictor. Its queue of 65536 and m 0.999 are ImageNet's: here the queue
    is 4096 and m 0.99 by default, MoCo's CIFAR values."""

    temperature: float = opt(0.2, "InfoNCE temperature T", check=POSITIVE)
    ema_tau: float = opt(
        0.99, "the key encoder's momentum m, constant (MoCo: 0.999 on ImageNet, 0.99 on CIFAR)", check=Range(ge=0, le=1)
    )
    queue_size: int = opt(
        4096, "the queue of negative keys, at least 2 x --batch-size (MoCo v2: 65536 on ImageNet)", check=COUNT
    )
    head_bn: str = opt(
        "default",
        "BN in the projector (as SimSiam's --head-bn): default keeps SimSiam's BN head, which trained "
        "here where MoCo v2's own (none) collapsed",
        check=HEAD_BN,
    )

    def check(self, cfg: Config) -> None:
        if self.queue_size < 2 * cfg.batch_size:
            raise ConfigError(
                f"--queue-size {self.queue_size} is below the {2 * cfg.batch_size} keys one step enqueues "
                "(2 x --batch-size); MoCo v2 uses 65536 on ImageNet"
            )


class MoCoV2(Method):
    Options = MoCoV2Options
    DEFAULTS = dict(dim=128, proj_layers=2)  # MoCo v2's head shape: a 2-layer MLP to 128-d
    HEADS = ("dim", "proj_layers", "proj_hidden")  # no predictor: the queries are z
    queue: torch.Tensor  # buffers: K x C unit keys, and the row the next key goes to
    queue_ptr: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        dim: int = 128,
        proj_layers: int = 2,
        proj_hidden: int = 2048,
        temperature: float = 0.2,
        ema_tau: float = 0.999,
        queue_size: int = 65536,
        head_bn: str = "default",
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_mlp(feature_dim, proj_hidden, dim, proj_layers, head_bn)
        self.encoder = nn.Sequential(backbone, self.projector)  # query encoder f
        self.predictor = nn.Identity()  # none: the queries are z
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)  # f', same init as f
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.momentum, self.temperature = ema_tau, temperature
        self.dim = dim

    def forward(self, views: Views, targets: Targets | None = None) -> StepOutput:
        z1, z2 = self.encoder(views.x1), self.encoder(views.x2)  # NxC each
        with torch.no_grad():  # MoCo's stop-gradient: the keys have no graph at all
            k1, k2 = self.key_encoder(views.x1), self.key_encoder(views.x2)
        negatives = self.queue.clone()  # the loss's backward keeps it; the queue changes below
        loss = (info_nce(z1, k2, negatives, self.temperature) + info_nce(z2, k1, negatives, self.temperature)) / 2
        self.enqueue(torch.cat([gather_rows(k1), gather_rows(k2)]))  # every rank's keys, one process's order
        return StepOutput(loss, z_std(z1), z1, z2)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """The n keys (n <= K) l2-normalised over the n oldest rows, wrapping round the end."""
        rows = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        self.queue[rows] = F.normalize(keys.float(), dim=1)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % len(self.queue))

    def after_step(self, progress: float) -> None:
        """f' <- m f' + (1 - m) f after every optimizer step, m constant."""
        ema_update(self.key_encoder, self.encoder, self.momentum)
