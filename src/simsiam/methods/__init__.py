"""Self-supervised methods: one short file each, all driven by the same training loop.

A method is an nn.Module with `.backbone`, `.dim` (the dimension of z, for the collapse monitor),
`forward(x1, x2) -> {"loss", "z_std", ...}` and `param_groups()`; `METHODS` maps a name to a
builder `(cfg, backbone, feature_dim) -> module`.
"""

from . import simsiam

METHODS = {"simsiam": simsiam.build}
