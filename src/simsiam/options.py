"""Options and their constraints, declared together; one function checks them all.

An option is a dataclass field made with `opt(default, help, check=...)`: `Config`'s fields (every
`simsiam train` option) and the small option sets of the other commands below (`KnnOptions`, ...,
built from the parsed arguments, or from the keyword arguments of `evaluate` / `embed_folder`).
`check_fields` applies each field's constraint and raises the one-line ConfigError that names the
option and what is allowed; the CLI prints it as `simsiam: error: ...` (exit 2). Rules between
options (warm-up below epochs, ...) are not declarations: they stay code in `Config.validate`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Collection
from dataclasses import dataclass, field

from .errors import ConfigError

# torch.manual_seed and torch.Generator.manual_seed take [-2**63, 2**64 - 1]; beyond it they raise
# "Overflow when unpacking long long" (negative seeds wrap: -1 is 2**64 - 1).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def opt(default, help: str, check: Constraint | None = None, **kw):
    """A field: its default, its help text and the constraint its values must meet."""
    return field(default=default, metadata={"help": help, **({"check": check} if check else {}), **kw})


class Constraint:
    """What values an option takes. `message` is None for a good value, else the one-line error."""

    def message(self, flag: str, value) -> str | None:
        raise NotImplementedError

    @property
    def hint(self) -> str:
        """The allowed values in a few characters, for --help ("> 0", "in [0, 1]")."""
        return ""


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond any float
        return False


def _g(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _show(v) -> str:
    """A value as the error shows it: strings quoted (a newline stays `\\n`), numbers plain."""
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, (tuple, list)):
        inner = ", ".join(_show(x) for x in v)
        return f"({inner})" if isinstance(v, tuple) else f"[{inner}]"
    return str(v)


@dataclass(frozen=True)
class Range(Constraint):
    """A finite number (an integer with `integer`) within the given bounds; `limit` is a sanity cap
    reported as "N is above the limit of ..." (e.g. 4096 px); `why` follows the rule in brackets."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    integer: bool = False
    limit: int | None = None
    unit: str = ""
    why: str = ""
    name: str = ""  # what the values are, in words ("a probability")

    def ok(self, v, limit: bool = True) -> bool:
        if not (isinstance(v, int) and not isinstance(v, bool) if self.integer else _is_number(v) and _finite(v)):
            return False
        return not (
            (self.gt is not None and not v > self.gt)
            or (self.ge is not None and not v >= self.ge)
            or (self.lt is not None and not v < self.lt)
            or (self.le is not None and not v <= self.le)
            or (limit and self.limit is not None and v > self.limit)
        )

    def message(self, flag: str, value) -> str | None:
        if self.ok(value):
            return None
        if self.ok(value, limit=False):  # only above the cap
            return f"{flag} {value} is above the limit of {self.limit}{self.unit}; give a smaller value"
        allowed = self.allowed()
        if self.integer and not (isinstance(value, int) and not isinstance(value, bool)) and "integer" not in allowed:
            allowed = f"an integer {allowed}"  # 64.0 is not "at least 2": it is no integer
        return f"{flag} must be {allowed}{f' ({self.why})' if self.why else ''}, got {_show(value)}"

    def allowed(self) -> str:
        """The rule in words: "a positive integer", "a probability in [0, 1]", ">= 0", ..."""
        kind = "integer" if self.integer else "number"
        interval = self._interval()
        if interval:
            return f"{self.name or ('an' if self.integer else 'a') + ' ' + kind} in {interval}"
        lo = self.gt if self.gt is not None else self.ge
        hi = self.lt if self.lt is not None else self.le
        if lo is not None:
            if lo == 0:
                return f"a positive {kind}" if self.gt is not None else ">= 0"
            return f"at least {_g(lo)}" if self.ge is not None else f"above {_g(lo)}"
        if hi is not None:
            return f"at most {_g(hi)}" if self.le is not None else f"below {_g(hi)}"
        return "an integer" if self.integer else "a finite number"

    def _interval(self) -> str | None:
        lo, hi = self.gt if self.gt is not None else self.ge, self.lt if self.lt is not None else self.le
        if lo is None or hi is None:
            return None
        return f"{'(' if self.gt is not None else '['}{_g(lo)}, {_g(hi)}{')' if self.lt is not None else ']'}"

    @property
    def hint(self) -> str:
        interval = self._interval()
        if interval and self.integer:
            return interval[1:-1].replace(", ", " to ")
        if interval:
            return f"in {interval}"
        bounds = [(">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le)]
        parts = [f"{op} {_g(b)}" for op, b in bounds if b is not None]
        if self.limit is not None:
            parts.append(f"<= {self.limit}{self.unit}")
        return ", ".join(parts) or ("integer" if self.integer else "finite")


def Int(**bounds) -> Range:
    return Range(integer=True, **bounds)


POSITIVE = Range(gt=0)
POSITIVE_INT = Int(gt=0)
COUNT = Int(ge=0)  # 0 = off
PROBABILITY = Range(ge=0, le=1, name="a probability")
SEED = Int(ge=SEED_MIN, le=SEED_MAX, why="torch's seed range")


@dataclass(frozen=True)
class Pair(Constraint):
    """(min, max) with min <= max, both finite, min above `gt` (or at least `ge`), max at most `le`."""

    gt: float | None = None
    ge: float | None = None
    le: float | None = None

    def ok(self, v) -> bool:
        if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_number(x) and _finite(x) for x in v)):
            return False
        lo, hi = v
        return (
            (self.gt is None or lo > self.gt)
            and (self.ge is None or lo >= self.ge)
            and lo <= hi
            and (self.le is None or hi <= self.le)
        )

    def message(self, flag: str, value) -> str | None:
        return None if self.ok(value) else f"{flag} needs {self.hint}, got {_show(value)}"

    @property
    def hint(self) -> str:
        low = f"{_g(self.gt)} < " if self.gt is not None else f"{_g(self.ge)} <= " if self.ge is not None else ""
        return f"{low}min <= max{f' <= {_g(self.le)}' if self.le is not None else ''}"


