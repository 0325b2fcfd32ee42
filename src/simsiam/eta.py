"""Section 5.2: SimSiam as an alternation between eta (one target per image) and theta.

The paper's hypothesis: SimSiam solves min_{theta, eta} E ||F_theta(T(x)) - eta_x||^2 by alternating
  eta_x <- F_theta_t(T'(x))                      (Eq. 10, one sampled augmentation T')
  theta <- one SGD step on D(h(F_theta(T(x))), eta_x)
Two experiments test it; the training loop uses the helpers below.

k-step alternation (`--alternation K`): at the start of every block of K steps the frozen encoder
computes the targets of all images of those K steps, then K SGD steps train against them. We
compute eta on the very views the K steps will use (the generator is replayed), crossed as in
Eq. 2: eta(x2) is the target of p1 and eta(x1) of p2. So K = 1 is exactly SimSiam, as in the
paper's table. Blocks restart at each epoch; "epoch" makes one block per epoch.

Expectation over augmentations (`--target-memory`): one target per training image, a moving
average eta_x <- m eta_x + (1 - m) F(T'(x)) (m = 0.8), with F's output and eta l2-normalised
(footnote 5). The paper leaves the update frequency open; we update each time x is in a batch,
with the mean of its two views' normalised z (two samples of T'), after the loss has used the old
eta_x. The memory starts from one augmented pass of the random-init encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _chunks(n: int, batch_size: int, device) -> list[torch.Tensor]:
    """Indices 0..n-1 in batches, the last merged into the one before if it would hold a single
    image (BatchNorm in train mode needs two)."""
    parts = list(torch.arange(n, device=device).split(batch_size))
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


class TargetMemory:
    """eta: (N, d), one l2-normalised target per training image."""

    def __init__(self, n: int, dim: int, momentum: float, device):
        self.eta = torch.zeros(n, dim, device=device)
        self.momentum = momentum

    @torch.no_grad()
    def fill(self, encoder, train_set, augment, gen, batch_size: int, memory_format) -> None:
        """eta_x = F(T'(x)) for every image: one augmented pass with the current encoder."""
        for idx in _chunks(len(train_set), batch_size, train_set.images.device):  # an ImageSet on the device
            x = augment(train_set.take(idx), gen)
            self.eta[idx] = F.normalize(encoder(x.contiguous(memory_format=memory_format)).float(), dim=1)

    def targets(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eta = self.eta[index]
        return eta, eta  # the same target for both views' predictions

    @torch.no_grad()
    def update(self, index: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> None:
        sample = F.normalize(F.normalize(z1.float(), dim=1) + F.normalize(z2.float(), dim=1), dim=1)
        m = self.momentum
        self.eta[index] = F.normalize(m * self.eta[index] + (1 - m) * sample, dim=1)

    def state_dict(self) -> dict:
        return {"eta": self.eta}

    def load_state_dict(self, state: dict) -> None:
        self.eta.copy_(state["eta"])


@torch.no_grad()
def block_targets(encoder, views: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """eta for each (x1, x2) of the next K steps, from the encoder frozen at its current weights."""
    return [(encoder(x1).float(), encoder(x2).float()) for x1, x2 in views]


def block_length(alternation: str, steps_per_epoch: int) -> int:
    """K of `--alternation` (0 = off); a block never spans two epochs."""
    if alternation == "off":
        return 0
    return steps_per_epoch if alternation == "epoch" else min(int(alternation), steps_per_epoch)
