"""Label-free health of a run: the effective rank of its embeddings.

RankMe (Garrido et al., ICML 2023): the singular values s of an N x D embedding matrix, p_k =
s_k / sum(s) + eps, effective rank exp(-sum_k p_k log p_k). It is D for embeddings spread evenly
over all D directions, 1 for a complete collapse (every image the same point, or all on one line),
and in between for a dimensional collapse. Measured on a fixed sample of training images (no
augmentation), for the backbone's features and for z = projector(features).

The sample is drawn with its own generator (RANK_SEED), never the training one, and the
embeddings are computed in eval mode without gradients: watching changes nothing in the run.
"""

from __future__ import annotations

import math

import torch

from .evaluate import extract_features

RANK_SEED = 20230723  # the sample never depends on --seed and draws nothing from the run's generator
VIEW_SEED = 1000  # the views of `view_retrieval`: the same for every run it compares
EPS = 1e-7  # RankMe's epsilon


def effective_rank(x: torch.Tensor, eps: float = EPS) -> float:
    """RankMe's effective rank of the rows of `x` (N, D), from about 1 to min(N, D); scale-invariant. 0 for a
    matrix of zeros (no direction at all), NaN when `x` holds a non-finite value."""
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        return math.nan
    # The singular values as the square roots of the eigenvalues of the Gram matrix of the smaller
    # side: 5-10x faster than an SVD of x, and equal to it to ~1e-7 of the rank in float64 (values
    # below ~1e-8 of the largest are lost, and each adds at most eps to the entropy anyway).
    gram = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
    s = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt()
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total + eps
    return math.exp(-(p * p.log()).sum().item())


def rank_sample(num_images: int, n: int) -> torch.Tensor:
    """Indices (sorted) of the `n` training images the rank is measured on: the same in every
    epoch, every run of the same data and every process."""
    g = torch.Generator().manual_seed(RANK_SEED)
    return torch.randperm(num_images, generator=g)[: min(n, num_images)].sort().values


def rank_images(images, n: int):
    """The `n` images of `images` (an ImageSet or a FileSet) the rank is measured on (`rank_sample`)."""
    return images.select(rank_sample(len(images), n))


@torch.no_grad()
def embedding_ranks(backbone, projector, images, size: int, mean, std, channels_last: bool = False) -> dict:
    """{"rank_backbone", "rank_z"}, their ceilings "rank_backbone_max", "rank_z_max" = min(N, D), and
    the dimensions D "dim_backbone", "dim_z", of `images` (uint8, an ImageSet or a FileSet).
    `projector` None: the backbone's only."""
    feats = extract_features(backbone, images, size, mean, std, channels_last=channels_last, l2=False, paired=False)
    out = {"rank_backbone": effective_rank(feats), "rank_backbone_max": min(feats.shape)}
    out["dim_backbone"] = feats.shape[1]
    if projector is not None:
        was_training = projector.training
        projector.eval()
        z = torch.cat([projector(chunk) for chunk in feats.split(512)]).float()
        projector.train(was_training)
        out.update(rank_z=effective_rank(z), rank_z_max=min(z.shape), dim_z=z.shape[1])
    return out


@torch.no_grad()
def view_retrieval(backbone, images: torch.Tensor, augment, reps: int = 2) -> float:
    """A label-free score of a backbone: two augmented views (`augment`, a data.augment.Augment, with
    fixed seeds) of each of `images` (uint8, N x 3 x H x W), and the fraction of second views whose
    nearest first view (cosine of the features, eval mode) is their own image; chance is 1/N. Only
    runs scored under the same `augment` compare (docs/health.md: it ranks the lr, not the
    augmentation)."""
    was_training = backbone.training
    backbone.eval()
    hits = []
    for rep in range(reps):
        g = torch.Generator(device=images.device).manual_seed(VIEW_SEED + rep)
        x1, x2 = augment.two_views(images, g)
        f1, f2 = (
            torch.nn.functional.normalize(torch.cat([backbone(c) for c in x.split(256)]).float(), dim=1)
            for x in (x1, x2)
        )
        hits.append(((f2 @ f1.T).argmax(1) == torch.arange(len(f1), device=f1.device)).float().mean().item())
    backbone.train(was_training)
    return sum(hits) / len(hits)
