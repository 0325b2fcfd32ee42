"""End-to-end check that the batched `Augment` samples the same distribution as torchvision.

test_augment.py checks the pieces one at a time (each colour op against TF.adjust_*, crop_boxes
against RandomResizedCrop.get_params, ...). This file checks the whole `Augment.__call__`: each
test switches one stage on, draws thousands of outputs from ours and from torchvision's per-image
pipeline with the same parameters (the SimSiam / MoCo v2 recipe, built by `torchvision_pipeline`),
measures one quantity per output and compares the two distributions.

Tolerances are statistical, not hand-picked: every comparison allows K standard errors of the
difference between the two sample statistics (computed from the samples themselves, see
`compare`), so they are as tight as the sample sizes allow. Under equal distributions a 4-SE
deviation has a two-sided probability of about 6e-5, so with the ~100 comparisons in this file a
false alarm is unlikely (and the seeds are fixed, so a run is deterministic anyway). Rates are also
checked against their nominal probability. Bugs injected into augment.py to check the tolerances
(all caught): crop scale (0.08, 1) or (0.25, 1) instead of (0.2, 1), aspect uniform instead of
log-uniform, crop offset drawn from W - w instead of W - w + 1, no fallback, a whole-image
fallback, roi_align aligned=False, grayscale p 0.15, flip p 0.45, jitter p 0.5 or 0.75, hue 0.2 or
0, brightness 0.5, contrast 0.3, saturation 0.3, blur p 0.4, blur sigma (0.1, 1.5), a 5-tap kernel.
Not visible at these sample sizes (test_augment.py checks them directly): a fixed jitter-op order,
contrast around the RGB mean instead of the luminance mean, blur sigma (0.2, 2) instead of (0.1, 2).

torchvision is fed float tensors in [0, 1] (its tensor path uses the same formulas as the PIL
path the official code uses, without PIL's uint8 rounding after every op), and `Augment` is built
with mean 0 / std 1 so both outputs are in [0, 1].
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from simsiam.data import augment as A  # attribute access (A.Augment), so a patched module is what runs
from simsiam.data.datasets import load_digits, read_image_folder

K = 4.0  # tolerance, in standard errors of the difference
N_REF = 2000  # torchvision samples (per-image loop: ~0.3-1.5 ms each here)
N_OURS = 8000  # ours is batched and cheap, so more samples shrink the SE on our side
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
OFF = dict(hflip=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
NO_CROP = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))  # the identity on square inputs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Per-image torchvision calls on tiny tensors are 5-10x slower with intra-op threads on a busy
    # 2-core machine; one thread keeps the file fast. Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the two pipelines
def ours(images: torch.Tensor, n: int, seed: int, **params) -> tuple[torch.Tensor, torch.Tensor]:
    """n outputs of our Augment (images cycled); returns (inputs as float in [0, 1], outputs)."""
    idx = torch.arange(n) % images.shape[0]
    aug = A.Augment(params.pop("size"), **{**OFF, **params})
    out = aug(images[idx], torch.Generator().manual_seed(seed))
    return images[idx].float() / 255, out


def torchvision_pipeline(
    size,
    crop_scale=(0.2, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    hflip=0.0,
    jitter=(0.4, 0.4, 0.4, 0.1),
    jitter_p=0.0,
    gray_p=0.0,
    blur_p=0.0,
    blur_kernel=None,
    blur_sigma=(0.1, 2.0),
    crop=True,
):
    """The official recipe as torchvision transforms; stages with probability 0 are left out."""
    stages = [T.RandomResizedCrop(size, scale=crop_scale, ratio=crop_ratio, antialias=True)] if crop else []
    if jitter_p:
        stages.append(T.RandomApply([T.ColorJitter(*jitter)], p=jitter_p))
    if gray_p:
        stages.append(T.RandomGrayscale(gray_p))
    if blur_p:
        stages.append(T.RandomApply([T.GaussianBlur(blur_kernel, blur_sigma)], p=blur_p))
    if hflip:
        stages.append(T.RandomHorizontalFlip(hflip))
    return T.Compose(stages)


def reference(images: torch.Tensor, n: int, seed: int, **params) -> tuple[torch.Tensor, torch.Tensor]:
    """n outputs of torchvision's pipeline, one image at a time (images cycled)."""
    tf = torchvision_pipeline(**params)
    torch.manual_seed(seed)  # torchvision draws from the global generator
    x = images[torch.arange(n) % images.shape[0]].float() / 255
    return x, torch.stack([tf(img) for img in x])


