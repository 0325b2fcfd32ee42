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

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

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
    def from_config(cls, cfg) -> "Augment":
        return cls(cfg.image_size, cfg.crop_scale, cfg.crop_ratio, cfg.hflip, cfg.jitter, cfg.jitter_p,
                   cfg.gray_p, cfg.blur_p, cfg.blur_sigma, cfg.solarize_p, cfg.mean, cfg.std, cfg.blur_p2,
                   cfg.solarize_p2, cfg.small_crop_size, cfg.small_crop_scale)

    def two_views(self, images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        second = self
        if self.blur_p2 is not None or self.solarize_p2 is not None:
            second = replace(self, blur_p=_given(self.blur_p2, self.blur_p),
                             solarize_p=_given(self.solarize_p2, self.solarize_p))
        return self(images, g), second(images, g)

    def small_views(self, images: torch.Tensor, g: torch.Generator, n: int) -> list[torch.Tensor]:
        """Multi-crop: n more views at `small_size` from `small_scale` crops, same colour pipeline."""
        small = replace(self, size=self.small_size, crop_scale=self.small_scale)
        return [small(images, g) for _ in range(n)]

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = images.shape[0]
        rand = lambda *shape: torch.rand(*shape, generator=g, device=images.device)  # noqa: E731
        x = resized_crop(images, crop_boxes(n, *images.shape[-2:], self.crop_scale, self.crop_ratio, rand), self.size)
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
    """Crop each image to its box and resize to size x size (bilinear; averaging when shrinking)."""
    x = images.float().div_(255)
    idx = torch.arange(x.shape[0], device=x.device, dtype=x.dtype).unsqueeze(1)
    return roi_align(x, torch.cat([idx, boxes.to(x.dtype)], dim=1), (size, size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True).clamp_(0, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def color_jitter(x: torch.Tensor, apply: torch.Tensor, strength, rand) -> torch.Tensor:
    """ColorJitter with per-sample factors and a per-sample random order of the four ops, as
    torchvision draws them (factor ~ U(max(0, 1 - s), 1 + s); hue ~ U(-h, h))."""
    n = x.shape[0]
    b, c, s, h = strength
    uniform = lambda lo, hi: lo + (hi - lo) * rand(n)  # noqa: E731
    factors = torch.stack([uniform(max(0, 1 - b), 1 + b), uniform(max(0, 1 - c), 1 + c),
                           uniform(max(0, 1 - s), 1 + s), uniform(-h, h)], dim=1)
    order = rand(n, 4).argsort(dim=1)  # a random permutation of the ops per sample
    ops = [_brightness, _contrast, _saturation, _hue]
    active = [b > 0, c > 0, s > 0, h > 0]
    x = x.clone()
    for pos in range(4):
        for op in range(4):
            if not active[op]:
                continue
            m = apply & (order[:, pos] == op)
            x[m] = ops[op](x[m], factors[m, op].view(-1, 1, 1, 1))
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
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb((h + f[:, 0]) % 1.0, s, v)


def _rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    gray = delta == 0
    s = delta / torch.where(gray, torch.ones_like(maxc), maxc)
    d = torch.where(gray, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(gray, torch.zeros_like(h), h)
    return (h / 6.0) % 1.0, s, maxc


def _hsv_to_rgb(h, s, v):
    # f(n) = v - v s max(0, min(k, 4 - k, 1)), k = (n + 6h) mod 6, for n = 5, 3, 1 -> r, g, b
    out = []
    for n in (5, 3, 1):
        k = (n + 6 * h) % 6
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
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
    """Evaluation input: no augmentation; resize (shorter side) and centre-crop to `size` if needed."""
    x = images.float().div_(255)
    if x.shape[-2:] != (size, size):
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                          mode="bilinear", antialias=True, align_corners=False)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top:top + size, left:left + size]
    return normalize(x, mean, std)
