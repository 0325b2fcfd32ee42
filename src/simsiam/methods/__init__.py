"""Self-supervised methods: one short file each, all driven by the same training loop.

A method is an nn.Module with `.backbone`, `.dim` (the dimension of z, for the collapse monitor),
`forward(x1, x2, **extra) -> {"loss", "z_std", ...}` and `param_groups()`. Optional hooks the loop
calls when a method defines them:
- `on_epoch_start(epoch)`: before the epoch's first step (SwAV: when its queue starts);
- `after_backward(epoch)`: between backward and the optimizer step (SwAV freezes its prototypes);
- `after_step(progress)`: after each optimizer step, progress in [0, 1] over the whole run (BYOL's EMA).
`METHODS` maps a name to a builder `(cfg, backbone, feature_dim) -> module`; `DEFAULTS` maps a name
to the config values the method changes from SimSiam's (applied between the preset and the user's
options by `config.from_preset`).
"""

from . import byol, simclr, simsiam, swav

METHODS = {"simsiam": simsiam.build, "simclr": simclr.build, "byol": byol.build, "swav": swav.build}
DEFAULTS: dict[str, dict] = {"simsiam": {}, "simclr": simclr.DEFAULTS, "byol": byol.DEFAULTS, "swav": swav.DEFAULTS}