# ----------------------------------------------------------------------------- statistics
def _se_std(x: torch.Tensor) -> float:
    """Standard error of the sample std (delta method; valid for non-normal data)."""
    c = x - x.mean()
    m2, m4 = (c**2).mean(), (c**4).mean()
    return math.sqrt(max((m4 - m2**2).item(), 0.0) / (4 * max(m2.item(), 1e-30) * len(x)))


def _cdf(x: torch.Tensor, t: float) -> tuple[float, float]:
    return (x < t).double().mean().item(), (x <= t).double().mean().item()


def compare(name: str, a: torch.Tensor, b: torch.Tensor, k: float = K) -> list[str]:
    """Mismatches between the distributions of a (ours) and b (torchvision): mean, std, and the
    quantiles, the latter in probability space: at t = b's q-quantile (a value of b), the share of
    a below t must be q within k * sqrt(q (1 - q) (1/na + 1/nb)). Where t is an atom (e.g. 'no
    change', or a crop touching the border) the share of a is an interval, [P(a < t), P(a <= t)]."""
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = len(a), len(b)
    bad = []
    se = math.sqrt(a.var().item() / na + b.var().item() / nb) + 1e-9
    if abs(a.mean() - b.mean()) > k * se:
        bad.append(f"{name}: mean {a.mean():.4f} vs {b.mean():.4f} (tol {k * se:.4f})")
    se = math.hypot(_se_std(a), _se_std(b)) + 1e-9
    if abs(a.std() - b.std()) > k * se:
        bad.append(f"{name}: std {a.std():.4f} vs {b.std():.4f} (tol {k * se:.4f})")
    for q in QUANTILES:
        t = torch.quantile(b, q, interpolation="nearest").item()
        lo, hi = _cdf(a, t)
        tol = k * math.sqrt(q * (1 - q) * (1 / na + 1 / nb))
        if not lo - tol <= q <= hi + tol:
            b_lo, b_hi = _cdf(b, t)
            bad.append(
                f"{name}: q{q:g} = {t:.4f}: share below {lo:.3f}..{hi:.3f} vs {b_lo:.3f}..{b_hi:.3f} (tol {tol:.3f})"
            )
    return bad


def compare_rate(name: str, a: torch.Tensor, b: torch.Tensor, p: float | None, k: float = K) -> list[str]:
    """Binomial rates: ours vs torchvision within k SE of the difference; each vs nominal p."""
    ra, rb = a.double().mean().item(), b.double().mean().item()
    bad = []
    pooled = (ra * len(a) + rb * len(b)) / (len(a) + len(b))
    se = math.sqrt(max(pooled * (1 - pooled), 1e-4) * (1 / len(a) + 1 / len(b)))
    if abs(ra - rb) > k * se:
        bad.append(f"{name}: rate {ra:.4f} vs {rb:.4f} (tol {k * se:.4f})")
    if p is not None:
        for who, r, n in (("ours", ra, len(a)), ("torchvision", rb, len(b))):
            se = math.sqrt(p * (1 - p) / n)
            if abs(r - p) > k * se:
                bad.append(f"{name}: {who} rate {r:.4f} vs nominal {p} (tol {k * se:.4f})")
    return bad


