"""The `simsiam` command. Thin: parse arguments, build a Config, call the library.

Every Config field is an option (`--batch-size`, `--no-stop-gradient`, ...); a preset gives the
starting values and only the options you type override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from .config import DEFAULT_PRESET, PRESETS, Config, from_preset
from .errors import ConfigError, SimSiamError

_HIDDEN = {"preset", "resume"}  # set by --preset / --resume, which get their own help


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name in _HIDDEN:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if args and type(None) in typing.get_args(hint) else hint
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata['help']} [Config default: {_show(default)}]"
        kw: dict = {"default": argparse.SUPPRESS, "help": help_text}
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(base) is tuple:
            parser.add_argument(flag, type=float, nargs=f.metadata["nargs"], metavar="X", **kw)
        else:
            parser.add_argument(flag, type=base, metavar=f.name.upper().split("_")[-1], **kw)


def _show(v) -> str:
    if isinstance(v, tuple):
        return " ".join(f"{x:g}" for x in v)
    return str(v)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simsiam", description=__doc__.splitlines()[0] + " See README.md.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    presets = "; ".join(f"{name}" for name in PRESETS)
    tr = sub.add_parser(
        "train", help="self-supervised pretraining",
        description="Pretrain a backbone with SimSiam. With no options: the embedded digits dataset, about two "
                    "minutes on a CPU, printing kNN accuracy of the trained and of the random-init backbone. "
                    "A preset sets the starting values; every option below overrides it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tr.add_argument("--preset", default=argparse.SUPPRESS,
                    help=f"starting values: {presets} (default {DEFAULT_PRESET}, or folder when --data-dir is given; "
                         "cifar10 and imagenet are the paper's recipes, cifar10-cpu a CPU-scale variant)")
    tr.add_argument("--config", metavar="FILE.json", default=argparse.SUPPRESS,
                    help="start from a saved config (e.g. RUN_DIR/config.json) instead of a preset")
    tr.add_argument("--resume", action="store_true", default=argparse.SUPPRESS,
                    help="continue the run in --run-dir from its last checkpoint, with its saved config "
                         "(options given here override it, e.g. --epochs to train longer)")
    _add_config_options(tr)
    return parser


def config_from_args(ns: argparse.Namespace) -> Config:
    given = {k: v for k, v in vars(ns).items() if k not in ("command", "config", "preset")}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    if given.get("resume"):
        if "run_dir" not in given:
            raise ConfigError("--resume needs --run-dir DIR (the run to continue)")
        saved = Path(given["run_dir"]) / "config.json"
        if not saved.exists():
            raise ConfigError(f"--resume: {saved} not found; is --run-dir the directory of an earlier run?")
        return Config.from_dict({**json.loads(saved.read_text()), **given})
    if "config" in ns:
        try:
            base = json.loads(Path(ns.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read --config {ns.config}: {e}") from None
        return Config.from_dict({**base, **given})
    default = "folder" if "data_dir" in given else DEFAULT_PRESET  # a --data-dir alone means a folder of photos
    return from_preset(getattr(ns, "preset", default), **given)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from .train import log, train

            summary = train(config_from_args(args))
            log(_describe(summary))
        return 0
    except SimSiamError as e:
        print(f"simsiam: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simsiam: interrupted; the last finished epoch's checkpoint is kept (continue with --resume)",
              file=sys.stderr)
        return 130


def _describe(s: dict) -> str:
    lines = [f"done in {s['train_seconds']:.0f} s ({s['images_per_second']:.0f} images/s); run in {s['run_dir']}"]
    knn = f"kNN top-1 ({s['num_test']} test images): trained {100 * s['knn_top1']:.2f}%"
    if s.get("knn_top1_random_init") is not None:
        gain = 100 * (s["knn_top1"] - s["knn_top1_random_init"])
        knn += f" vs random init {100 * s['knn_top1_random_init']:.2f}% ({gain:+.2f} points)"
    lines.append(knn)
    state = "COLLAPSED" if s["collapsed"] else "no collapse"
    lines.append(f"z-std {s['z_std']:.4f} (healthy ~1/sqrt(d) = {s['z_std_healthy']:.4f}): {state}")
    return "\n".join(lines)
