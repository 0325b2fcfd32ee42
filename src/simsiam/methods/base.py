"""The contract between a method and the training loop.

A method is an `nn.Module` subclassing `Method`. The loop calls, in this order, per step:

    out = model(views, targets)     # forward: a `StepOutput` (loss, z-std, z1, z2, ...)
    out.loss.backward()
    method.after_backward(epoch)    # SwAV drops its frozen prototypes' gradient here
    optimizer.step()
    method.after_step(progress)     # BYOL moves its target encoder here

and `method.on_epoch_start(epoch)` before each epoch's first step. The hooks are no-ops here and
are always called on the unwrapped method (`checkpoint.unwrap`), never through a DDP or compile
wrapper. A method also gives its optimizer groups (`param_groups`), builds itself from a config
(`from_config`), declares the config values it changes from SimSiam's (`DEFAULTS`, applied
between the preset and the user's options) and the optional config fields it implements
(`OPTIONS`); `check_config` refuses the others.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, TypedDict

import torch
import torch.nn as nn

from ..errors import ConfigError


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


# Config fields that only some methods implement: name -> (the value that means "not used", what
# it is). A method lists the ones it implements in OPTIONS; any other one set is a config error.
OPTIONAL: dict[str, tuple[Any, str]] = {
    "head_bn": ("default", "a SimSiam ablation (Table 3)"),
    "similarity": ("cosine", "a SimSiam ablation (Sec. 4.5)"),
    "symmetry": ("sym", "a SimSiam ablation (Sec. 4.6)"),
    "fixed_predictor": (False, "a SimSiam ablation (Table 1b)"),
    "concat_views": (False, "a SimSiam ablation of the per-view BN statistics"),
    "alternation": ("off", "a Sec. 5.2 experiment on SimSiam's targets"),
    "target_memory": (False, "a Sec. 5.2 experiment on SimSiam's targets"),
    "small_crops": (0, "multi-crop"),
}


class Method(nn.Module):
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    OPTIONS: ClassVar[frozenset[str]] = frozenset()

    backbone: nn.Module  # what is evaluated and exported
    encoder: nn.Module  # f = backbone + projector (Sec. 5.2's targets come from it)
    predictor: nn.Module  # h, or nn.Identity() where there is none
    dim: int  # the dimension d of z, for the collapse monitor's 1/sqrt(d)

    @classmethod
    def from_config(cls, cfg: Any, backbone: nn.Module, feature_dim: int) -> Method:
        raise NotImplementedError

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Raise a ConfigError for options this method cannot honour."""
        for name, (off, what) in OPTIONAL.items():
            if name not in cls.OPTIONS and getattr(cfg, name) != off:
                raise ConfigError(f"--{name.replace('_', '-')} is {what}; --method {cfg.method} does not have it")

    def forward(self, views: Views, targets: Targets | None = None) -> StepOutput:
        """The loss of one augmentation pair. `targets` reach only methods with alternation or
        target_memory in OPTIONS."""
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