# ----------------------------------------------------------------------------- crop geometry
def ramp(height: int, width: int) -> torch.Tensor:
    """uint8 (1, 3, H, W) whose pixels encode their coordinates: R = x, G = y, B = 128."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([x, y, torch.full_like(x, 128)]).unsqueeze(0).to(torch.uint8)


def recover_boxes(out: torch.Tensor) -> torch.Tensor:
    """(x0, y0, w, h) of the crops that produced `out` from a `ramp` image.

    Both resizes sample output column j at source x = x0 - 0.5 + w (j + 0.5) / S (pixel centres,
    align_corners=False), so a straight-line fit of the R values against (j + 0.5) / S over the
    columns away from the borders gives w (slope) and x0 (intercept + 0.5); likewise G, rows, y0, h.
    Ours (bilinear, box-averaging when shrinking) is exact on a ramp; torchvision's antialiased
    shrink is not quite (its sampled triangle weights are off-centre by up to ~0.1 px), so its boxes
    are recovered to about +-0.1 px and rounded."""
    s = out.shape[-1]
    v = out.double() * 255
    p = (torch.arange(2, s - 2, dtype=torch.double) + 0.5) / s
    pc = p - p.mean()

    def fit(values):  # (n, s) -> start, length
        values = values[:, 2 : s - 2]
        slope = (values - values.mean(dim=1, keepdim=True)) @ pc / (pc @ pc)
        return values.mean(dim=1) - slope * p.mean() + 0.5, slope

    x0, w = fit(v[:, 0].mean(dim=1))  # R along x
    y0, h = fit(v[:, 1].mean(dim=2))  # G along y
    return torch.stack([x0, y0, w, h], dim=1)


CROP_CASES = {
    # The CIFAR recipe: 32 px in and out, scale (0.2, 1), ratio (3/4, 4/3); only upscaling.
    "cifar32": dict(height=32, width=32, size=32, crop_scale=(0.2, 1.0)),
    # A 4:1 image: most draws do not fit, so ~60% of crops are the central fallback (h = 16,
    # w = round(16 * 4/3) = 21); crops up to 64 px wide are also downscaled to 16 (antialiasing).
    "wide-fallback": dict(height=16, width=64, size=16, crop_scale=(0.3, 1.0)),
}


@pytest.mark.parametrize("case", CROP_CASES)
def test_crop_geometry_distribution(case):
    c = dict(CROP_CASES[case])
    height, width = c.pop("height"), c.pop("width")
    img = ramp(height, width)
    boxes = {
        "ours": recover_boxes(ours(img, N_OURS, 0, **c)[1]),
        "torchvision": recover_boxes(reference(img, N_REF, 0, **c)[1]),
    }
    for who, b in boxes.items():
        # integer pixel boxes inside the image, recovered (nearly) exactly: a half-pixel shift in
        # the resize or a box outside the image (e.g. a missing fallback) fails here already
        assert (b - b.round()).abs().max() < (0.01 if who == "ours" else 0.3), who
        b = b.round()
        assert (b[:, :2] >= 0).all() and (b[:, 0] + b[:, 2] <= width).all() and (b[:, 1] + b[:, 3] <= height).all(), who
    stats = {}
    for who, b in boxes.items():
        b = b.round()
        stats[who] = {
            "area fraction": b[:, 2] * b[:, 3] / (height * width),
            "log aspect": (b[:, 2] / b[:, 3]).log(),
            # the margins have an atom at 0 (crops touching the border), which an off-by-one in
            # the offset draw (randint(0, W - w + 1)) empties or inflates
            "left margin": b[:, 0] / width,
            "right margin": (width - b[:, 0] - b[:, 2]) / width,
            "top margin": b[:, 1] / height,
            "bottom margin": (height - b[:, 1] - b[:, 3]) / height,
        }
    bad = [m for name in stats["ours"] for m in compare(name, stats["ours"][name], stats["torchvision"][name])]
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- grayscale and flip
def test_grayscale_and_flip_rates():
    params = dict(size=32, gray_p=0.2, hflip=0.5)
    bad = []
    measured = {}
    for who, fn in (("ours", ours), ("torchvision", reference)):
        _, out = fn(ramp(32, 32), N_OURS if who == "ours" else N_REF, 1, **params)
        gray = (out - out[:, :1]).abs().amax(dim=(1, 2, 3)) < 1e-6  # R == G == B
        # x grows to the right in R, and in the gray mix 0.2989 R + 0.587 G + 0.114 B; a flip reverses it
        lum = out.mean(dim=1).mean(dim=1)  # (n, S): channel-mean, row-mean
        flipped = lum[:, -3] < lum[:, 2]
        measured[who] = gray, flipped
    bad += compare_rate("grayscale", measured["ours"][0], measured["torchvision"][0], 0.2)
    bad += compare_rate("flip", measured["ours"][1], measured["torchvision"][1], 0.5)
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- colour jitter
# Measured with helpers independent of the module under test (its own colour code could be wrong).
def saturation(x: torch.Tensor) -> torch.Tensor:
    """HSV saturation (max - min) / max per pixel: (n, H, W)."""
    hi, lo = x.amax(dim=1), x.amin(dim=1)
    return (hi - lo) / hi.clamp_min(1e-6)


def hue_angle(x: torch.Tensor) -> torch.Tensor:
    """Hue as an angle in the chroma plane (the hexagonal hue, smoothed), radians: (n, H, W)."""
    r, g, b = x.unbind(1)
    return torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)


def jitter_stats(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image estimates of the four jitter factors that turned x into y.

    With L the mean luminance, G the luminance std and C the mean chroma |rgb - luminance|:
    brightness (x -> b x) scales L, G and C by b; contrast (blend with the mean luminance) keeps L
    and scales G and C by c; saturation (blend with the pixel's luminance) keeps L and G and scales
    C by s. So L'/L, (G'/G) / (L'/L) and (C'/C) / (G'/G) estimate b, c and s whatever the order
    (up to clipping at 0 and 1, which both pipelines share). Hue rotation keeps saturation: its
    factor is the circular mean of the per-pixel hue change, weighted by saturation."""

    def lcg(img):
        lum = TF.rgb_to_grayscale(img)
        chroma = (img - lum).norm(dim=1).mean(dim=(1, 2))
        return lum.mean(dim=(1, 2, 3)), lum.std(dim=(1, 2, 3)), chroma

    (lx, gx, cx), (ly, gy, cy) = lcg(x), lcg(y)
    ang = hue_angle(y) - hue_angle(x)
    wgt = saturation(x) * saturation(y)
    hue = torch.atan2((wgt * ang.sin()).sum(dim=(1, 2)), (wgt * ang.cos()).sum(dim=(1, 2))) / (2 * math.pi)
    return {
        "changed": (y - x).abs().amax(dim=(1, 2, 3)) > 1e-6,
        "brightness factor": ly / lx,
        "contrast factor": (gy / gx) / (ly / lx),
        "saturation factor": (cy / cx) / (gy / gx),
        "hue shift": hue,  # in turns, like ColorJitter's hue factor
    }