@dataclass(frozen=True)
class Each(Constraint):
    """A fixed number of numbers, each within its own Range (`names` say which is which)."""

    ranges: tuple[Range, ...]
    names: tuple[str, ...] = ()
    why: str = ""

    def ok(self, v) -> bool:
        return (
            isinstance(v, (tuple, list)) and len(v) == len(self.ranges) and all(r.ok(x) for r, x in zip(self.ranges, v))
        )

    def message(self, flag: str, value) -> str | None:
        if self.ok(value):
            return None
        return f"{flag} needs {self.hint}{f' ({self.why})' if self.why else ''}, got {_show(value)}"

    @property
    def hint(self) -> str:
        if self.names:
            return ", ".join(f"{name} {r.hint}" for name, r in zip(self.names, self.ranges))
        first = self.ranges[0].hint
        return f"{len(self.ranges)} finite numbers" if first == "finite" else f"{len(self.ranges)} numbers {first}"


@dataclass(frozen=True)
class Choice(Constraint):
    """One of `values` (of the same type: 2.0 is not the choice 2). `values` may be a live registry
    (a dict such as `METHODS`): it is read when a value is checked, so a method registered after
    import is a choice too."""

    values: Collection

    def message(self, flag: str, value) -> str | None:
        if any(type(value) is type(c) and value == c for c in self.values):
            return None
        return f"{flag} must be one of {', '.join(map(str, self.values))}, got {_show(value)}"


@dataclass(frozen=True)
class Pattern(Constraint):
    """A string that matches `regex` (ASCII, whole string); `text` says what that means."""

    regex: str
    text: str

    def message(self, flag: str, value) -> str | None:
        if isinstance(value, str) and re.fullmatch(self.regex, value, re.ASCII):
            return None
        return f"{flag} must be {self.text}, got {_show(value)}"


# What `resolve_device` turns into a torch.device: other names torch knows (xla, meta, ...) no part
# of simsiam handles.
DEVICE = Pattern(r"auto|cpu|mps|cuda(:[0-9]+)?", "auto, cpu, cuda, cuda:N or mps")


def check(flag: str, value, constraint: Constraint) -> None:
    """The one place an option's value meets its constraint: a one-line ConfigError naming `flag`."""
    problem = constraint.message(flag, value)
    if problem is not None:
        raise ConfigError(problem)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_DECLARED: dict[type, tuple[tuple[str, Constraint, bool], ...]] = {}


def _declared(cls: type) -> tuple[tuple[str, Constraint, bool], ...]:
    """(field name, constraint, whether None is allowed) of each checked field of `cls`."""
    if cls not in _DECLARED:
        hints = typing.get_type_hints(cls)
        _DECLARED[cls] = tuple(
            (f.name, f.metadata["check"], type(None) in typing.get_args(hints[f.name]))
            for f in dataclasses.fields(cls)
            if "check" in f.metadata
        )
    return _DECLARED[cls]


