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

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..parallel import gather_rows
from .base import Method, StepOutput, Targets, Views
from .heads import ema_update, float32, projection_mlp, z_std


@float32
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Query i (of N x C) against its positive key i and the queue's K negatives (K x C, unit rows):
    cross-entropy over the 1 + K logits cos / T with the positive at index 0, averaged over i."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.T], dim=1) / temperature  # N x (1 + K)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


class MoCoV2(Method):
    # MoCo v2's head shape (2-layer MLP to 128-d) and T 0.2; no predictor. Its queue of 65536 and
    # m 0.999 are ImageNet's: the default queue here is 4096 and m (--ema-tau) 0.99, MoCo's CIFAR values.
    OPTIONS = frozenset({"head_bn"})  # --head-bn none: MoCo v2's own head, without BN
    DEFAULTS = dict(predictor=False, temperature=0.2, dim=128, proj_layers=2, queue_size=4096)
    queue: torch.Tensor  # buffers: K x C unit keys, and the row the next key goes to
    queue_ptr: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        dim: int = 128,
        proj_hidden: int = 2048,
        proj_layers: int = 2,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
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
        self.momentum, self.temperature = momentum, temperature
        self.dim = dim

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module, feature_dim: int) -> MoCoV2:
        fields = cfg.dim, cfg.proj_hidden, cfg.proj_layers, cfg.queue_size, cfg.ema_tau, cfg.temperature, cfg.head_bn
        return cls(backbone, feature_dim, *fields)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.predictor:
            raise ConfigError("--predictor does not apply to mocov2: its queries are the projector's z")
        if not cfg.stop_gradient:
            raise ConfigError("--no-stop-gradient does not apply to mocov2: its keys come from a moving average")
        if cfg.queue_size < 2 * cfg.batch_size:
            raise ConfigError(
                f"--queue-size {cfg.queue_size} is below the {2 * cfg.batch_size} keys one step enqueues "
                "(2 x --batch-size); MoCo v2 uses 65536 on ImageNet"
            )
        if cfg.queue_start_epoch:
            raise ConfigError("--queue-start-epoch is SwAV's; mocov2 uses its queue from the first step")

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
