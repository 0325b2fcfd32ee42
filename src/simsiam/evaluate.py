"""Evaluation: the weighted kNN monitor on frozen backbone features.

kNN (Wu et al. 2018, as used to monitor SimSiam): l2-normalised features of the train split are the
bank, test features the queries; the k most cosine-similar bank entries vote for their label with
weight exp(sim / T). Everything runs in chunks on the features' device.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.augment import prepare


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, size: int, mean, std,
                     batch_size: int = 512, channels_last: bool = False) -> torch.Tensor:
    """l2-normalised pooled features (N, D) of uint8 images, backbone in eval mode, fp32."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    feats = []
    for i in range(0, images.shape[0], batch_size):
        x = prepare(images[i:i + batch_size].to(device), size, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats.append(F.normalize(backbone(x).float(), dim=1))
    backbone.train(was_training)
    return torch.cat(feats)


@torch.no_grad()
def knn_predict(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                k: int = 200, t: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Class scores (Nq, C) from a weighted kNN vote. Inputs must be l2-normalised."""
    k = min(k, bank.shape[0])
    scores = []
    for q in queries.split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1)  # Nq x k
        votes = torch.zeros(q.shape[0], num_classes, device=q.device, dtype=sim.dtype)
        votes.scatter_add_(1, bank_labels[idx], (sim / t).exp())
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(backbone: nn.Module, train, test, size: int, mean, std, k: int = 200, t: float = 0.1,
                 channels_last: bool = False) -> float:
    """Top-1 kNN accuracy (0..1) of `backbone` with `train` as the bank and `test` as queries."""
    bank = extract_features(backbone, train.images, size, mean, std, channels_last=channels_last)
    queries = extract_features(backbone, test.images, size, mean, std, channels_last=channels_last)
    labels = train.labels.to(bank.device)
    pred = knn_predict(queries, bank, labels, len(train.classes), k, t).argmax(dim=1)
    return (pred == test.labels.to(pred.device)).float().mean().item()
