"""Section 5.2: SimSiam as an alternation between eta (one target per image) and theta. Each
experiment is a target provider that the training loop asks for every step's targets.

The paper's hypothesis: SimSiam solves min_{theta, eta} E ||F_theta(T(x)) - eta_x||^2 by alternating
  eta_x <- F_theta_t(T'(x))                      (Eq. 10, one sampled augmentation T')
  theta <- one SGD step on D(h(F_theta(T(x))), eta_x)

k-step alternation (`--alternation K`, `KStepTargets`): at the start of every block of K steps the
frozen encoder computes the targets of all images of those K steps, then K SGD steps train against
them. We compute eta on the very views the K steps will use (the generator is replayed), crossed
as in Eq. 2: eta(x2) is the target of p1 and eta(x1) of p2. So K = 1 is exactly SimSiam, as in the
paper's table. Blocks restart at each epoch; "epoch" makes one block per epoch. The target pass
runs in train mode (BN batch statistics, as SimSiam's own targets).

Expectation over augmentations (`--target-memory`, `TargetMemory`): one target per training image,
a moving average eta_x <- m eta_x + (1 - m) F(T'(x)) (m = 0.8), with F's output and eta
l2-normalised (footnote 5). The paper leaves the update frequency open; we update each time x is
in a batch, with the mean of its two views' normalised z (two samples of T'), after the loss has
used the old eta_x. The memory starts from one augmented pass of the random-init encoder.

The loop's calls: `start()` once before the first epoch of a new run (not on resume);
`targets(order, step)` before each step of an epoch whose images come in `order` (None: the
method's own stop-gradient targets); `update(order, step, out)` after the optimizer step; and
`state_dict()` / `load_state_dict()` for the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import ImageSet
from .errors import ConfigError
from .methods.base import StepOutput, Targeting, Targets
from .parallel import broadcast, gather_rows
from .views import ViewPlan


class NoTargets:
    """SimSiam itself: the method's own targets, sg(z)."""

    def start(self) -> None:
        pass

    def targets(self, order: torch.Tensor, step: int) -> Targets | None:
        return None

    def update(self, order: torch.Tensor, step: int, out: StepOutput) -> None:
        pass

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict | None) -> None:
        pass


class KStepTargets(NoTargets):
    """`--alternation K`: eta from the encoder frozen at the start of each block of K steps."""

    def __init__(
        self,
        encoder: nn.Module,
        train_set,
        plan: ViewPlan,
        batch_size: int,
        block: int,
        steps_per_epoch: int,
        autocast: Callable[[], AbstractContextManager],
    ):
        self.encoder, self.train_set, self.plan = encoder, train_set, plan
        self.batch_size, self.block, self.autocast = batch_size, block, autocast
        self.steps_per_epoch = steps_per_epoch
        self.etas: list[Targets] = []

    def targets(self, order: torch.Tensor, step: int) -> Targets:
        if step % self.block == 0:  # a new block: eta for its steps, on the views they will draw
            bs, gen = self.batch_size, self.plan.gen
            replay = gen.get_state()
            steps = range(step, min(step + self.block, self.steps_per_epoch))
            future = [self.plan.draw(self.train_set.take(order[j * bs : (j + 1) * bs]))[0] for j in steps]
            with self.autocast(), torch.no_grad():
                self.etas = [(self.encoder(v.x1).float(), self.encoder(v.x2).float()) for v in future]
            gen.set_state(replay)
        return self.etas[step % self.block]

    def state_dict(self) -> dict:
        """The current block's targets: a resume in the middle of a block continues with them."""
        return {"etas": self.etas}

    def load_state_dict(self, state: dict | None) -> None:
        self.etas = list(state["etas"]) if state else []


def block_length(alternation: str, steps_per_epoch: int) -> int:
    """K of `--alternation` (0 = off); a block never spans two epochs."""
    if alternation == "off":
        return 0
    return steps_per_epoch if alternation == "epoch" else min(int(alternation), steps_per_epoch)


class TargetMemory(NoTargets):
    """`--target-memory`: eta (N, d), one l2-normalised target per training image."""

    def __init__(
        self,
        encoder: nn.Module,
        train_set,
        plan: ViewPlan,
        batch_size: int,
        dim: int,
        momentum: float,
        device: torch.device | str,
    ):
        self.encoder, self.train_set, self.plan, self.batch_size = encoder, train_set, plan, batch_size
        self.eta = torch.zeros(len(train_set), dim, device=device)
        self.momentum = momentum

    @torch.no_grad()
    def start(self) -> None:
        """eta_x = F(T'(x)) for every image: one augmented pass with the current encoder."""
        for idx in _chunks(len(self.train_set), self.batch_size, self.eta.device):
            x = self.plan.one_view(self.train_set.take(idx))
            self.eta[idx] = F.normalize(self.encoder(x).float(), dim=1)
        broadcast(self.eta)  # under torchrun: rank 0's pass, on every process

    def targets(self, order: torch.Tensor, step: int) -> Targets:
        eta = self.eta[self._index(order, step)]
        return eta, eta  # the same target for both views' predictions

    @torch.no_grad()
    def update(self, order: torch.Tensor, step: int, out: StepOutput) -> None:
        index = self._index(order, step)
        sample = F.normalize(F.normalize(out.z1.float(), dim=1) + F.normalize(out.z2.float(), dim=1), dim=1)
        index, sample = gather_rows(index), gather_rows(sample)  # under torchrun: every process's images
        m = self.momentum
        self.eta[index] = F.normalize(m * self.eta[index] + (1 - m) * sample, dim=1)

    def _index(self, order: torch.Tensor, step: int) -> torch.Tensor:
        return order[step * self.batch_size : (step + 1) * self.batch_size]

    def state_dict(self) -> dict:
        return {"eta": self.eta}

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            raise ValueError("this checkpoint has no target memory; resume with the run's own options")
        self.eta.copy_(state["eta"])


def _chunks(n: int, batch_size: int, device) -> list[torch.Tensor]:
    """Indices 0..n-1 in batches, the last merged into the one before if it would hold a single
    image (BatchNorm in train mode needs two)."""
    parts = list(torch.arange(n, device=device).split(batch_size))
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


def target_provider(
    targeting: Targeting,
    global_batch: int,
    encoder: nn.Module,
    train_set,
    plan: ViewPlan,
    dim: int,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager],
) -> NoTargets:
    """The provider of the method's Sec. 5.2 experiment (NoTargets when there is none);
    `batch_size` is this process's share of the `global_batch`."""
    if targeting.alternation == "off" and not targeting.memory:
        return NoTargets()
    if not isinstance(train_set, ImageSet):
        raise ConfigError("--alternation and --target-memory index the training images; use --placement memory")
    steps = len(train_set) // global_batch
    if targeting.alternation != "off":
        k = block_length(targeting.alternation, steps)
        return KStepTargets(encoder, train_set, plan, batch_size, k, steps, autocast)
    return TargetMemory(encoder, train_set, plan, batch_size, dim, targeting.momentum, train_set.images.device)
