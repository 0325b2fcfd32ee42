import torch.nn as nn
import torch.nn.functional as F


class NegativeCosineSimilarity(nn.Module):
    """-cos(x0, x1), averaged over the batch."""

    def forward(self, x0, x1):
        return -F.cosine_similarity(x0, x1, dim=1).mean()
