import torch.nn as nn


def _block(d_in: int, d_out: int, relu: bool = True) -> list[nn.Module]:
    return [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), *([nn.ReLU()] if relu else [])]


class SimSiamProjectionHead(nn.Sequential):
    """Three layers: two of Linear-BN-ReLU, then Linear-BN."""

    def __init__(self, input_dim: int = 2048, hidden_dim: int = 2048, output_dim: int = 2048):
        super().__init__(
            *_block(input_dim, hidden_dim), *_block(hidden_dim, hidden_dim), *_block(hidden_dim, output_dim, False)
        )


class SimSiamPredictionHead(nn.Sequential):
    """Linear-BN-ReLU to the bottleneck, then Linear."""

    def __init__(self, input_dim: int = 2048, hidden_dim: int = 512, output_dim: int = 2048):
        super().__init__(*_block(input_dim, hidden_dim), nn.Linear(hidden_dim, output_dim))
