"""Two-view augmentation throughput: our batched `Augment` against torchvision's per-image pipeline
and kornia's per-sample batched one (when kornia is installed: `pip install "simsiam[bench]"`).

    python benchmarks/augment.py [--seconds S] [--rounds R] [--sizes 32 224] [--note TEXT]

Recipes: 32 -> CIFAR (32 px in, 32 px out, no blur); 224 -> ImageNet (256 px in, 224 px out, blur).
torchvision runs the way the official SimSiam code (and lightly) does: a Dataset of decoded PIL
images whose __getitem__ applies the transform twice, in a DataLoader with 2 workers. Ours runs in
the main process on batches of uint8 tensors, as engine.py does. The two alternate in short windows
(`--rounds`) and the medians are reported, so a drift in a shared machine's speed hits both.
Images/s counts source images (each gives two views). For the CIFAR recipe it also measures the
share of a CPU training step (width-1/4 ResNet-18 SimSiam, batch 256, channels_last) spent
augmenting, and with a CUDA GPU it times ours there too. Prints a table and writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import numpy as np
import torch
from _common import RESULTS, commit, machine, write_section
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import transforms as T

from simsiam import Views, build_model, from_preset
from simsiam.data import Augment
from simsiam.data.augment import blur_kernel_size

RECIPES = {  # output size -> input size, blur probability, torchvision DataLoader batch
    32: dict(in_size=32, blur_p=0.0, batch=256),
    224: dict(in_size=256, blur_p=0.5, batch=64),
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PILBlur:
    """The official code's GaussianBlur: PIL's filter with radius ~ U(0.1, 2.0)."""

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=np.random.uniform(0.1, 2.0)))


def torchvision_transform(size: int, blur_p: float) -> T.Compose:
    stages = [
        T.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur_p:
        stages.append(T.RandomApply([PILBlur()], p=blur_p))
    return T.Compose(stages + [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


class TwoViews(Dataset):
    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])  # as torchvision's CIFAR10 does
        return self.transform(img), self.transform(img)


def rate(step, seconds: float, warmup: int) -> float:
    """Images/s of `step()` (returns images done) over a wall-clock budget, after warm-up steps."""
    for _ in range(warmup):
        step()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += step()
    return done / (time.perf_counter() - t0)


def ours_rate(images: torch.Tensor, size: int, blur_p: float, batch: int, seconds: float) -> float:
    aug = Augment(size, blur_p=blur_p, mean=MEAN, std=STD)
    g = torch.Generator(device=images.device).manual_seed(0)
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)

    def step():
        idx = torch.randint(0, len(images), (batch,), generator=g, device=images.device)
        aug.two_views(images[idx], g)
        sync()
        return batch

    return rate(step, seconds, warmup=3)


def kornia_pipeline(size: int, blur_p: float):
    """kornia's per-sample equivalent of the recipe (`same_on_batch=False`, its default): each
    image draws its own crop, jitter factors, grayscale, blur and flip on the batch's device.
    ColorJitter's order of the four adjustments is drawn once per batch (torchvision and ours draw
    one per image: `kornia_equivalence`)."""
    import kornia.augmentation as K

    stages = [
        K.RandomResizedCrop((size, size), scale=(0.2, 1.0)),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
    ]
    if blur_p:
        kernel = blur_kernel_size(size)  # ours: ~10% of the image, odd (23 at 224)
        stages.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_p))
    stages += [K.RandomHorizontalFlip(), K.Normalize(torch.tensor(MEAN), torch.tensor(STD))]
    return K.AugmentationSequential(*stages)


def kornia_rate(images: torch.Tensor, size: int, blur_p: float, batch: int, seconds: float) -> float | None:
    """Images/s of kornia's two views of uint8 batches (converted to float as ours does); None
    without kornia (`pip install kornia`)."""
    try:
        pipe = kornia_pipeline(size, blur_p).to(images.device)
    except ImportError:
        return None
    g = torch.Generator(device=images.device).manual_seed(0)
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)

    def step():
        idx = torch.randint(0, len(images), (batch,), generator=g, device=images.device)
        x = images[idx].float().div_(255)
        pipe(x), pipe(x)
        sync()
        return batch

    return rate(step, seconds, warmup=3)


def kornia_equivalence() -> list[str]:
    """Does kornia's pipeline draw what torchvision's does? Each colour op against torchvision's
    with kornia's own drawn factors, the crop sampler's statistics against torchvision's
    `RandomResizedCrop.get_params`, and whether each image draws its own jitter order (torchvision
    and ours do). Lines for the report; [] without kornia."""
    try:
        import kornia
        import kornia.augmentation as K
    except ImportError:
        return []
    import torchvision.transforms.functional as TF
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    x = torch.rand(16, 3, 16, 16)
    diffs = {}
    for name, tf, arg in [
        ("brightness", TF.adjust_brightness, 0.4),
        ("contrast", TF.adjust_contrast, 0.4),
        ("saturation", TF.adjust_saturation, 0.4),
        ("hue", TF.adjust_hue, 0.1),
    ]:
        jitter = K.ColorJitter(**{name: arg}, p=1.0)
        out, f = jitter(x), jitter._params[f"{name}_factor"]
        ref = torch.stack([tf(x[i], float(f[i])) for i in range(len(x))])
        diffs[name] = (out - ref).abs().max().item()
    jitter = K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0)
    jitter(x)
    order_shape = tuple(jitter._params["order"].shape)

    n, shape = 20000, (3, 32, 40)
    src = K.RandomResizedCrop((32, 32), scale=(0.2, 1.0))._param_generator(torch.Size((n, *shape)), False)["src"]
    w, h = src[:, 1, 0] - src[:, 0, 0] + 1, src[:, 2, 1] - src[:, 1, 1] + 1
    ref = torch.tensor(
        [RandomResizedCrop.get_params(torch.zeros(shape), [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
        dtype=torch.float32,
    )  # i, j, h, w
    area, ref_area = (w * h).mean() / (32 * 40), (ref[:, 2] * ref[:, 3]).mean() / (32 * 40)
    per_image = order_shape != (4,)
    ops = ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
    order = "per image" if per_image else "once per batch (shape (4,))"
    verdict = "" if per_image else ": torchvision and ours draw one per image, so kornia fails the equivalence test"
    return [
        f"kornia {kornia.__version__} vs torchvision: colour ops at kornia's drawn factors, max |diff| {ops}; "
        f"RandomResizedCrop mean area {area:.4f} vs {ref_area:.4f} ({n:,} draws, 32x40 px); "
        f"ColorJitter's order of the four adjustments drawn {order}{verdict}"
    ]


def torchvision_rate(images: np.ndarray, size: int, blur_p: float, batch: int, seconds: float) -> float:
    """A fresh 2-worker DataLoader per call, shut down after it: no worker prefetches in the
    background while ours is timed."""
    ds = TwoViews(images, torchvision_transform(size, blur_p))
    loader = DataLoader(
        ds,
        batch_size=batch,
        num_workers=2,
        prefetch_factor=2,
        sampler=RandomSampler(ds, replacement=True, num_samples=1 << 30),
    )
    batches = iter(loader)
    # warm-up past the 2 x 2 prefetched batches, so the timed batches are produced while timing
    r = rate(lambda: len(next(batches)[0]), seconds, warmup=6)
    batches = None  # the last reference to the iterator: its workers stop here
    return r


def side_by_side(images: torch.Tensor, arr: np.ndarray, size: int, r: dict, seconds: float, rounds: int) -> tuple:
    """Ours, torchvision and kornia (when installed) in alternating windows (seconds / rounds
    each), so all see the same machine (this one is shared and its speed drifts by tens of percent
    over minutes). Returns the median images/s of ours and torchvision, the median of the
    per-round ratios ours / torchvision, kornia's median images/s and ours / kornia (None
    without kornia)."""
    ours, tv, kornia = [], [], []
    for _ in range(rounds):
        ours.append(ours_rate(images, size, r["blur_p"], r["batch"], seconds / rounds))
        tv.append(torchvision_rate(arr, size, r["blur_p"], r["batch"], seconds / rounds))
        kornia.append(kornia_rate(images, size, r["blur_p"], r["batch"], seconds / rounds))
    k = [o / x for o, x in zip(ours, kornia) if x] or None
    return (
        statistics.median(ours),
        statistics.median(tv),
        statistics.median(o / t for o, t in zip(ours, tv)),
        statistics.median(x for x in kornia if x) if k else None,
        statistics.median(k) if k else None,
    )


def step_share(images: torch.Tensor, seconds: float) -> tuple[float, float]:
    """Seconds per CIFAR training step (batch 256) for augmentation and for the model update."""
    cfg = from_preset("cifar10-cpu", data_dir="x", batch_size=256)
    model = build_model(cfg).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    aug, g = Augment.from_config(cfg), torch.Generator().manual_seed(0)
    batch = images[:256]
    views = []

    def augment():
        views[:] = [v.contiguous(memory_format=torch.channels_last) for v in aug.two_views(batch, g)]
        return 1

    def update():
        loss = model(Views(*views)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return 1

    t_aug = 1 / rate(augment, seconds, warmup=2)
    t_model = 1 / rate(update, seconds, warmup=1)
    return t_aug, t_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=6.0, help="timed wall-clock budget per measurement")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating windows of ours and torchvision per recipe (medians are reported)",
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224], choices=sorted(RECIPES))
    p.add_argument("--note", default="", help="remark written with the results (e.g. 'smoke run')")
    p.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS.name}")
    args = p.parse_args()

    rows, lines = [], []
    for size in args.sizes:
        r = RECIPES[size]
        n = 4096 if size == 32 else 512
        arr = np.random.default_rng(0).integers(0, 256, (n, r["in_size"], r["in_size"], 3), dtype=np.uint8)
        images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        ours, tv, ratio, kornia, vs_kornia = side_by_side(images, arr, size, r, args.seconds, args.rounds)
        gpu = kornia_gpu = None
        if torch.cuda.is_available():
            gpu = ours_rate(images.cuda(), size, r["blur_p"], 256, args.seconds)
            kornia_gpu = kornia_rate(images.cuda(), size, r["blur_p"], 256, args.seconds)
        name = f"{r['in_size']} px -> {size} px{', blur' if r['blur_p'] else ''}"
        rows.append((name, ours, tv, ratio, kornia, vs_kornia, gpu, kornia_gpu))
        if size == 32:
            t_aug, t_model = step_share(images, args.seconds)
            lines.append(
                f"CIFAR step (batch 256, width-1/4 ResNet-18, CPU): augmentation {1e3 * t_aug:.0f} ms, "
                f"model update {1e3 * t_model:.0f} ms -> augmentation is "
                f"{100 * t_aug / (t_aug + t_model):.1f}% of the step"
            )

    head = (
        "| recipe | ours CPU (img/s) | torchvision, 2 workers (img/s) | ours / torchvision (median of rounds) "
        "| kornia CPU (img/s) | ours / kornia (median of rounds) | ours GPU (img/s) | kornia GPU (img/s) |"
    )
    table = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def num(x, fmt="{:,.0f}"):
        return "-" if x is None else fmt.format(x)

    table += [
        f"| {n} | {o:,.0f} | {t:,.0f} | {q:.2f}x | {num(k)} | {num(qk, '{:.2f}x')} | {num(g)} | {num(kg)} |"
        for n, o, t, q, k, qk, g, kg in rows
    ]
    out = "\n".join(table + [""] + lines + kornia_equivalence())
    print(out)
    if not args.no_write:
        date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        note = f" **{args.note}**" if args.note else ""
        write_section(
            "augment.py",
            f"## Two-view augmentation throughput (`benchmarks/augment.py`)\n\n"
            f"{date}, {commit()}, `--seconds {args.seconds:g} --rounds {args.rounds}`.{note}\nMachine: {machine()}.\n"
            f"Images/s counts source images; each yields two views.\n\n{out}\n",
        )
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