def tinted_digits() -> torch.Tensor:
    """The digits at 32 px, each painted with a random foreground and background colour."""
    d = load_digits(32).images[:, :1].float() / 255  # gray ink in [0, 1]
    g = torch.Generator().manual_seed(3)
    fg, bg = torch.rand(len(d), 3, 1, 1, generator=g), torch.rand(len(d), 3, 1, 1, generator=g)
    return ((fg * d + bg * (1 - d)) * 255).round().to(torch.uint8)


def colourful(images: torch.Tensor) -> torch.Tensor:
    """Drop near-gray images (their saturation and hue changes are undefined) and flat ones."""
    x = images.float() / 255
    keep = (saturation(x).mean(dim=(1, 2)) > 0.05) & (TF.rgb_to_grayscale(x).std(dim=(1, 2, 3)) > 0.02)
    return images[keep]


@pytest.fixture
def colour_images(request):
    """1,000 CIFAR-10 photos, or tinted digits where the CIFAR tarball is absent."""
    try:
        root = request.getfixturevalue("cifar_slice")
    except pytest.skip.Exception:
        return colourful(tinted_digits())
    return colourful(read_image_folder(str(root / "train"), 32).images)


def test_colour_jitter_distribution(colour_images):
    jit = dict(size=32, jitter_p=0.8, jitter=(0.4, 0.4, 0.4, 0.1))
    x, y = ours(colour_images, 4000, 2, **NO_CROP, **jit)
    mine = jitter_stats(x, y)
    x, y = reference(colour_images, N_REF, 2, crop=False, **jit)
    theirs = jitter_stats(x, y)
    bad = compare_rate("jitter applied", mine.pop("changed"), theirs.pop("changed"), 0.8)
    for name in mine:
        bad += compare(name, mine[name], theirs[name])
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- Gaussian blur
def high_freq(x: torch.Tensor) -> torch.Tensor:
    """Per-image energy of the neighbour differences (a high-pass)."""
    return x.diff(dim=-1).pow(2).mean(dim=(1, 2, 3)) + x.diff(dim=-2).pow(2).mean(dim=(1, 2, 3))


def test_blur_distribution():
    # Noise images: the high-frequency energy left after a blur is then a steep, nearly
    # image-independent function of sigma, so its distribution mirrors that of sigma.
    noise = torch.randint(0, 256, (500, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    # Kernel: the SimCLR rule, 10% of the side made odd: int(6.4) = 6 -> 7 (23 at 224 px). Fixed
    # here, so a change of blur_kernel_size shows up as a different drop at large sigma.
    blur = dict(size=64, blur_p=0.5, blur_sigma=(0.1, 2.0))
    x, y = ours(noise, N_REF, 5, **NO_CROP, **blur)  # not N_OURS: our grouped-conv blur is slowish on CPU
    mine = high_freq(y) / high_freq(x)
    x, y = reference(noise, N_REF, 5, crop=False, blur_kernel=7, **blur)
    theirs = high_freq(y) / high_freq(x)
    # "blurred": a drop of over 1% in high-frequency energy, i.e. sigma above ~0.3 (a Gaussian with
    # sigma 0.1 is the identity to 1e-20), so about 0.5 * (2.0 - 0.3) / 1.9 ~= 0.45 of outputs
    bad = compare_rate("blurred", mine < 0.99, theirs < 0.99, None)
    bad += compare("high-frequency energy ratio", mine, theirs)
    assert not bad, "\n".join(bad)
