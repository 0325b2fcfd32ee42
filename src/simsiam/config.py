"""The run configuration: one typed dataclass for the run, named presets, strict file reading.

`Config` knows the run (data, model, optimisation, schedule, augmentation, monitoring, output) and
nothing of any method: what a method adds is its own small options dataclass (a `MethodOptions`
subclass in its file, e.g. `SimSiamOptions`), held in `Config.options`. Building a Config from a
preset, a dict, a file or command-line values, with the method's options, is `configure.py`'s job;
this module imports no other part of simsiam but `errors` and `options`.

Every field's default is the paper's ImageNet value unless its comment says otherwise; presets
(`PRESETS`) override fields for a dataset or a scale, and the CLI overrides any field on top.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .options import (
    COUNT,
    DEVICE,
    POSITIVE,
    POSITIVE_INT,
    PROBABILITY,
    SEED,
    Choice,
    Each,
    Int,
    Pair,
    Range,
    check_fields,
)
from .options import opt as _opt

# Largest --image-size / --load-size / --small-crop-size: a batch of 256 images of 4096 px is 13 GB
# as uint8 already; anything larger is a typo that would otherwise try to allocate terabytes.
MAX_IMAGE_SIZE = 4096
IMAGE_SIZE = Int(gt=0, limit=MAX_IMAGE_SIZE, unit=" px")
DATASETS = ("digits", "folder", "cifar10", "cifar100", "stl10")
# torchvision's ColorJitter: brightness, contrast, saturation >= 0, hue in [0, 0.5]
JITTER = Each((Range(ge=0),) * 3 + (Range(ge=0, le=0.5),), ("brightness", "contrast", "saturation", "hue"))


@dataclass
class Config:
    # --- what to train on
    method: str = _opt(
        "simsiam",
        "self-supervised method (each has its own options and defaults; options you give override them)",
    )
    options: MethodOptions | None = dataclasses.field(default=None, metadata={"help": "", "internal": True})
    dataset: str = _opt(
        "digits",
        "digits (embedded, no download) | cifar10 | cifar100 | stl10 (torchvision: "
        "--data-dir holds a copy, else downloaded) | folder (images in --data-dir)",
        check=Choice(DATASETS),
    )
    data_dir: str | None = _opt(
        None,
        "folder of images (sub-folders are classes, train/ and test/ or val/ are splits, "
        "no sub-folders = unlabeled), or a torchvision copy of cifar10/cifar100/stl10",
    )
    strict: bool = _opt(False, "stop at the first unreadable image file instead of skipping it with a warning")
    placement: str = _opt(
        "auto",
        "memory: decode the images once into a uint8 tensor on the device (cached); stream: "
        "DataLoader workers decode each batch from disk; auto: stream only beyond --memory-budget-gb",
        check=Choice(("auto", "memory", "stream")),
    )
    memory_budget_gb: float = _opt(8.0, "with --placement auto: largest decoded dataset kept in memory", check=POSITIVE)
    workers: int = _opt(2, "DataLoader workers that decode files in --placement stream", check=COUNT)
    cache: bool = _opt(True, "cache decoded folders as .npy (keyed by file list, sizes, mtimes) for fast reloads")
    cache_dir: str | None = _opt(None, "decode cache and downloads (default $SIMSIAM_CACHE or ~/.cache/simsiam)")
    image_size: int = _opt(224, "size of the augmented crops fed to the network", check=IMAGE_SIZE)
    load_size: int = _opt(
        0,
        "size the images are decoded and stored at (shorter side, centre square); training crops "
        "are drawn from it and evaluation centre-crops --image-size out of it, as torchvision's "
        "Resize(load) + CenterCrop(image) (imagenet preset: 256); 0 = --image-size",
        check=Int(ge=0, limit=MAX_IMAGE_SIZE, unit=" px"),
    )
    subset: int | None = _opt(None, "train on N random training images (quick trials)", check=POSITIVE_INT)
    holdout: float = _opt(
        0.2, "fraction of the images held out as kNN queries when the data has no test split", check=Range(gt=0, lt=1)
    )
    # --- the network (paper Sec. 3 and App. D)
    arch: str = _opt(
        "resnet50",
        "backbone: resnet18 | resnet34 | resnet50 | resnet101 | resnet152 (with --cifar-stem and --width), "
        "any other torchvision classification model (e.g. mobilenet_v3_small, convnext_tiny; classifier "
        'removed) or timm:NAME (pip install "simsiam[timm]"); all untrained',
    )
    cifar_stem: bool = _opt(False, "ResNets: CIFAR stem, conv1 3x3 stride 1 and no max-pool (paper App. D)")
    width: float = _opt(1.0, "ResNets: channel multiplier; 1.0 = standard, 0.25 for CPU-scale runs", check=POSITIVE)
    proj_layers: int = _opt(3, "projector MLP layers: 3 on ImageNet, 2 on CIFAR (paper App. D)", check=Choice((2, 3)))
    proj_hidden: int = _opt(2048, "projector hidden width ('the hidden fc is 2048-d', Sec. 3)", check=POSITIVE_INT)
    dim: int = _opt(2048, "output dimension d of the projector and of the predictor", check=POSITIVE_INT)
    pred_dim: int = _opt(512, "predictor bottleneck width (512 for d = 2048, Sec. 3)", check=POSITIVE_INT)
    # --- optimisation (official code defaults for ImageNet)
    epochs: int = _opt(100, "training epochs", check=POSITIVE_INT)
    batch_size: int = _opt(
        512,
        "images per step (each gives two views), over all processes: under torchrun each of the W processes "
        "takes batch/W (the paper's 512 is the total over 8 GPUs)",
        check=Int(ge=2, why="BatchNorm needs two images per step for its batch statistics"),
    )
    lr: float = _opt(0.05, "base learning rate; the SGD lr is lr x batch_size / 256", check=POSITIVE)
    momentum: float = _opt(0.9, "SGD momentum", check=Range(ge=0, lt=1))
    weight_decay: float = _opt(1e-4, "weight decay on every parameter, BN included (paper Sec. 3)", check=Range(ge=0))
    fix_pred_lr: bool = _opt(True, "keep the predictor's lr at the initial value (paper Table 1c: 68.1 vs 67.7)")
    schedule: str = _opt(
        "epoch", "cosine decay applied per 'epoch' (official code) or per 'step'", check=Choice(("epoch", "step"))
    )
    warmup_epochs: int = _opt(
        0,
        "linear lr warm-up epochs before the cosine (paper: 10 for batch >= 1024 and for the no-BN heads; 0 otherwise)",
        check=COUNT,
    )
    # --- augmentation (paper Sec. 3, MoCo v2 recipe); applied per sample on the device
    crop_scale: tuple[float, float] = _opt(
        (0.2, 1.0), "RandomResizedCrop area fraction range", check=Pair(gt=0, le=1), nargs=2
    )
    crop_ratio: tuple[float, float] = _opt(
        (3 / 4, 4 / 3), "RandomResizedCrop aspect-ratio range", check=Pair(gt=0), nargs=2
    )
    hflip: float = _opt(
        0.5, "horizontal flip probability (0 for digits: they are not flip-invariant)", check=PROBABILITY
    )
    jitter: tuple[float, float, float, float] = _opt(
        (0.4, 0.4, 0.4, 0.1),
        "ColorJitter brightness contrast saturation hue",
        check=JITTER,
        nargs=4,
    )
    jitter_p: float = _opt(0.8, "probability of colour jitter", check=PROBABILITY)
    gray_p: float = _opt(0.2, "probability of grayscale", check=PROBABILITY)
    blur_p: float = _opt(0.5, "probability of Gaussian blur (0 for 32x32 inputs, paper App. D)", check=PROBABILITY)
    blur_sigma: tuple[float, float] = _opt((0.1, 2.0), "Gaussian blur sigma range", check=Pair(gt=0), nargs=2)
    solarize_p: float = _opt(
        0.0, "probability of solarize (threshold 0.5); 0 for SimSiam, used by the baselines", check=PROBABILITY
    )
    mean: tuple[float, float, float] = _opt(
        (0.485, 0.456, 0.406), "normalisation mean", check=Each((Range(),) * 3), nargs=3
    )
    std: tuple[float, float, float] = _opt(
        (0.229, 0.224, 0.225), "normalisation std", check=Each((POSITIVE,) * 3, why="it divides the images"), nargs=3
    )
    blur_p2: float | None = _opt(
        None, "blur probability of the second view (BYOL: 0.1); None = same as --blur-p", check=PROBABILITY
    )
    solarize_p2: float | None = _opt(
        None, "solarize probability of the second view (BYOL: 0.2); None = same as --solarize-p", check=PROBABILITY
    )
    # --- monitoring
    knn_k: int = _opt(200, "kNN monitor: neighbours", check=POSITIVE_INT)
    knn_t: float = _opt(
        0.1, "kNN monitor: temperature of the exp(sim/T) vote weights (the authors used 0.2)", check=POSITIVE
    )
    knn_every: int = _opt(
        10, "run the kNN monitor every N epochs (and always at the end); 0 = only at the end", check=COUNT
    )
    rank_every: int = _opt(
        1,
        "measure the effective rank (RankMe) of the features and of z every N epochs (and always at the "
        "end), no labels needed; 0 = only at the end",
        check=COUNT,
    )
    rank_samples: int = _opt(
        1024,
        "training images (a fixed sample, not augmented) the effective rank is measured on; 0 = never measure it",
        check=COUNT,
    )
    knn_random_init: bool = _opt(True, "also measure kNN of the backbone at random init, so the gain is visible")
    collapse_patience: int = _opt(
        3, "warn 'looks collapsed' after this many epochs in a row under the threshold", check=POSITIVE_INT
    )
    on_collapse: str = _opt(
        "warn",
        "when an epoch shows a collapse (the rank of z at most 4; z-std alone without the rank: "
        "docs/health.md) or the loss goes non-finite: warn (a non-finite loss still stops) | stop | recover "
        "(go back to the last healthy epoch's checkpoint, one with a z rank of 8 or more, and multiply the lr by "
        "--recover-lr-factor for the rest of the run; at most --max-recoveries times, then stop)",
        check=Choice(("warn", "stop", "recover")),
    )
    recover_lr_factor: float = _opt(
        0.5,
        "with --on-collapse recover: each recovery multiplies every lr by this from there on",
        check=Range(gt=0, lt=1, name="a factor under 1"),
    )
    max_recoveries: int = _opt(
        4, "with --on-collapse recover: recoveries before the run stops (4 halvings: lr / 16)", check=POSITIVE_INT
    )
    tensorboard: bool = _opt(False, "also log every scalar to RUN_DIR/tensorboard (needs the tensorboard package)")
    collapse_fraction: float = _opt(
        0.5,
        "call the run collapsed when z-std ends under this fraction of 1/sqrt(d) (healthy runs sit near 1.0)",
        check=POSITIVE,
    )
    report: bool = _opt(True, "write RUN_DIR/report/ at the end: plots, a retrieval grid, a t-SNE map, summary.md")
    # --- execution
    run_dir: str | None = _opt(None, "where everything of the run goes (default runs/<dataset>-<time>)")
    seed: int = _opt(0, "random seed (data order, augmentation, initialisation)", check=SEED)
    device: str = _opt("auto", "auto (a GPU when there is one, else the CPU) | cpu | cuda | cuda:N | mps", check=DEVICE)
    precision: str = _opt(
        "auto",
        "auto (bf16 on GPUs, fp32 on CPUs: see the design notes) | fp32 | bf16",
        check=Choice(("auto", "fp32", "bf16")),
    )
    channels_last: bool = _opt(True, "channels-last memory format (faster convolutions)")
    sync_bn: bool = _opt(
        True, "under torchrun: BatchNorm statistics over the global batch (SyncBN, as the official code)"
    )
    compile: bool = _opt(
        False, "torch.compile the training step (faster on GPUs after a warm-up; checkpoints keep plain keys)"
    )
    log_every: int = _opt(10, "steps between progress-bar updates (each one syncs with the device)", check=POSITIVE_INT)
    resume: bool = _opt(False, "continue from RUN_DIR/checkpoint.pt")
    checkpoint_every: int = _opt(
        0,
        "also write a checkpoint every N steps, so --resume continues mid-epoch (0: at "
        "each epoch's end only; SIGINT and SIGTERM always write one before stopping)",
        check=COUNT,
    )
    keep_checkpoints: int = _opt(
        2,
        "checkpoints kept (the newest is checkpoint.pt): a torn or corrupt newest one "
        "is detected on --resume and the one before it used",
        check=Int(ge=1, why="the newest"),
    )
    preset: str | None = _opt(None, "preset the run started from (recorded; set with --preset)")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        check_fields(self)  # each field's own `check=`, in the order declared above
        # relations between options (not declarations):
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ConfigError(
                f"--warmup-epochs {self.warmup_epochs} leaves no epoch for the cosine of --epochs {self.epochs}"
            )
        if self.load_size and self.load_size < self.image_size:
            raise ConfigError(
                f"--load-size {self.load_size} must be at least --image-size {self.image_size} (or 0: the same)"
            )
        if self.dataset == "digits" and self.data_dir:
            raise ConfigError(
                f"--data-dir {self.data_dir} is not read with --dataset digits; add --dataset folder "
                "or a folder preset (--preset folder, cifar10, ...)"
            )
        if self.dataset == "folder" and not self.data_dir:
            raise ConfigError("--dataset folder needs --data-dir DIR (a folder of images)")
        if self.options is not None:
            check_fields(self.options)
            self.options.check(self)  # the method's own rules between its options and the run's

    @property
    def stored_size(self) -> int:
        """Size the images are decoded and kept at (--load-size, or --image-size when 0)."""
        return self.load_size or self.image_size

    @property
    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / 256

    @classmethod
    def names(cls) -> list[str]:
        """The run's option names (the fields, less `options`)."""
        return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]

    def to_dict(self) -> dict:
        """The run's options and then the method's, as one flat dict (config.json, --config)."""
        run = {name: getattr(self, name) for name in self.names()}
        return {**run, **(dataclasses.asdict(self.options) if self.options is not None else {})}

    def replace(self, **changes) -> Config:
        """A copy with `changes` (the run's options or the method's own), checked again; another
        method is `configure.from_dict`'s (its options are another class)."""
        if "method" in changes and changes["method"] != self.method:
            raise ConfigError("changing the method of a Config needs its options too: use configure.from_dict")
        own = {f.name for f in dataclasses.fields(self.options)} if self.options is not None else set()
        unknown = sorted(set(changes) - set(self.names()) - own)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)} for --method {self.method}")
        run = coerce_fields(type(self), {k: v for k, v in changes.items() if k not in own})
        options = self.options
        if options is not None and own & set(changes):
            mine = coerce_fields(type(options), {k: v for k, v in changes.items() if k in own})
            options = dataclasses.replace(options, **mine)
        return dataclasses.replace(self, **run, options=options)


