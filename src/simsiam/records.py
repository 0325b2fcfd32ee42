"""What a run records, one typed definition each: the epoch's statistics, the metrics.jsonl line,
summary.json, the place a resume enters an epoch, the checkpoint's training state, and the
results of `simsiam eval`.

Each record writes the JSON keys files have always had (`to_json`; users' scripts read them), and
the ones read back from a run directory are checked on the way in (`from_json`: None, or a
one-line DataError for a checkpoint, when a file does not hold one). A record also reads like the
dict it replaces (`summary["knn_top1"]`), so code written against those dicts keeps working.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import DataError


class Record:
    """JSON out (`to_json`), and read access by key for code written against the old dicts."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.to_json()


def _number(v: Any, optional: bool = True) -> bool:
    return (optional and v is None) or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass
class EpochStats(Record):
    """One epoch's training numbers (the monitor's sums, over all processes)."""

    loss: float
    z_std: float
    images_per_second: float
    epoch_seconds: float


@dataclass
class MetricsRow(Record):
    """A line of RUN_DIR/metrics.jsonl: one finished epoch (`knn_top1` only where measured)."""

    epoch: int  # 1-based: epochs finished
    loss: float
    z_std: float
    z_std_healthy: float
    lr: float
    lr_groups: dict[str, float]
    images_per_second: float
    epoch_seconds: float
    knn_top1: float | None = None
    rank_backbone: float | None = None  # effective rank (RankMe) of the features, where measured
    rank_z: float | None = None  # ... and of z
    rank_backbone_max: int | None = None  # their ceilings min(N, D): sample size or dimension
    rank_z_max: int | None = None
    rank_seconds: float | None = None  # what measuring them took (not part of epoch_seconds)
    rss_mb: float | None = None

    def to_json(self) -> dict[str, Any]:
        row = super().to_json()
        for key in ("knn_top1", "rank_backbone", "rank_z", "rank_backbone_max", "rank_z_max", "rank_seconds"):
            if row[key] is None:
                del row[key]
        return {**{k: v for k, v in row.items() if k != "rss_mb"}, "rss_mb": row["rss_mb"]}

    @classmethod
    def from_json(cls, d: Any) -> MetricsRow | None:
        """The row of a metrics line, or None when it is not one (numbers where numbers belong)."""
        if not (isinstance(d, dict) and _count(d.get("epoch")) and d["epoch"] >= 1):
            return None
        numbers = (
            "loss",
            "z_std",
            "z_std_healthy",
            "lr",
            "images_per_second",
            "epoch_seconds",
            "knn_top1",
            "rank_backbone",
            "rank_z",
            "rank_backbone_max",
            "rank_z_max",
            "rank_seconds",
            "rss_mb",
        )
        groups = d.get("lr_groups", {})
        if not all(_number(d.get(k)) for k in numbers) or not isinstance(groups, dict):
            return None
        if not all(_number(v, optional=False) for v in groups.values()):
            return None
        nan = float("nan")
        return cls(
            d["epoch"],
            d.get("loss", nan),
            d.get("z_std", nan),
            d.get("z_std_healthy", nan),
            d.get("lr", nan),
            dict(groups),
            d.get("images_per_second", nan),
            d.get("epoch_seconds", nan),
            knn_top1=d.get("knn_top1"),
            rank_backbone=d.get("rank_backbone"),
            rank_z=d.get("rank_z"),
            rank_backbone_max=d.get("rank_backbone_max"),
            rank_z_max=d.get("rank_z_max"),
            rank_seconds=d.get("rank_seconds"),
            rss_mb=d.get("rss_mb"),
        )


@dataclass
class Summary(Record):
    """RUN_DIR/summary.json: the finished run."""

    method: str
    dataset: str
    data_dir: str | None
    preset: str | None
    arch: str
    width: float
    epochs: int
    batch_size: int
    num_train: int
    num_test: int
    train_seconds: float
    images_per_second: float
    knn_top1: float | None
    knn_top1_random_init: float | None
    loss: float
    z_std: float
    z_std_healthy: float
    collapsed: bool
    device: str
    precision: str
    run_dir: str
    peak_memory_mb: float | None = None
    peak_memory_of: str | None = None
    rank_backbone: float | None = None  # effective rank (RankMe) of the features at the end
    rank_z: float | None = None  # ... and of z
    rank_backbone_max: int | None = None  # their ceilings min(N, D)
    rank_z_max: int | None = None
    health: str | None = None  # `simsiam doctor`'s state of the run at its end
    recoveries: int = 0  # --on-collapse recover: how often the run stepped back

    @classmethod
    def from_json(cls, d: Any) -> Summary | None:
        """The summary of a summary.json object, or None when it is not one."""
        if not isinstance(d, dict):
            return None
        hints = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, f in hints.items():
            v = d.get(name, None if f.default is not dataclasses.MISSING else ...)
            kind = str(f.type)
            ok = (
                (v is None and "None" in kind)
                or ("bool" in kind and isinstance(v, bool))
                or ("str" in kind and isinstance(v, str))
                or (("float" in kind or "int" in kind) and _number(v, optional=False))
            )
            if not ok:
                return None
            values[name] = v
        return cls(**values)


