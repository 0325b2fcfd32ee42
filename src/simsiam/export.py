"""Taking the backbone away: torchvision-compatible weights and embeddings of a folder of images."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torchvision.datasets.folder import IMG_EXTENSIONS

from . import checkpoint
from .backbones import CUSTOM, RESNETS, TIMM, feature_dim, removed_classifier, torchvision_options
from .config import Config
from .data import datasets
from .data.augment import prepare
from .errors import ConfigError, DataError, TrainingError, warn
from .methods import build_model
from .runs import load_backbone


def export_backbone(source, out) -> tuple[Path, Path]:
    """Write the backbone as safetensors (`out`) and as a plain state_dict (`out` with .pth).

    Keys are those of the model `arch` names: a ResNet at width 1 loads into
    `torchvision.models.resnetXX()` with strict=False, only fc.weight/fc.bias missing; any other
    torchvision model into `get_model(arch)` with its classifier set to nn.Identity; timm:NAME
    into `timm.create_model(NAME, num_classes=0)`. The metadata's `howto` says which, and that the
    CIFAR stem (3x3 conv1, no max-pool) must be built by the user.
    """
    from safetensors.torch import save

    backbone, cfg = load_backbone(source)
    state = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    out = _output(out)
    checkpoint.write_atomic(out, save(state, metadata=export_metadata(backbone, cfg)))
    pth = out.with_suffix(".pth")
    checkpoint.save(pth, state)
    return out, pth


def export_onnx(source, out) -> Path:
    """Write the backbone as ONNX: input `images` (N, 3, S, S), resized and normalised as the
    metadata says, output `features` (N, D); N is dynamic. The metadata goes into the model's
    metadata_props. torch's exporter (torch.export based): needs onnx and onnxscript; weights go into
    the file, or beside it as FILE.onnx.data above ONNX's 2 GB limit."""
    _require_onnx()
    backbone, cfg = load_backbone(source)
    out = _output(out)
    example = torch.zeros(2, 3, cfg.image_size, cfg.image_size)  # 2: a batch of 1 would be fixed as a constant
    try:
        program = torch.onnx.export(
            backbone,
            (example,),
            input_names=["images"],
            output_names=["features"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
        )
    except torch.onnx.OnnxExporterError as e:
        raise DataError(f"ONNX export of {cfg.arch} failed: {_first_line(e)}") from None
    assert program is not None  # no file given: the program comes back
    program.model.metadata_props.update(export_metadata(backbone, cfg))
    staging = out.with_name(f".{out.name}.tmp")  # written whole there, then renamed into place
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        program.save(staging / out.name)  # beyond 2 GB the weights go into a .data file beside it
        for f in sorted(staging.iterdir(), key=lambda f: f.name == out.name):  # the model last
            os.replace(f, out.with_name(f.name))
    except OSError as e:
        raise TrainingError(checkpoint.cannot_write(out, e)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def export_official(source, out) -> Path:
    """Write the official SimSiam checkpoint layout (facebookresearch/simsiam's main_simsiam.py):
    `{"epoch", "arch", "state_dict"}` with the backbone under `module.encoder.*` (torchvision key
    names), and, for a SimSiam run whose checkpoint is at hand, the projector as
    `module.encoder.fc.*` and the predictor as `module.predictor.*` (the official modules' indices;
    fc.6's bias, which the official code freezes in front of a BN, is written as zeros). The
    official main_lincls.py --pretrained FILE loads it: it keeps module.encoder.* but fc, and
    expects only fc.weight and fc.bias missing from torchvision.models.ARCH(). That model has
    torchvision's ImageNet stem at width 1: other backbones are refused with the format to use."""
    backbone, cfg = load_backbone(source)
    if cfg.arch not in RESNETS or cfg.width != 1.0 or cfg.cifar_stem:
        why = (
            "the CIFAR stem (3x3 conv1, no max-pool)"
            if cfg.arch in RESNETS and cfg.width == 1.0
            else f"{cfg.arch} at width {cfg.width:g}"
        )
        raise ConfigError(
            f"--format official is torchvision's ImageNet ResNet at width 1 (what main_lincls.py builds); this "
            f"backbone is {why}: use --format safetensors (its metadata says how to rebuild it)"
        )
    state = {f"module.encoder.{k}": v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    run = Path(source)
    latest = checkpoint.load_latest(run, warn=warn) if run.is_dir() and checkpoint.has_checkpoint(run) else None
    dim = feature_dim(backbone, cfg.image_size)
    heads = _simsiam_heads(latest.model, dim) if latest is not None and cfg.method == "simsiam" else None
    if heads is None:
        warn(
            f"{source}: the file holds the backbone alone (all main_lincls.py reads): the official projector and "
            f"predictor are written only from a SimSiam run directory whose projector has the official layout "
            f"(--proj-layers 3, --proj-hidden {dim})"
        )
    else:
        projector, predictor = heads
        state.update({f"module.encoder.fc.{k}": v for k, v in projector.items()})
        state["module.encoder.fc.6.bias"] = torch.zeros(projector["6.weight"].shape[0])
        state.update({f"module.predictor.{k}": v for k, v in predictor.items()})
    out = _output(out)
    epoch = latest.epoch if latest is not None else 0  # official: the epochs done (where a resume starts)
    checkpoint.save(out, {"epoch": epoch, "arch": cfg.arch, "state_dict": state})
    return out


def _simsiam_heads(model: dict, dim: int) -> tuple[dict, dict] | None:
    """(projector, predictor) state_dicts of a SimSiam model's state when they have the official
    modules' layout (a 3-layer projector D -> D -> D -> d, a 2-layer predictor; keyed by the same
    Sequential indices), else None."""
    model = checkpoint.plain_keys(model)
    part = {
        name: {k[len(name) + 1 :]: v.detach().cpu().contiguous() for k, v in model.items() if k.startswith(name + ".")}
        for name in ("projector", "predictor")
    }
    projector, predictor = part["projector"], part["predictor"]
    official = (
        {"0.weight", "3.weight", "6.weight", "7.running_mean"} <= projector.keys()
        and tuple(projector["0.weight"].shape) == (dim, dim)
        and tuple(projector["3.weight"].shape) == (dim, dim)
        and {"0.weight", "1.weight", "3.weight", "3.bias"} <= predictor.keys()
    )
    return (projector, predictor) if official else None


def _require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f'ONNX export needs {" and ".join(missing)}: pip install "simsiam[onnx]"')
    if torch.__version__ < "2.6":
        raise ConfigError(f"ONNX export needs torch >= 2.6 (the torch.export-based exporter), not {torch.__version__}")


def _first_line(e: Exception) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


def _output(out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def export_metadata(backbone: nn.Module, cfg: Config) -> dict[str, str]:
    """What a user needs to rebuild and feed the backbone, as strings (safetensors, ONNX)."""
    return {
        "arch": cfg.arch,
        "width": str(cfg.width),
        "cifar_stem": str(cfg.cifar_stem).lower(),
        "feature_dim": str(feature_dim(backbone, cfg.image_size)),
        "image_size": str(cfg.image_size),
        "load_size": str(cfg.stored_size),
        "eval_transform": f"Resize({cfg.stored_size}) + CenterCrop({cfg.image_size}) + ToTensor() "
        "+ Normalize(mean, std)",
        "mean": json.dumps(list(cfg.mean)),
        "std": json.dumps(list(cfg.std)),
        "torchvision_loadable": str(cfg.arch != CUSTOM and not cfg.arch.startswith(TIMM) and cfg.width == 1.0).lower(),
        "howto": _howto(backbone, cfg),
    }


def _howto(backbone: nn.Module, cfg: Config) -> str:
    if cfg.arch == CUSTOM:
        return "a module given to simsiam.fit(cfg, backbone=module): build it again, m.load_state_dict(sd)"
    if cfg.arch.startswith(TIMM):
        name = cfg.arch[len(TIMM) :]
        return f"m = timm.create_model('{name}', pretrained=False, num_classes=0); m.load_state_dict(sd)"
    if cfg.arch not in RESNETS:
        options = ", ".join(f"{k}={v!r}" for k, v in torchvision_options(cfg.arch).items())
        return (
            f"m = torchvision.models.get_model('{cfg.arch}', {options}); "
            f"m.{removed_classifier(backbone)} = torch.nn.Identity(); m.load_state_dict(sd)"
        )
    if cfg.width != 1.0:
        return (
            f"width {cfg.width}: build it with simsiam.build_backbone('{cfg.arch}', cifar_stem={cfg.cifar_stem}, "
            f"width={cfg.width})[0]; torchvision's standard ResNets have other channel counts"
        )
    how = f"m = torchvision.models.{cfg.arch}(); m.load_state_dict(sd, strict=False)  # only fc.* missing"
    if cfg.cifar_stem:
        how = (
            f"m = torchvision.models.{cfg.arch}(); m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); "
            "m.maxpool = nn.Identity(); m.load_state_dict(sd, strict=False)  # CIFAR stem; only fc.* missing"
        )
    return how


def list_images(root, todo: str = "give --data-dir a folder of images") -> list[str]:
    """Every image file under `root`, or a one-line DataError: no such folder (`todo` says what to
    give instead), or no image in it."""
    datasets.require_folder(str(root), todo)
    paths = datasets.list_images(str(root))
    if not paths:
        raise DataError(f"no image files ({', '.join(IMG_EXTENSIONS[:4])}, ...) under {root}")
    return paths


@torch.no_grad()
def embed_stream(
    backbone: nn.Module, cfg: Config, paths: list[str], batch_size: int, device: torch.device, workers: int = 0
) -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
    """(readable paths, their backbone features as float on `device`, unreadable paths) batch by
    batch; files are decoded by `workers` DataLoader processes (0: in this one) while the backbone
    runs. A batch with no readable file gives no features (an empty tensor)."""
    loader = torch.utils.data.DataLoader(
        datasets._Decode(paths, cfg.stored_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=datasets._stack_good,
        pin_memory=device.type == "cuda",
    )
    for i, (images, bad) in enumerate(loader):
        skipped = set(bad)
        kept = [p for p in paths[i * batch_size : (i + 1) * batch_size] if p not in skipped]
        if not kept:
            yield [], torch.zeros(0), bad
            continue
        x = images.to(device, non_blocking=True)
        yield kept, backbone(prepare(x, cfg.image_size, cfg.mean, cfg.std)).float(), bad


@torch.no_grad()
def embed_folder(
    source,
    data_dir,
    out,
    batch_size: int = 256,
    projector: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict:
    """Backbone features (N, D) of every image under data_dir to `out` (.npy) and the image paths,
    in the same order, to `out` with .csv. With projector=True also z = projector(features) to
    `out` with suffix `.projector.npy` (needs a run directory with checkpoint.pt)."""
    from .options import EmbedOptions, check_values
    from .runtime import Bar, resolve_device

    check_values(EmbedOptions, batch_size=batch_size)  # `simsiam embed`'s declared checks, before any file
    device = resolve_device(device)  # "auto", "cuda:1"; a bad name: one line
    paths = list_images(data_dir)  # first: a wrong --data-dir fails before the backbone loads
    backbone, cfg = load_backbone(source, device)
    proj = _load_projector(source, cfg, device) if projector else None
    feats, zs, kept, bad = [], [], [], []
    batches = Bar(
        embed_stream(backbone, cfg, paths, batch_size, device),
        total=-(-len(paths) // batch_size),
        desc="embed",
        unit="batch",
        disable=not progress,
    )
    for k, f, b in batches:
        bad += b
        if not k:
            continue
        feats.append(f.cpu())
        if proj is not None:
            zs.append(proj(f).float().cpu())
        kept += k
    if bad:
        warn(f"skipped {len(bad)} unreadable image file(s), e.g. {', '.join(bad[:3])}")
    if not kept:
        raise DataError(f"none of the {len(paths)} image files under {data_dir} could be read")
    out = _output(out)
    checkpoint.write_atomic(out, lambda f: np.save(f, torch.cat(feats).numpy()))
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["index", "path"])
    w.writerows(enumerate(kept))
    checkpoint.write_atomic(out.with_suffix(".csv"), table.getvalue())
    result = {
        "features": str(out),
        "paths": str(out.with_suffix(".csv")),
        "num_images": len(kept),
        "num_skipped": len(bad),
        "dim": int(feats[0].shape[1]),
    }
    if proj is not None:
        checkpoint.write_atomic(out.with_suffix(".projector.npy"), lambda f: np.save(f, torch.cat(zs).numpy()))
        result["projector"] = str(out.with_suffix(".projector.npy"))
    return result


def _load_projector(source, cfg: Config, device) -> nn.Module:
    if not (Path(source).is_dir() and checkpoint.has_checkpoint(Path(source))):
        raise DataError(f"--projector needs a run directory with a checkpoint; {source} has none")
    model = build_model(cfg)
    state = checkpoint.load_latest(Path(source), warn=warn)
    try:
        model.load_state_dict(checkpoint.plain_keys(state.model))
    except RuntimeError as e:
        why = str(e).splitlines()[0]
        raise DataError(f"{source}: the checkpoint's model does not fit its config.json ({why})") from None
    return model.projector.to(device).eval()
