"""Evaluation of a frozen backbone, the algorithms: features, the weighted kNN monitor, the linear
probes, the spread that tells a collapse, each protocol's typed result (`knn_report`,
`linear_report`). The `simsiam eval` command around them is `evaluation.py`.

kNN (Wu et al. 2018, as used to monitor SimSiam): l2-normalised features of the train split are the
bank, test features the queries; the k most cosine-similar bank entries vote for their label with
weight exp(sim / T). Everything runs in chunks on the features' device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.augment import prepare
from .errors import ConfigError, DataError, TrainingError
from .parallel import gather_rows, rank_and_world, shard
from .records import KnnResult, LinearResult


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images,
    size: int,
    mean,
    std,
    batch_size: int = 512,
    channels_last: bool = False,
    l2: bool = True,
    paired: bool = True,
) -> torch.Tensor:
    """Pooled features (N, D) of uint8 images (a tensor, an ImageSet or a streamed FileSet),
    backbone in eval mode, fp32; l2-normalised for kNN, raw (`l2=False`) for the linear probe.
    Under torchrun each process computes a contiguous share and every process gets all N rows.

    `paired` (the rows will be matched with labels): a streamed file that cannot be read is a
    DataError. `paired=False` (a label-free measure): its row is left out, and every process
    computes every row (shares could differ in length)."""
    if paired and rank_and_world()[1] > 1 and len(images) >= rank_and_world()[1]:
        part = shard(len(images))
        images = images[part.to(images.device)] if isinstance(images, torch.Tensor) else images.select(part)
        return gather_rows(_features(backbone, images, size, mean, std, batch_size, channels_last, l2, paired))
    return _features(backbone, images, size, mean, std, batch_size, channels_last, l2, paired)


def _features(backbone, images, size, mean, std, batch_size, channels_last, l2, paired=True) -> torch.Tensor:
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    feats = []
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images.batches(batch_size)
    for batch in batches:
        x = prepare(batch.to(device), size, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f = backbone(x).float()
        feats.append(F.normalize(f, dim=1) if l2 else f)
    backbone.train(was_training)
    n = sum(len(f) for f in feats)
    if paired and n != len(images):  # streamed files skipped as unreadable: the rows would not match the labels
        raise DataError(
            f"{len(images) - n} of the {len(images)} images to evaluate could not be read (see the warning above); "
            "evaluation pairs every image with its label: fix or remove the unreadable files"
        )
    return torch.cat(feats)


@torch.no_grad()
def knn_predict(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (Nq, C) from a weighted kNN vote. Inputs must be l2-normalised."""
    k = min(k, bank.shape[0])
    scores = []
    for q in queries.split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1)  # Nq x k
        votes = torch.zeros(q.shape[0], num_classes, device=q.device, dtype=sim.dtype)
        if t < 0.02:  # exp(1 / t) beyond float32 below t ~ 0.011: each query's weights shifted by its best
            sim = sim - sim[:, :1]  # (a common factor per query: the same vote, no overflow)
        votes.scatter_add_(1, bank_labels[idx], (sim / t).exp())
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    backbone: nn.Module, train, test, size: int, mean, std, k: int = 200, t: float = 0.1, channels_last: bool = False
) -> float:
    """Top-1 kNN accuracy (0..1) of `backbone` with `train` as the bank and `test` as queries."""
    bank = extract_features(backbone, train, size, mean, std, channels_last=channels_last)
    queries = extract_features(backbone, test, size, mean, std, channels_last=channels_last)
    labels = train.labels.to(bank.device)
    pred = knn_predict(queries, bank, labels, len(train.classes), k, t).argmax(dim=1)
    return (pred == test.labels.to(pred.device)).float().mean().item()


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """{"top1": .., "top5": ..} (0..1); a k not below the number of classes is left out."""
    out = {}
    for k in ks:
        if k == 1 or k < scores.shape[1]:
            hit = (scores.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1)
            out[f"top{k}"] = hit.float().mean().item()
    return out


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, float]:
    return {
        name: (pred[labels == c] == c).float().mean().item() for c, name in enumerate(classes) if (labels == c).any()
    }