@dataclass
class Partial:
    """Where a resume enters an epoch: after `step` steps of it, in its data `order`, with the
    monitor's `steps` done, `seconds` spent and sums so far (a mid-epoch checkpoint's)."""

    step: int
    order: torch.Tensor
    steps: int
    seconds: float
    loss_sum: torch.Tensor
    zstd_sum: torch.Tensor

    def sums(self) -> dict[str, Any]:
        """The checkpoint's "partial" entry (the step and order are entries of their own)."""
        return {"steps": self.steps, "seconds": self.seconds, "loss_sum": self.loss_sum, "zstd_sum": self.zstd_sum}


@dataclass
class TrainingState(Record):
    """A training checkpoint (RUN_DIR/checkpoint-<step>.pt): `epoch` epochs and then `step` steps
    done (step 0: an epoch's end, no `partial`), the model (plain keys), the optimizer, the run's
    generator (data order + augmentation) and torch's (`rng`), the time trained, kNN at random
    init, the config, the Sec. 5.2 targets' state (`memory`) and every finished epoch's line."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict
    generator: torch.Tensor
    config: dict
    step: int = 0
    partial: Partial | None = None
    rng: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    knn_random_init: float | None = None
    memory: Any = None
    metrics: list[MetricsRow] = field(default_factory=list)
    lr_scale: float = 1.0  # --on-collapse recover: the factor on every lr from here on
    events: list[dict] = field(default_factory=list)  # recoveries (metrics.jsonl's event lines)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's dict (the keys every version of simsiam has written)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "order": None if self.partial is None else self.partial.order.cpu(),
            "partial": None if self.partial is None else self.partial.sums(),
            "model": self.model,
            "optimizer": self.optimizer,
            "generator": self.generator,
            "rng": self.rng,
            "train_seconds": self.train_seconds,
            "knn_random_init": self.knn_random_init,
            "config": self.config,
            "memory": self.memory,
            "metrics": [m.to_json() for m in self.metrics],
            "lr_scale": self.lr_scale,
            "events": self.events,
        }

    @classmethod
    def from_dict(cls, state: Any, path) -> TrainingState:
        """The state of a loaded checkpoint, or a one-line DataError naming `path` and the first
        thing wrong. Values are checked for type and range; whether they fit the run (shapes, the
        data order's length) is `train.resume`'s check. Checkpoints of older versions lack step,
        order, partial, rng and metrics: those default."""

        def bad(what: str) -> DataError:
            return DataError(f"{path} is not a usable simsiam checkpoint ({what}); resume from another one or retrain")

        if not isinstance(state, dict):
            raise bad(f"a {type(state).__name__}, not a dict")
        for key in ("epoch", "step"):
            if not _count(state.get(key, 0)):
                raise bad(f"{key} is {state.get(key)!r}, not a count")
        model = state.get("model")
        if not isinstance(model, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in model.items()):
            raise bad("model is not a state_dict of tensors")
        if not isinstance(state.get("optimizer"), dict):
            raise bad("no optimizer state")
        if not isinstance(state.get("config"), dict):
            raise bad("no config")
        generator = state.get("generator")
        if not (torch.is_tensor(generator) and generator.dtype == torch.uint8 and generator.dim() == 1):
            raise bad("generator is not a generator state")
        rng = state.get("rng") or {}
        if not isinstance(rng, dict) or not torch.is_tensor(rng.get("cpu", torch.zeros(0, dtype=torch.uint8))):
            raise bad("rng is not a dict of generator states")
        for key in ("train_seconds", "knn_random_init"):
            v = state.get(key)
            if v is not None and not (_number(v) and math.isfinite(v) and v >= 0):
                raise bad(f"{key} is {v!r}, not a finite number >= 0")
        rows = state.get("metrics") or []
        metrics = [MetricsRow.from_json(m) for m in rows] if isinstance(rows, list) else [None]
        if any(m is None for m in metrics):
            raise bad("metrics is not a list of epoch lines")
        lr_scale, events = state.get("lr_scale", 1.0), state.get("events") or []
        if not (_number(lr_scale, optional=False) and math.isfinite(lr_scale) and lr_scale > 0):
            raise bad(f"lr_scale is {lr_scale!r}, not a number > 0")
        if not (isinstance(events, list) and all(isinstance(e, dict) and "event" in e for e in events)):
            raise bad("events is not a list of event records")
        partial = None
        if state.get("step", 0):
            order, sums = state.get("order"), state.get("partial")
            if not (torch.is_tensor(order) and order.dim() == 1 and not order.is_floating_point()):
                raise bad("a mid-epoch checkpoint without its data order")
            if not (
                isinstance(sums, dict)
                and _count(sums.get("steps"))
                and _number(sums.get("seconds"), optional=False)
                and all(torch.is_tensor(sums.get(k)) and sums[k].numel() == 1 for k in ("loss_sum", "zstd_sum"))
            ):
                raise bad("a mid-epoch checkpoint without the epoch's partial sums")
            partial = Partial(state["step"], order, sums["steps"], sums["seconds"], sums["loss_sum"], sums["zstd_sum"])
        return cls(
            epoch=state["epoch"],
            model=model,
            optimizer=state["optimizer"],
            generator=generator,
            config=state["config"],
            step=state.get("step", 0),
            partial=partial,
            rng=rng,
            train_seconds=float(state.get("train_seconds") or 0.0),
            knn_random_init=state.get("knn_random_init"),
            memory=state.get("memory"),
            metrics=[m for m in metrics if m is not None],
            lr_scale=float(lr_scale),
            events=events,
        )


@dataclass
class Evaluation(Record):
    """What `simsiam eval` measured (RUN_DIR/eval_knn.json, eval_linear.json, eval_linear_fast.json):
    top-1 (top-5 with more than 5 classes), per class, and whether the features collapsed (then the
    accuracy is the class prior's). `source`, `dataset`, `data_dir` and `path` (where the JSON
    went) are filled by `evaluate`."""

    protocol: str  # knn | linear | linear-fast
    top1: float
    per_class: dict[str, float]
    feature_spread: float
    collapsed: bool
    top5: float | None = None
    source: str = ""
    dataset: str = ""
    data_dir: str | None = None
    path: str = ""

    @property
    def num_test(self) -> int:
        """The images the accuracy is measured on (kNN queries, linear test images)."""
        raise NotImplementedError

    def _json(self, protocol_fields: dict[str, Any]) -> dict[str, Any]:
        head = {"source": self.source, "dataset": self.dataset, "data_dir": self.data_dir} if self.source else {}
        scores = {"top1": self.top1, **({"top5": self.top5} if self.top5 is not None else {})}
        tail = {"per_class": self.per_class, "feature_spread": self.feature_spread, "collapsed": self.collapsed}
        return {**head, "protocol": self.protocol, **protocol_fields, **scores, **tail}


@dataclass
class KnnResult(Evaluation):
    k: int = 200
    t: float = 0.1
    num_bank: int = 0
    num_queries: int = 0

    @property
    def num_test(self) -> int:
        return self.num_queries

    def to_json(self) -> dict[str, Any]:
        return self._json({"k": self.k, "t": self.t, "num_bank": self.num_bank, "num_queries": self.num_queries})


@dataclass
class LinearResult(Evaluation):
    optimizer: str = ""
    backbone_unchanged: bool = True  # the probe raises instead when the frozen backbone moved
    num_train: int = 0
    num_test_images: int = 0
    report: str = "final"  # top1 is the final epoch's, or the best epoch's (official main_lincls.py)
    top1_per_epoch: list[float] = field(default_factory=list)  # the paper's protocol only
    best_epoch: int | None = None

    @property
    def num_test(self) -> int:
        return self.num_test_images

    def to_json(self) -> dict[str, Any]:
        curve = {"report": self.report, "best_epoch": self.best_epoch, "top1_per_epoch": self.top1_per_epoch}
        return self._json(
            {
                "optimizer": self.optimizer,
                "backbone_unchanged": self.backbone_unchanged,
                "num_train": self.num_train,
                "num_test": self.num_test_images,
                **(curve if self.top1_per_epoch else {}),
            }
        )


@dataclass
class FinetuneResult(Evaluation):
    """What `simsiam eval finetune` measured (RUN_DIR/eval_finetune.json, eval_finetune_scratch.json):
    test top-1 after fine-tuning the whole backbone and a linear head on `num_labeled` labels."""

    optimizer: str = ""
    init: str = "pretrained"  # or "random": --from-scratch, the run's architecture re-initialised
    num_labeled: int = 0
    num_train: int = 0  # the train split the subset was drawn from
    num_test_images: int = 0
    label_fraction: float | None = None
    labels_per_class: int | None = None
    subset_file: str = ""
    subset_sha256: str = ""
    seed: int = 0
    epochs: int = 0
    steps: int = 0
    seconds: float = 0.0
    backbone_changed: bool = True
    model_file: str = ""  # --save: the fine-tuned backbone + head (safetensors)

    @property
    def num_test(self) -> int:
        return self.num_test_images

    def to_json(self) -> dict[str, Any]:
        return self._json(
            {
                "init": self.init,
                **({"model_file": self.model_file} if self.model_file else {}),
                "num_labeled": self.num_labeled,
                "num_train": self.num_train,
                "num_test": self.num_test_images,
                "label_fraction": self.label_fraction,
                "labels_per_class": self.labels_per_class,
                "subset_file": self.subset_file,
                "subset_sha256": self.subset_sha256,
                "seed": self.seed,
                "optimizer": self.optimizer,
                "epochs": self.epochs,
                "steps": self.steps,
                "seconds": self.seconds,
                "backbone_changed": self.backbone_changed,
            }
        )


@dataclass
class RankResult(Record):
    """What `simsiam eval rank` measured (RUN_DIR/eval_rank.json): the effective rank (RankMe) of
    the backbone's features on a fixed sample of images, no labels needed; `rank_max` = min(N, D)."""

    rank: float
    rank_max: int
    num_images: int
    feature_dim: int
    source: str = ""
    dataset: str = ""
    data_dir: str | None = None
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"protocol": "rank", **super().to_json()}