def check_fields(obj) -> None:
    """Check every declared field of the dataclass `obj`, in the order they are declared; None
    passes where the field's type allows it."""
    check_values(type(obj), **{name: getattr(obj, name) for name, _, _ in _declared(type(obj))})


def check_values(cls: type, **values) -> None:
    """Check `values` against the constraints the option set `cls` declares for them."""
    for name, constraint, optional in _declared(cls):
        if name in values and not (optional and values[name] is None):
            check(_flag(name), values[name], constraint)


_O = typing.TypeVar("_O", bound="Options")


class Options:
    """An option set of one command: checked when made, from keyword arguments or parsed ones."""

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def from_args(cls: type[_O], args) -> _O:
        """From parsed arguments: the option set's fields are its command's options."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


_DEVICE_HELP = "auto (a GPU when there is one, else the CPU) | cpu | cuda | cuda:N | mps"


@dataclass
class DeviceOptions(Options):
    """The --device of every command that loads a model."""

    device: str = opt("auto", _DEVICE_HELP, check=DEVICE)


@dataclass
class KnnOptions(DeviceOptions):
    """`simsiam eval knn`."""

    k: int = opt(200, "neighbours", check=POSITIVE_INT)
    t: float = opt(0.1, "temperature of the exp(sim/T) votes (the authors used 0.2)", check=POSITIVE)


@dataclass
class RankOptions(DeviceOptions):
    """`simsiam eval rank`."""

    samples: int = opt(
        1024, "images (a fixed sample of the train split, not augmented) to measure on", check=POSITIVE_INT
    )


@dataclass
class LinearOptions(DeviceOptions):
    """`simsiam eval linear`."""

    fast: bool = opt(
        False,
        "features of un-augmented images extracted once (CPU-friendly); default: fresh "
        "RandomResizedCrop+flip crops every epoch as in the paper",
    )
    epochs: int = opt(90, "classifier epochs (paper: 90)", check=POSITIVE_INT)
    batch_size: int = opt(4096, "batch (paper: 4096, LARS)", check=POSITIVE_INT)
    lr: float = opt(
        0.1,
        "base lr, scaled by batch/256 with the batch asked for, also when the data holds fewer images "
        "(official code 0.1; the paper's text says 0.02)",
        check=POSITIVE,
    )
    seed: int = opt(0, "classifier init and data order", check=SEED)
    report: str = opt(
        "final",
        "final: the last epoch's test top-1 | best: the best epoch's, as the official main_lincls.py reports "
        "(chosen on the test set: optimistic); both are in the JSON",
        check=Choice(("final", "best")),
    )


@dataclass
class FinetuneOptions(DeviceOptions):
    """`simsiam eval finetune`: SimCLR's semi-supervised protocol (App. B.5)."""

    label_fraction: float | None = opt(
        None, "label this fraction of each class's train images (SimCLR: 0.01 and 0.1)", check=Range(gt=0, le=1)
    )
    labels_per_class: int | None = opt(None, "label this many train images of each class instead", check=POSITIVE_INT)
    subset_file: str | None = opt(
        None,
        "the labelled images: a subset file an earlier finetune wrote (or a list of file names, as SimCLR's); "
        "instead of the two above",
    )
    from_scratch: bool = opt(
        False, "the run's architecture from random init instead of its weights: the baseline, on the same images"
    )
    epochs: int | None = opt(None, "default: 60 for up to 0.01 of the labels, else 30 (SimCLR)", check=POSITIVE_INT)
    batch_size: int = opt(
        4096, "batch (SimCLR: 4096); the lr follows it also when the subset holds fewer images", check=POSITIVE_INT
    )
    lr: float = opt(0.05, "base lr, scaled by batch/256 (SimCLR: 0.05, i.e. 0.8 at batch 4096)", check=POSITIVE)
    momentum: float = opt(0.9, "Nesterov momentum (SimCLR: 0.9)", check=Range(ge=0, lt=1))
    weight_decay: float = opt(0.0, "weight decay (SimCLR: none)", check=Range(ge=0))
    crop_min: float = opt(0.08, "RandomResizedCrop's smallest area fraction (SimCLR: 0.08)", check=Range(gt=0, le=1))
    seed: int = opt(0, "the subset drawn, the head's init, the data order and the crops", check=SEED)
    save: str | None = opt(
        None, "also write the fine-tuned classifier here (safetensors: backbone.*, head.*; classes in its metadata)"
    )