def fingerprint(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer: proves a frozen backbone did not move."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def linear_head(dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """The official linear classifier's init: weights ~ N(0, 0.01), bias 0, drawn on the CPU from
    `generator` (where a seeded generator lives)."""
    head = nn.Linear(dim, num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=generator)
        head.bias.zero_()
    return head


def train_linear(
    features,
    labels: torch.Tensor,
    dim: int,
    num_classes: int,
    epochs: int = 90,
    batch_size: int = 4096,
    base_lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    after_epoch=None,
) -> nn.Linear:
    """The paper's linear classifier (App. A / official main_lincls.py): one BN-free linear layer,
    weights ~ N(0, 0.01), bias 0; LARS (trust 0.001), lr = base_lr x batch/256, cosine per epoch, wd 0.
    As in the official script, the lr follows the batch size asked for: with fewer training images
    than `batch_size`, each step takes them all and the lr stays the paper's.

    `features(idx, epoch)` returns the (frozen) features of the training images `idx`: fixed
    features for the fast mode, features of freshly augmented crops for the paper's protocol.
    `after_epoch(epoch, head)` is called at the end of each epoch (the per-epoch test top-1).
    """
    from .optim import LARS, cosine_lr, set_lr
    from .runtime import Bar

    device = labels.device
    g = torch.Generator(device="cpu").manual_seed(seed)
    head = linear_head(dim, num_classes, g).to(device)
    lr = base_lr * batch_size / 256
    opt = LARS(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = labels.shape[0]
    for epoch in Bar(range(epochs), desc="linear", unit="epoch", disable=not progress, leave=False):
        set_lr(opt, cosine_lr(lr, epoch / epochs))
        perm = torch.randperm(n, generator=g).to(device)
        for idx in perm.split(batch_size):
            loss = F.cross_entropy(head(features(idx, epoch)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if after_epoch is not None:
            after_epoch(epoch, head)
    return head


def fit_linear_fast(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4, max_iter: int = 500
) -> nn.Module:
    """Multinomial logistic regression on fixed features: full-batch L-BFGS on standardised
    features (a linear map of the features, so still a linear probe). Converges in seconds where
    LARS with trust 0.001 needs the paper's ~28k steps."""
    mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-6)
    head = nn.Linear(feats.shape[1], num_classes).to(feats.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    x = (feats - mu) / sd
    opt = torch.optim.LBFGS(
        head.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(x), labels) + weight_decay / 2 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return nn.Sequential(_Standardize(mu, sd), head)


class _Standardize(nn.Module):
    def __init__(self, mu: torch.Tensor, sd: torch.Tensor):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("sd", sd)

    def forward(self, x):
        return (x - self.mu) / self.sd


# A backbone whose features all but coincide has collapsed: its accuracy is the class prior's, not
# a measure of anything. Measured by `feature_spread`: ~0.15 for a random-init CIFAR ResNet-18
# (width 1/4) on digits, 1e-5 with its convolutions scaled by 1e-4, 0 when every image gives the
# same feature.
COLLAPSED_SPREAD = 1e-3


def feature_spread(feats: torch.Tensor) -> float:
    """Mean distance of the l2-normalised features from their centroid (0 to 1): 0 when every image
    gives the same feature. A DataError when a feature is not finite."""
    if not feats.isfinite().all():
        raise DataError(
            "the backbone gives non-finite features (NaN or inf) on these images; it diverged, or the data "
            "is not what it was trained on"
        )
    unit = F.normalize(feats.float(), dim=1)
    return (unit - unit.mean(0)).norm(dim=1).mean().item()


def knn_report(backbone: nn.Module, train, test, size: int, mean, std, k: int = 200, t: float = 0.1) -> KnnResult:
    """`simsiam eval knn`: top-1, top-5 (when more than 5 classes) and per-class accuracy, and
    whether the features have collapsed (then the accuracy is chance: `COLLAPSED_SPREAD`)."""
    bank = extract_features(backbone, train, size, mean, std)
    queries = extract_features(backbone, test, size, mean, std)
    labels = test.labels.to(bank.device)
    scores = knn_predict(queries, bank, train.labels.to(bank.device), len(train.classes), k, t)
    judged = _judged(scores, labels, train.classes, torch.cat([bank, queries]))
    return KnnResult(protocol="knn", k=k, t=t, num_bank=len(train), num_queries=len(test), **judged)


@torch.no_grad()
def pooled_features(backbone: nn.Module, images, size: int, mean, std) -> torch.Tensor:
    """Un-normalised pool features: what the linear classifier sees."""
    return extract_features(backbone, images, size, mean, std, l2=False)


def linear_report(
    backbone: nn.Module,
    train,
    test,
    size: int,
    mean,
    std,
    fast: bool = True,
    epochs: int = 90,
    batch_size: int = 4096,
    base_lr: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    report: str = "final",
) -> LinearResult:
    """`simsiam eval linear`: a linear classifier on the frozen backbone's pool features.

    fast: features of the un-augmented images, extracted once, fitted by L-BFGS (`fit_linear_fast`).
    Otherwise the paper's protocol (`train_linear`): every epoch sees fresh RandomResizedCrop + flip
    crops through the frozen backbone, LARS (slow on CPU; needs many steps). The test top-1 is
    measured after every epoch (the test features are fixed: a matrix product each); `report`
    "final" reports the last epoch's, "best" the best epoch's, as the official main_lincls.py does
    (it selects on the test set: an optimistic figure). Both are in the result.
    Raises if the backbone's weights changed (they must not: it is frozen).
    """
    from .data.augment import Augment

    if report not in ("final", "best"):
        raise ConfigError(f"--report must be final or best, not {report!r}")
    if fast and report == "best":
        raise ConfigError("--report best needs the paper's protocol (a test top-1 per epoch); --fast fits once")
    before = fingerprint(backbone)
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    device = next(backbone.parameters()).device
    labels = train.labels.to(device)
    with torch.no_grad():
        test_feats = pooled_features(backbone, test, size, mean, std)
    test_labels = test.labels.to(device)
    curve: list[float] = []  # test top-1 after each epoch (the paper's protocol)
    best_state: dict | None = None  # the head after the best of them (the earliest of equal bests)
    best_epoch: int | None = None
    if fast:
        feats = pooled_features(backbone, train, size, mean, std)
        with torch.enable_grad():
            head = fit_linear_fast(feats, labels, len(train.classes))
        optimizer = "L-BFGS, full batch, standardised features, L2 1e-4"
    else:
        # official main_lincls.py: RandomResizedCrop(224) (scale 0.08-1) + flip, nothing else
        crop = Augment(size, crop_scale=(0.08, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0, mean=mean, std=std)
        gen = torch.Generator(device=device).manual_seed(seed)

        @torch.no_grad()
        def features(idx, epoch):
            return backbone(crop(train.take(idx).to(device), gen)).float()

        @torch.no_grad()
        def score(epoch, head):
            nonlocal best_state, best_epoch
            top1 = topk_accuracy(head(test_feats), test_labels, ks=(1,))["top1"]
            if top1 > max(curve, default=-1.0):
                best_state, best_epoch = {k: v.clone() for k, v in head.state_dict().items()}, epoch + 1
            curve.append(top1)

        dim = test_feats.shape[1]
        head = train_linear(
            features,
            labels,
            dim,
            len(train.classes),
            epochs=epochs,
            batch_size=batch_size,
            base_lr=base_lr,
            seed=seed,
            progress=progress,
            after_epoch=score,
        )
        per_step = f"batch {batch_size}" + (f" (all {len(train)} images a step)" if batch_size > len(train) else "")
        optimizer = f"LARS (trust 0.001), {per_step}, lr {base_lr:g} x {batch_size}/256, cosine, wd 0, {epochs} epochs"
        if report == "best" and best_state is not None:
            head.load_state_dict(best_state)
    with torch.no_grad():
        scores = head(test_feats)
    if fingerprint(backbone) != before:
        raise TrainingError("the backbone's weights changed during linear evaluation; this is a bug, please report it")
    return LinearResult(
        protocol="linear-fast" if fast else "linear",
        optimizer=optimizer,
        num_train=len(train),
        num_test_images=len(test),
        report=report,
        top1_per_epoch=curve,
        best_epoch=best_epoch,
        **_judged(scores, test_labels, train.classes, test_feats),
    )


def _judged(scores: torch.Tensor, labels: torch.Tensor, classes: list[str], feats: torch.Tensor) -> dict[str, Any]:
    """What every protocol reports of its class scores: top-1 (top-5), per class, and whether the
    features it classified have collapsed (then the accuracy is chance: `COLLAPSED_SPREAD`)."""
    spread = feature_spread(feats)
    top = topk_accuracy(scores, labels)
    return {
        "top1": top["top1"],
        "top5": top.get("top5"),
        "per_class": per_class_accuracy(scores.argmax(1), labels, classes),
        "feature_spread": spread,
        "collapsed": spread < COLLAPSED_SPREAD,
    }
