"""The contract between a method and the training loop.

A method is an `nn.Module` subclassing `Method`. The loop calls, in this order, per step:

    out = model(views, targets)     # forward: a `StepOutput` (loss, z-std, z1, z2, ...)
    out.loss.backward()
    method.after_backward(epoch)    # SwAV drops its frozen prototypes' gradient here
    optimizer.step()
    method.after_step(progress)     # BYOL moves its target encoder here

and `method.on_epoch_start(epoch)` before each epoch's first step. The hooks are no-ops here and
are always called on the unwrapped method (`checkpoint.unwrap`), never through a DDP or compile
wrapper. A method also gives its optimizer groups (`param_groups`), declares its own options (a
`MethodOptions` dataclass in its file, `Options`; its constructor takes the same names) and the
run options it changes from SimSiam's (`DEFAULTS`, applied between the preset and the user's
options), and says what a step feeds it: `pairs` of views (2 for SimSiam's asym. 2x), small
views (`multi_crop`, SwAV) and Sec. 5.2's targets (`targeting`, SimSiam).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, TypedDict

import torch
import torch.nn as nn

from ..config import Config, MethodOptions
from ..data.augment import MultiCrop


class Views(NamedTuple):
    """One augmentation pair of a batch (N x 3 x S x S each), plus multi-crop's small views."""

    x1: torch.Tensor
    x2: torch.Tensor
    small: tuple[torch.Tensor, ...] = ()


# Sec. 5.2's eta: the targets of p1 and of p2 (N x d each), given instead of the method's own.
Targets = tuple[torch.Tensor, torch.Tensor]


class StepOutput(NamedTuple):
    loss: torch.Tensor  # scalar; the loop calls backward() on it
    z_std: torch.Tensor  # collapse statistic of z1 (detached scalar), for the monitor
    z1: torch.Tensor  # projector outputs of the two views, N x d (the target memory averages them)
    z2: torch.Tensor
    p1: torch.Tensor | None = None  # what is compared with the targets, where the method predicts
    p2: torch.Tensor | None = None


class ParamGroup(TypedDict):
    name: str
    params: list[nn.Parameter]
    fix_lr: bool  # the lr stays at its initial value (the predictor's, with --fix-pred-lr)


class Targeting(NamedTuple):
    """Sec. 5.2's targets instead of the method's own: `alternation` off | K | epoch, or a
    `memory` of one moving-average target per image with `momentum`."""

    alternation: str = "off"
    memory: bool = False
    momentum: float = 0.8


class Method(nn.Module):
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    DEFAULTS: ClassVar[dict[str, Any]] = {}  # run options this method changes (`configure.from_preset`)
    HEADS: ClassVar[tuple[str, ...]] = ("dim", "pred_dim", "proj_layers", "proj_hidden")  # sizes it takes

    backbone: nn.Module  # what is evaluated and exported
    projector: nn.Module  # the projection MLP g (`simsiam embed --projector`)
    encoder: nn.Module  # f = backbone + projector (Sec. 5.2's targets come from it)
    predictor: nn.Module  # h, or nn.Identity() where there is none
    dim: int  # the dimension d of z, for the collapse monitor's 1/sqrt(d)
    pairs: int = 1  # augmentation pairs a step feeds it per image
    multi_crop: MultiCrop | None = None  # small views after each pair
    targeting: Targeting = Targeting()  # Sec. 5.2 targets

    @classmethod
    def options_of(cls, cfg: Config) -> MethodOptions:
        """`cfg`'s options for this method: its own, or the declared defaults when it has none."""
        return cfg.options if isinstance(cfg.options, cls.Options) else cls.Options()

    @classmethod
    def from_config(cls, cfg: Config, backbone: nn.Module, feature_dim: int) -> Method:
        """The method around `backbone`, with `cfg`'s head sizes and the method's options."""
        heads = {name: getattr(cfg, name) for name in cls.HEADS}
        return cls(backbone, feature_dim, **heads, **dataclasses.asdict(cls.options_of(cfg)))

    def forward(self, views: Views, targets: Targets | None = None) -> StepOutput:
        """The loss of one augmentation pair. `targets` reach only methods whose `targeting` asks
        for them."""
        raise NotImplementedError

    def param_groups(self) -> list[ParamGroup]:
        """Encoder and predictor apart: the predictor's lr stays fixed with `fix_pred_lr`. Frozen
        parameters are left out, so neither SGD nor weight decay moves them."""
        return [
            {"name": "encoder", "params": list(self.encoder.parameters()), "fix_lr": False},
            {
                "name": "predictor",
                "params": [p for p in self.predictor.parameters() if p.requires_grad],
                "fix_lr": True,
            },
        ]

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first step of `epoch` (0-based), also after a resume."""

    def after_backward(self, epoch: int) -> None:
        """Between backward and the optimizer step."""

    def after_step(self, progress: float) -> None:
        """After each optimizer step; `progress` in (0, 1] over the whole run."""