@dataclass
class EmbedOptions(DeviceOptions):
    """`simsiam embed`."""

    batch_size: int = opt(256, "images per forward pass", check=POSITIVE_INT)


@dataclass
class FolderOptions(DeviceOptions):
    """What every command that embeds a folder takes (index, duplicates, cluster, select)."""

    batch_size: int = opt(256, "images per forward pass", check=POSITIVE_INT)
    workers: int = opt(2, "DataLoader processes that decode the files (0: in this process)", check=COUNT)


@dataclass
class IndexOptions(FolderOptions):
    """`simsiam index`."""

    kind: str = opt(
        "auto",
        "auto: exact search up to 20000 images, HNSW (efSearch raised until recall@10 >= 0.95) beyond",
        check=Choice(("auto", "exact", "hnsw")),
    )


@dataclass
class DuplicatesOptions(FolderOptions):
    """`simsiam duplicates`."""

    threshold: float = opt(
        0.99, "cosine similarity at or above which two images are near-duplicates", check=Range(gt=0, le=1)
    )


@dataclass
class ClusterOptions(FolderOptions):
    """`simsiam cluster`."""

    k: int | None = opt(
        None, "clusters (default: the K of --k-min..--k-max with the best silhouette)", check=POSITIVE_INT
    )
    k_min: int = opt(2, "smallest K tried when -k is not given", check=Int(ge=2))
    k_max: int = opt(20, "largest K tried when -k is not given", check=Int(ge=2))
    seed: int = opt(0, "k-means seed", check=SEED)


@dataclass
class SelectOptions(FolderOptions):
    """`simsiam select`."""

    budget: int | None = opt(None, "how many images to label (required)", check=POSITIVE_INT)
    strategy: str = opt(
        "typiclust",
        "typiclust: the most typical image of each of BUDGET k-means clusters | kcenter: farthest-first | random",
        check=Choice(("typiclust", "kcenter", "random")),
    )
    seed: int = opt(0, "seed of k-means, of kcenter's first image, of random", check=SEED)


@dataclass
class SearchOptions(DeviceOptions):
    """`simsiam search`."""

    k: int = opt(10, "neighbours per query", check=POSITIVE_INT)
    batch_size: int = opt(256, "query images per forward pass", check=POSITIVE_INT)


@dataclass(frozen=True)
class Grid(Constraint):
    """One or more distinct positive finite numbers: the points of a search grid."""

    def message(self, flag: str, value) -> str | None:
        ok = isinstance(value, (list, tuple)) and len(value) > 0
        ok = ok and all(_is_number(x) and _finite(x) and x > 0 for x in value) and len(set(value)) == len(value)
        return None if ok else f"{flag} must be one or more distinct positive numbers, got {_show(value)}"

    @property
    def hint(self) -> str:
        return "> 0, distinct"


@dataclass
class TuneOptions(Options):
    """`simsiam tune` (the run's own options are `simsiam train`'s)."""

    lr_factors: tuple[float, ...] = opt(
        (0.3, 1.0, 3.0), "multiples of the config's --lr to try", check=Grid(), nargs="+"
    )
    wd_factors: tuple[float, ...] = opt(
        (0.2, 1.0, 5.0), "multiples of the config's --weight-decay to try", check=Grid(), nargs="+"
    )
    budget_minutes: float = opt(60.0, "wall-clock budget of the whole search", check=POSITIVE)
    first_epochs: int = opt(
        0,
        "epochs of the first rung (0: --epochs / eta; shorter first runs scored the lr at random on digits: "
        "docs/health.md)",
        check=COUNT,
    )
    eta: int = opt(3, "each rung keeps the best 1/eta and trains them eta times longer", check=Int(ge=2))
    out: str = opt("runs/tune", "folder of the trials, tune.json and best.json")


@dataclass
class ExperimentOptions(DeviceOptions):
    """What every run of `simsiam reproduce` or `simsiam compare` gets."""

    epochs: int | None = opt(None, "override the scale's epochs", check=POSITIVE_INT)


@dataclass
class ReproduceOptions(ExperimentOptions):
    seeds: int = opt(1, "seeds per variant (mean ± std in the table)", check=POSITIVE_INT)


@dataclass
class CompareOptions(ExperimentOptions):
    seeds: int = opt(1, "seeds per method (mean ± std, gaps to SimSiam in sd)", check=POSITIVE_INT)
