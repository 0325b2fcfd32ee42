"""View plans: what one training step feeds the method, drawn from a batch of uint8 images.

SimSiam (and every method by default) takes one augmentation pair per image (Eq. 2). Two
experiments change that, and only that, without a branch in the step loop:
- asym. 2x (Sec. 4.6, SimSiam's `--symmetry asym2x`: `method.pairs` 2): two augmentation pairs
  per image, each forwarded on its own, the two losses averaged ("one more prediction per image,
  as the symmetric loss has");
- multi-crop (SwAV's `--small-crops N`: `method.multi_crop`): N small views drawn after each
  pair's two large ones.
All randomness comes from the run's generator, in a fixed order, so a seeded run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Config
from .data.augment import Augment
from .methods.base import Method, StepOutput, Views
from .parallel import rank_and_world


@dataclass
class ViewPlan:
    augment: Augment
    gen: torch.Generator  # the run's generator (data order + augmentation)
    pairs: int = 1  # augmentation pairs per image and step (2: asym. 2x)
    small_crops: int = 0  # multi-crop's extra small views per pair
    memory_format: torch.memory_format = torch.contiguous_format
    part: tuple[int, int] = (0, 1)  # (rank, world): the step's images are this share of the global batch

    @classmethod
    def for_method(cls, cfg: Config, method: Method, gen: torch.Generator) -> ViewPlan:
        """The run's augmentation, with the pairs and small views the method asks for."""
        crop = method.multi_crop
        return cls(
            Augment.from_config(cfg, crop),
            gen,
            pairs=method.pairs,
            small_crops=crop.n if crop else 0,
            memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format,
            part=rank_and_world(),
        )

    def draw(self, images: torch.Tensor) -> list[Views]:
        """`pairs` Views of this process's share of a step's batch, each with its small views (if
        any) drawn right after it; under torchrun the random draws are the global batch's, so they
        do not depend on the number of processes."""
        plan = []
        for _ in range(self.pairs):
            x1, x2 = (self._format(x) for x in self.augment.two_views(images, self.gen, self.part))
            small: tuple[torch.Tensor, ...] = ()
            if self.small_crops:
                views = self.augment.small_views(images, self.gen, self.small_crops, self.part)
                small = tuple(self._format(x) for x in views)
            plan.append(Views(x1, x2, small))
        return plan

    def one_view(self, images: torch.Tensor) -> torch.Tensor:
        """A single augmented view of `images` as a whole (T'(x) of Sec. 5.2's target memory)."""
        return self._format(self.augment(images, self.gen))

    @staticmethod
    def combine(outs: list[StepOutput]) -> StepOutput:
        """One output per step: the pairs' mean loss; z-std and z from the first pair."""
        if len(outs) == 1:
            return outs[0]
        loss = outs[0].loss
        for o in outs[1:]:
            loss = loss + o.loss
        return outs[0]._replace(loss=loss / len(outs))

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)
