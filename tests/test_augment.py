import math

import pytest
import torch
import torchvision.transforms.functional as TF

from simsiam.data import augment as A
from simsiam.data.augment import Augment


def images(n=8, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def unnormalize(x, aug):
    return x * torch.tensor(aug.std).view(1, 3, 1, 1) + torch.tensor(aug.mean).view(1, 3, 1, 1)


@pytest.mark.parametrize("size,in_size", [(32, 32), (24, 40), (64, 48)])
def test_shape_dtype_range(size, in_size):
    aug = Augment(size)  # ImageNet recipe incl. blur
    x = aug(images(8, in_size), torch.Generator().manual_seed(0))
    assert x.shape == (8, 3, size, size) and x.dtype == torch.float32
    raw = unnormalize(x, aug)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_per_sample_randomness():
    same = images(1).expand(16, -1, -1, -1).contiguous()
    x = Augment(32)(same, torch.Generator().manual_seed(0))
    flat = x.flatten(1)
    dist = torch.cdist(flat, flat)
    assert (dist + torch.eye(16) * 1e9).min() > 1e-3  # every pair of samples differs


def test_seeded_call_is_reproducible_and_views_differ():
    x = images()
    a1, a2 = Augment(32).two_views(x, torch.Generator().manual_seed(5))
    b1, b2 = Augment(32).two_views(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a1, b1, rtol=0, atol=0)
    torch.testing.assert_close(a2, b2, rtol=0, atol=0)
    assert (a1 - a2).abs().max() > 0.1


def uniform_rand(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.rand(*shape, generator=g)


def test_crop_boxes_follow_torchvision_rule():
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    boxes = A.crop_boxes(20000, 32, 40, scale, ratio, uniform_rand(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 40).all() and (boxes[:, 3] <= 32).all()
    assert torch.equal(w, w.round()) and torch.equal(h, h.round())  # integer pixels, like torchvision
    area = w * h / (32 * 40)
    # rounding w and h moves the area a little outside `scale`; torchvision does the same
    assert area.min() > 0.17 and area.max() <= 1.0
    # Compare the distribution with torchvision's own sampler.
    torch.manual_seed(0)
    from torchvision.transforms import RandomResizedCrop

    ref = torch.tensor(
        [RandomResizedCrop.get_params(torch.zeros(3, 32, 40), list(scale), list(ratio)) for _ in range(20000)],
        dtype=torch.float32,
    )  # i, j, h, w
    ref_area = ref[:, 2] * ref[:, 3] / (32 * 40)
    assert abs(area.mean() - ref_area.mean()) < 0.01
    assert abs((w / h).log().mean() - (ref[:, 3] / ref[:, 2]).log().mean()) < 0.01
    assert abs(boxes[:, 0].mean() - ref[:, 1].mean()) < 0.2  # left offset


def test_crop_fallback_is_central():
    # ratio range that cannot fit a 10x40 image -> central crop with the ratio clamped
    boxes = A.crop_boxes(4, 10, 40, (0.99, 1.0), (1.0, 1.0), uniform_rand(0))
    assert boxes.tolist() == [[15.0, 0.0, 25.0, 10.0]] * 4


def test_resized_crop_matches_torchvision_when_upscaling():
    x = images(1, 16)
    box = torch.tensor([[2.0, 3.0, 12.0, 11.0]])  # x0, y0, x1, y1 -> 10 wide, 8 high
    ours = A.resized_crop(x, box, 20)[0]
    ref = TF.resized_crop(x[0].float() / 255, 3, 2, 8, 10, [20, 20], antialias=False)
    # roi_align samples the pixels just outside the box at its border (torchvision clamps to the
    # crop's edge), so the outermost output ring differs; the interior is the same bilinear resize.
    torch.testing.assert_close(ours[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "op,tv",
    [
        (A._brightness, TF.adjust_brightness),
        (A._contrast, TF.adjust_contrast),
        (A._saturation, TF.adjust_saturation),
        (A._hue, TF.adjust_hue),
    ],
)
def test_colour_ops_match_torchvision(op, tv):
    x = images(4, 16).float() / 255
    factors = [0.3, 0.7, 1.2, 1.4] if tv is not TF.adjust_hue else [-0.1, -0.03, 0.05, 0.1]
    got = op(x, torch.tensor(factors).view(-1, 1, 1, 1))
    for i, f in enumerate(factors):
        torch.testing.assert_close(got[i], tv(x[i], f), atol=2e-5, rtol=0)


def test_jitter_draws_a_random_order_per_sample():
    n = 4000
    x = images(1, 8).float().div(255).expand(n, -1, -1, -1).contiguous()
    out = A.color_jitter(x, torch.ones(n, dtype=torch.bool), (0.4, 0.4, 0.4, 0.1), uniform_rand(1))
    # brightness then contrast != contrast then brightness (clamping), so different orders leave
    # different results even for equal factors; check many distinct outputs exist
    assert torch.unique(out.flatten(1)[:, 0]).numel() > n // 2


def test_grayscale_and_flip_rates():
    aug = Augment(
        16,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        jitter_p=0,
        blur_p=0,
        gray_p=0.2,
        hflip=0.5,
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    x = images(4000, 16)
    out = aug(x, torch.Generator().manual_seed(0))
    is_gray = (out[:, 0] - out[:, 1]).abs().amax(dim=(1, 2)) < 1e-6
    assert abs(is_gray.float().mean() - 0.2) < 0.03
    base = x.float() / 255
    gray = A.grayscale(base).expand_as(base)
    flipped = [
        torch.allclose(o, b.flip(-1), atol=1e-5) or torch.allclose(o, gb.flip(-1), atol=1e-5)
        for o, b, gb in zip(out[:1000], base[:1000], gray[:1000])
    ]
    assert abs(sum(flipped) / 1000 - 0.5) < 0.06


def test_blur_smooths_and_preserves_mean():
    x = images(6, 32).float() / 255
    apply = torch.tensor([True, True, True, False, False, False])
    y = A.gaussian_blur(x, apply, torch.full((6,), 2.0), A.blur_kernel_size(224))
    assert torch.equal(y[3:], x[3:])
    assert y[:3].diff(dim=-1).abs().mean() < 0.5 * x[:3].diff(dim=-1).abs().mean()
    assert abs(y[:3].mean() - x[:3].mean()) < 0.01
    assert A.blur_kernel_size(224) == 23 and A.blur_kernel_size(32) == 3


def test_no_blur_for_32px_recipe():
    aug = Augment(
        32,
        blur_p=0.0,
        jitter_p=0,
        gray_p=0,
        hflip=0,
        crop_scale=(1, 1),
        crop_ratio=(1, 1),
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    x = images(2, 32)
    torch.testing.assert_close(aug(x, torch.Generator().manual_seed(0)), x.float() / 255, atol=1e-6, rtol=0)


def test_hue_shift_zero_is_identity_and_grey_and_pure_colours_match_torchvision():
    x = torch.rand(3, 3, 10, 10)
    torch.testing.assert_close(A._hue(x, torch.zeros(3, 1, 1, 1)), x, atol=1e-5, rtol=0)
    assert math.isclose(A._GRAY[0] + A._GRAY[1] + A._GRAY[2], 1.0, abs_tol=1e-3)
    # grey pixels, black, white, pure and two-channel-equal colours (ties in the max)
    px = torch.tensor(
        [
            [0.5, 0.5, 0.5],
            [0, 0, 0],
            [1, 1, 1],
            [1, 0, 0],
            [0, 1, 0],
            [0, 0, 1],
            [1, 1, 0],
            [0, 1, 1],
            [1, 0, 1],
            [0.2, 0.7, 0.7],
            [0.9, 0.9, 0.1],
            [0.3, 0.1, 0.3],
        ]
    )
    img = px.T.reshape(1, 3, 3, 4).expand(4, -1, -1, -1)
    for i, f in enumerate([-0.5, -0.17, 0.25, 0.5]):
        got = A._hue(img[i : i + 1], torch.tensor([f]).view(-1, 1, 1, 1))[0]
        torch.testing.assert_close(got, TF.adjust_hue(img[i], f), atol=2e-5, rtol=0)


def test_crops_no_larger_than_the_output_take_grid_sample_equal_to_roi_align():
    from torchvision.ops import roi_align

    x = images(64, 32).float() / 255
    g = torch.Generator().manual_seed(0)
    boxes = A.crop_boxes(64, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), lambda *s: torch.rand(*s, generator=g))
    idx = torch.arange(64.0).unsqueeze(1)
    ref = roi_align(x, torch.cat([idx, boxes], 1), (32, 32), 1.0, -1, True)
    torch.testing.assert_close(A._upscale_crop(x, boxes, 32), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(A.resized_crop(images(64, 32), boxes, 32), ref, atol=1e-6, rtol=0)
    # crops larger than the output are averaged by roi_align (several samples per pixel); a batch
    # mixing both kinds keeps its order
    ref = roi_align(x, torch.cat([idx, boxes], 1), (16, 16), 1.0, -1, True)
    assert 0 < ((boxes[:, 2:] - boxes[:, :2]) <= 16).all(dim=1).sum() < 64
    torch.testing.assert_close(A.resized_crop(images(64, 32), boxes, 16), ref, atol=1e-6, rtol=0)
    # on a GPU the whole batch takes roi_align (no split, so no host sync): the same crops to 1e-6
    torch.testing.assert_close(
        A._roi_crop(x, boxes, torch.arange(64), 16), A.resized_crop(images(64, 32), boxes, 16), atol=1e-6, rtol=0
    )
    big = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    ref = roi_align(x[:1], torch.cat([idx[:1], big], 1), (8, 8), 1.0, -1, True)
    torch.testing.assert_close(A.resized_crop(images(64, 32)[:1], big, 8), ref, atol=1e-6, rtol=0)


def test_images_no_larger_than_the_output_are_cropped_without_a_host_sync(monkeypatch):
    """CIFAR (32 px stored, 32 px crops): the path is known from the shapes, no `nonzero` (which
    waits for the GPU) is needed to split the batch."""
    g = torch.Generator().manual_seed(0)
    boxes = A.crop_boxes(8, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), lambda *s: torch.rand(*s, generator=g))
    expected = A.resized_crop(images(8, 32), boxes, 32)
    monkeypatch.setattr(torch.Tensor, "nonzero", lambda *a, **k: pytest.fail("nonzero called"))
    assert torch.equal(A.resized_crop(images(8, 32), boxes, 32), expected)


def test_solarize_matches_torchvision():
    aug = Augment(
        16,
        crop_scale=(1, 1),
        crop_ratio=(1, 1),
        hflip=0,
        jitter_p=0,
        gray_p=0,
        blur_p=0,
        solarize_p=1.0,
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    x = images(3, 16)
    ref = torch.stack([TF.solarize(img.float() / 255, 0.5) for img in x])
    torch.testing.assert_close(aug(x, torch.Generator().manual_seed(0)), ref, atol=1e-6, rtol=0)


def test_two_views_default_draw_order_is_unchanged():
    """No per-view probabilities: exactly two calls of the same pipeline on one generator (the draw
    order that resume and stream == memory identities rely on)."""
    x, aug = images(), Augment(32, solarize_p=0.3)
    v1, v2 = aug.two_views(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(v1, aug(x, g), rtol=0, atol=0)
    torch.testing.assert_close(v2, aug(x, g), rtol=0, atol=0)


def test_second_view_probabilities():
    """BYOL: blur 1.0 / 0.1, solarize 0.0 / 0.2; the second view alone takes blur_p2 / solarize_p2."""
    x, g = images(64, seed=1), torch.Generator().manual_seed(0)
    aug = Augment(
        32,
        jitter_p=0,
        gray_p=0,
        hflip=0,
        crop_scale=(1, 1),
        crop_ratio=(1, 1),
        blur_p=1.0,
        blur_p2=0.0,
        blur_sigma=(1.5, 1.5),
        solarize_p=0.0,
        solarize_p2=1.0,
    )
    v1, v2 = aug.two_views(x, g)
    plain = A.normalize(x.float() / 255, aug.mean, aug.std)
    solarized = A.normalize(torch.where(x >= 128, 255 - x, x).float() / 255, aug.mean, aug.std)
    torch.testing.assert_close(v2, solarized, atol=1e-5, rtol=0)  # solarized, not blurred
    assert (v1 - plain).flatten(1).abs().amax(1).min() > 0.01  # every sample of view 1 blurred
    same = Augment(32, blur_p=1.0, blur_p2=None)
    assert same.two_views(x, torch.Generator().manual_seed(0))[1].shape == (64, 3, 32, 32)


def test_small_views():
    aug = Augment(32, small_size=12, small_scale=(0.05, 0.3), blur_p=0.0)
    x = images(8)
    small = aug.small_views(x, torch.Generator().manual_seed(0), 3)
    assert len(small) == 3 and all(s.shape == (8, 3, 12, 12) for s in small)
    again = aug.small_views(x, torch.Generator().manual_seed(0), 3)
    assert all(torch.equal(a, b) for a, b in zip(small, again))
    assert (small[0] - small[1]).abs().max() > 0.1  # each small view its own draws