@dataclass
class MethodOptions:
    """A method's own options (subclassed in each method's file, fields made with `options.opt`).
    `check` holds the rules between them and the run's options."""

    def __post_init__(self) -> None:
        check_fields(self)

    def check(self, cfg: Config) -> None:
        """Rules between this method's options and the run's (`cfg`)."""


def coerce_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """JSON values checked against `cls`'s field types (tuples arrive as lists): a ConfigError
    naming the key for a value of the wrong type."""
    hints = typing.get_type_hints(cls)
    return {k: _coerce(k, v, hints[k]) for k, v in values.items()}


def _coerce(name, value, hint):
    """Check a JSON value against the field's type; tuples arrive as lists."""
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    base = next((a for a in args if a is not type(None)), hint) if args and type(None) in args else hint
    origin = typing.get_origin(base)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(base)):
            raise ConfigError(f"config key {name} needs {len(typing.get_args(base))} numbers, got {value!r}")
        return tuple(_number(name, v) for v in value)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {name} needs true or false, got {value!r}")
        return value
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number(name, value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    raise ConfigError(f"config key {name} needs a {getattr(base, '__name__', base)}, got {value!r}")


def _number(name, value) -> float:
    """A JSON number as a float; a string, a bool or an int beyond any float is a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config key {name} needs numbers, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond 1.8e308
        raise ConfigError(
            f"config key {name} needs a number below 1e308, got one of {len(str(abs(value)))} digits"
        ) from None


# Presets: overrides on top of the ImageNet defaults. The paper's recipes are exact; the `-cpu`
# and `digits` presets are tuned for a 2-core CPU and say so.
_CIFAR_PAPER = dict(
    image_size=32,
    arch="resnet18",
    cifar_stem=True,
    proj_layers=2,
    lr=0.03,
    weight_decay=5e-4,
    batch_size=512,
    epochs=800,
    blur_p=0.0,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)


def folder_recipe(side: int) -> dict:
    """The `folder` preset's crop size and heavy options for images whose shorter side is `side`
    px: the size itself within [32, 224]; at 64 px or less the paper's recipe for small images
    (App. D: CIFAR stem, no blur), above it the ImageNet one (blur, ImageNet stem)."""
    size = min(224, max(32, side))
    return dict(image_size=size, cifar_stem=True, blur_p=0.0) if size <= 64 else dict(image_size=size)


PRESETS: dict[str, dict] = {
    # Paper: RandomResizedCrop(224) for training, Resize(256) + CenterCrop(224) for evaluation; the
    # images are stored at 256 (the square centre of the shorter side) so both come from one decode.
    "imagenet": dict(dataset="folder", load_size=256),
    # Paper App. D: CIFAR ResNet-18, 2-layer projector, lr 0.03 x bs/256, wd 5e-4, bs 512, 800 ep, no blur.
    "cifar10": dict(dataset="cifar10", **_CIFAR_PAPER),
    "cifar100": dict(
        dataset="cifar100", **{**_CIFAR_PAPER, "mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)}
    ),
    # CPU scale (not the paper): width 1/4; batch 128 with base lr 0.2 reached kNN 39% in 10 min
    # here against 33% for the paper's batch 256 / lr 0.03 (random init: 31%).
    "cifar10-cpu": dict(
        dataset="cifar10", **{**_CIFAR_PAPER, "width": 0.25, "batch_size": 128, "lr": 0.2, "epochs": 3}
    ),
    # Any folder of photos (`simsiam train --data-dir DIR` with no preset): not a paper recipe, a
    # middle ground between CIFAR and ImageNet: ResNet-18 on 96 px crops (STL-10 size) with the
    # full ImageNet augmentation, stored decoded in memory. From the CLI without --image-size the
    # crop size follows the images instead (`folder_recipe`).
    "folder": dict(dataset="folder", arch="resnet18", image_size=96, batch_size=256, epochs=100),
    # STL-10 (not in the paper): 96 px, ImageNet stem and augmentation incl. blur (kernel 9);
    # pretrains on unlabeled + train (105k images), kNN bank = train, queries = test.
    "stl10": dict(
        dataset="stl10",
        arch="resnet18",
        image_size=96,
        batch_size=256,
        epochs=200,
        mean=(0.4467, 0.4398, 0.4066),
        std=(0.2603, 0.2566, 0.2713),
    ),
    # The embedded default: scikit-learn's 8x8 digits upscaled to 16 px, width-1/4 CIFAR ResNet-18,
    # so the run takes two to three minutes on a 2-core CPU. Digits are not flip-invariant: no flip.
    # Measured here (10 epochs, 16 px, batch 128): base lr 0.4 -> kNN 63%, 1.0 -> 71% (random
    # init 46%); batch 64 / 32 at lr 0.4 -> 67% / 66%; 32 px costs 4x the time per epoch.
    "digits": dict(
        dataset="digits",
        **{
            **_CIFAR_PAPER,
            "image_size": 16,
            "width": 0.25,
            "batch_size": 128,
            "lr": 1.0,
            "epochs": 25,
            "hflip": 0.0,
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "knn_every": 5,
            # 1024 of its 1438 images cost ~12% of an epoch this small; every 5th epoch: ~2.4%
            # (benchmarks/rank.py)
            "rank_every": 5,
            "prototypes": 100,
            "small_crop_size": 8,
        },
    ),
}
DEFAULT_PRESET = "digits"


def read_config_file(path, what: str = "config file") -> dict:
    """The option: value object of a JSON config file (`--config`, a run's config.json); a file
    that cannot be read, is not UTF-8 JSON or holds anything but an object is a one-line
    ConfigError naming it (`what` says which option gave it)."""
    try:
        d = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start}); a config is a JSON file") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, an int of over 4300 digits, deep nesting
        why = str(e).splitlines()[0] if str(e) else "nested too deeply"
        raise ConfigError(f"{what} {path} is not valid JSON ({why})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{what} {path} holds {json_kind(d)}, not a JSON object of option: value pairs")
    return d


def json_kind(v) -> str:
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return "a number"
    kinds: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return kinds.get(type(v), type(v).__name__)
