"""The SimSiam / MoCo v2 augmentation, batched on the device with per-sample random parameters.

torchvision's transforms draw one set of random parameters per call, so they cannot augment a
batch with independent draws; this module does, with the same sampling rules:

    RandomResizedCrop(size, scale, ratio) -> RandomApply(ColorJitter(b, c, s, h), p)
    -> RandomGrayscale(p) -> RandomApply(GaussianBlur(sigma), p) -> RandomSolarize(0.5, p)
    -> RandomHorizontalFlip(p)
    -> Normalize(mean, std)

Input: uint8 (N, 3, H, W) on any device; output: float32 (N, 3, size, size) on the same device.
All randomness comes from the `torch.Generator` passed in, so a seeded call is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ..config import Config


class MultiCrop(NamedTuple):
    """Multi-crop's small views (SwAV): how many per augmentation pair, their size and area range."""

    n: int
    size: int
    scale: tuple[float, float]


_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass
class Augment:
    size: int
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0  # BYOL's second view uses 0.2; SimSiam none
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    blur_p2: float | None = None  # the second view's probabilities (BYOL: 0.1, 0.2); None = as view 1
    solarize_p2: float | None = None
    small_size: int = 96  # multi-crop views (SwAV)
    small_scale: tuple[float, float] = (0.05, 0.14)

    @classmethod
    def from_config(cls, cfg: Config, multi_crop: MultiCrop | None = None) -> Augment:
        """The run's augmentation; the small views' size and scale from the method's multi-crop."""
        small = multi_crop or MultiCrop(0, cls.small_size, cls.small_scale)
        return cls(
            size=cfg.image_size,
            crop_scale=cfg.crop_scale,
            crop_ratio=cfg.crop_ratio,
            hflip=cfg.hflip,
            jitter=cfg.jitter,
            jitter_p=cfg.jitter_p,
            gray_p=cfg.gray_p,
            blur_p=cfg.blur_p,
            blur_sigma=cfg.blur_sigma,
            solarize_p=cfg.solarize_p,
            mean=cfg.mean,
            std=cfg.std,
            blur_p2=cfg.blur_p2,
            solarize_p2=cfg.solarize_p2,
            small_size=small.size,
            small_scale=small.scale,
        )

    def two_views(
        self, images: torch.Tensor, g: torch.Generator, part: tuple[int, int] = (0, 1)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        second = self
        if self.blur_p2 is not None or self.solarize_p2 is not None:
            second = replace(
                self, blur_p=_given(self.blur_p2, self.blur_p), solarize_p=_given(self.solarize_p2, self.solarize_p)
            )
        return self(images, g, part), second(images, g, part)

    def small_views(
        self, images: torch.Tensor, g: torch.Generator, n: int, part: tuple[int, int] = (0, 1)
    ) -> list[torch.Tensor]:
        """Multi-crop: n more views at `small_size` from `small_scale` crops, same colour pipeline."""
        small = replace(self, size=self.small_size, crop_scale=self.small_scale)
        return [small(images, g, part) for _ in range(n)]

    def __call__(self, images: torch.Tensor, g: torch.Generator, part: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """`part` = (k, K): the images are the k-th of K equal parts of a batch (one process's share
        under torchrun). The random parameters are drawn for the whole batch and part k's rows
        used, so every process draws what one process would for those images."""
        n = images.shape[0]
        k, parts = part

        def rand(*shape: int) -> torch.Tensor:
            if parts == 1:
                return torch.rand(*shape, generator=g, device=images.device)
            whole = torch.rand(shape[0] * parts, *shape[1:], generator=g, device=images.device)
            return whole[k * shape[0] : (k + 1) * shape[0]]

        height, width = images.shape[-2:]
        x = resized_crop(images, crop_boxes(n, height, width, self.crop_scale, self.crop_ratio, rand), self.size)
        if self.jitter_p > 0 and any(self.jitter):
            x = color_jitter(x, rand(n) < self.jitter_p, self.jitter, rand)
        if self.gray_p > 0:
            x = torch.where((rand(n) < self.gray_p).view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        if self.blur_p > 0:
            lo, hi = self.blur_sigma
            x = gaussian_blur(x, rand(n) < self.blur_p, lo + (hi - lo) * rand(n), blur_kernel_size(self.size))
        if self.solarize_p > 0:  # torchvision RandomSolarize(threshold=0.5) on [0, 1] images
            x = torch.where((rand(n) < self.solarize_p).view(-1, 1, 1, 1) & (x >= 0.5), 1 - x, x)
        if self.hflip > 0:
            x = torch.where((rand(n) < self.hflip).view(-1, 1, 1, 1), x.flip(-1), x)
        return normalize(x, self.mean, self.std)


def _given(value, default):
    return default if value is None else value


def crop_boxes(n: int, height: int, width: int, scale, ratio, rand) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for n images at once: up to 10 tries of
    (area fraction ~ U(scale), log aspect ~ U(log ratio)); the first that fits wins, else the
    central crop with the ratio clamped. Returns boxes (n, 4) as x0, y0, x1, y1 in pixels."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * rand(n, 10))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * rand(n, 10))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.float().argmax(dim=1, keepdim=True)  # index of the first try that fits
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(dim=1)
    # Fallback: central crop, aspect clamped into `ratio`.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    # torch.randint(0, H - h + 1) per sample, from uniform draws.
    u = rand(n, 2)
    y0 = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), torch.full_like(h, (height - fh) // 2))
    x0 = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), torch.full_like(w, (width - fw) // 2))
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box and resize to size x size (bilinear; averaging when shrinking).

    roi_align (aligned, adaptive sampling) takes ceil(box / size) samples per output pixel and
    axis. For a box no larger than the output (every CIFAR crop, most ImageNet ones) that is one
    sample at each output pixel's centre: exactly a bilinear grid_sample with border clamping,
    several times faster on a CPU, so on a CPU those boxes take it and only the larger ones
    roi_align. On a GPU the batch is not split (that needs the box sizes on the host): every box
    takes roi_align, unless the images are no larger than the output (then every box is small)."""
    x = images.float().div_(255)
    boxes = boxes.to(x.dtype)
    if max(images.shape[-2:]) <= size:  # no box can exceed the output (CIFAR): one path, no host sync
        return _upscale_crop(x, boxes, size)
    if x.device.type != "cpu":  # on a GPU, splitting the batch would wait for it (nonzero): roi_align for all
        return _roi_crop(x, boxes, torch.arange(len(x), device=x.device), size)
    small = ((boxes[:, 2:] - boxes[:, :2]) <= size).all(dim=1)
    big = (~small).nonzero().squeeze(1)
    if big.numel() == 0:
        return _upscale_crop(x, boxes, size)
    out = _roi_crop(x, boxes[big], big, size)
    idx = small.nonzero().squeeze(1)
    if idx.numel() == 0:
        return out
    return torch.cat([out, _upscale_crop(x[idx], boxes[idx], size)]).index_select(0, torch.cat([big, idx]).argsort())


def _roi_crop(x: torch.Tensor, boxes: torch.Tensor, rows: torch.Tensor, size: int) -> torch.Tensor:
    """roi_align of `boxes` (one per entry of `rows`, the images of x they crop), clamped to [0, 1]."""
    rois = torch.cat([rows.to(x.dtype).unsqueeze(1), boxes], dim=1)  # roi_align reads x by row index
    return roi_align(x, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True).clamp_(0, 1)


def _upscale_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """roi_align's one-sample-per-pixel case: pixel coordinate box0 + (i + 0.5) * extent / size - 0.5,
    mapped to grid_sample's normalised coordinates (align_corners=False: (2p + 1) / W - 1)."""
    n, _, height, width = x.shape
    steps = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size
    px = boxes[:, 0:1] + steps * (boxes[:, 2:3] - boxes[:, 0:1]) - 0.5  # (n, size)
    py = boxes[:, 1:2] + steps * (boxes[:, 3:4] - boxes[:, 1:2]) - 0.5
    gx = ((2 * px + 1) / width - 1).unsqueeze(1).expand(n, size, size)
    gy = ((2 * py + 1) / height - 1).unsqueeze(2).expand(n, size, size)
    return F.grid_sample(x, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def color_jitter(x: torch.Tensor, apply: torch.Tensor, strength, rand) -> torch.Tensor:
    """ColorJitter with per-sample factors and a per-sample random order of the four ops, as
    torchvision draws them (factor ~ U(max(0, 1 - s), 1 + s); hue ~ U(-h, h)). At each of the
    four positions every op runs once, on the samples that have it there."""
    n = x.shape[0]
    b, c, s, h = strength
    uniform = lambda lo, hi: lo + (hi - lo) * rand(n)  # noqa: E731
    factors = torch.stack(
        [uniform(max(0, 1 - b), 1 + b), uniform(max(0, 1 - c), 1 + c), uniform(max(0, 1 - s), 1 + s), uniform(-h, h)],
        dim=1,
    )
    order = rand(n, 4).argsort(dim=1)  # a random permutation of the ops per sample
    order = torch.where(apply.unsqueeze(1), order, torch.full_like(order, -1))  # -1: not jittered
    ops = [_brightness, _contrast, _saturation, _hue]
    active = [op for op, strength_op in enumerate((b, c, s, h)) if strength_op > 0]
    x = x.clone()
    for pos in range(4):
        for op in active:
            idx = (order[:, pos] == op).nonzero().squeeze(1)
            if idx.numel():
                x.index_copy_(0, idx, ops[op](x.index_select(0, idx), factors[idx, op].view(-1, 1, 1, 1)))
    return x


def _blend(a, b, ratio):
    return (ratio * a + (1 - ratio) * b).clamp_(0, 1)


def _brightness(x, f):
    return (x * f).clamp_(0, 1)  # a blend with black


def _contrast(x, f):
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x, f):
    return _blend(x, grayscale(x), f)


def _hue(x, f):
    """torchvision's adjust_hue (RGB -> HSV, h + f mod 1, HSV -> RGB) without building S and V:
    V = max and V * S = max - min survive the round trip unchanged, and a grey pixel (max = min)
    comes back as it went in whatever its hue, so only the hue (in sixths) is computed."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    inv = 1 / torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) * inv, (maxc - g) * inv, (maxc - b) * inv
    h6 = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h6 = h6 + 6 * f[:, 0]  # hue in sixths of a turn, shifted; the mod 6 below wraps it
    # HSV -> RGB: channel n in (5, 3, 1) -> (r, g, b) is V - V S clamp(min(k, 4 - k), 0, 1),
    # k = (n + 6h) mod 6
    out = []
    for n in (5, 3, 1):
        k = torch.remainder(h6 + n, 6)
        out.append(maxc - delta * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(out, dim=1)


def blur_kernel_size(size: int) -> int:
    """About 10% of the image side, odd (23 for 224, as in SimCLR/BYOL)."""
    k = int(0.1 * size)
    return k + 1 if k % 2 == 0 else k


def gaussian_blur(x: torch.Tensor, apply: torch.Tensor, sigma: torch.Tensor, k: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma, reflect padding, on the samples in `apply`."""
    if k < 3:
        return x
    x = x.clone()
    sel = x[apply]
    m, c, hh, ww = sel.shape
    if m == 0:
        return x
    t = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
    kern = torch.exp(-(t**2) / (2 * sigma[apply].view(-1, 1) ** 2))
    kern = (kern / kern.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (m*c, k)
    y = F.pad(sel.reshape(1, m * c, hh, ww), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, kern.view(m * c, 1, k, 1), groups=m * c)
    y = F.conv2d(y, kern.view(m * c, 1, 1, k), groups=m * c)
    x[apply] = y.view(m, c, hh, ww)
    return x


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def prepare(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """Evaluation input, no augmentation: the centre size x size crop, as torchvision's
    CenterCrop(size) of images stored at --load-size (Resize(256) + CenterCrop(224) on ImageNet).
    Images whose shorter side is below `size` are first resized (shorter side) up to it."""
    x = images.float().div_(255)
    h, w = x.shape[-2:]
    if min(h, w) < size:
        scale = size / min(h, w)
        x = F.interpolate(
            x,
            size=(max(size, round(h * scale)), max(size, round(w * scale))),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    if x.shape[-2:] != (size, size):
        top, left = (int(round((n - size) / 2.0)) for n in x.shape[-2:])  # torchvision's CenterCrop offsets
        x = x[..., top : top + size, left : left + size]
    return normalize(x, mean, std)
