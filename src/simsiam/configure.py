"""Building a `Config`: a preset, then the chosen method's run defaults (`DEFAULTS`), then the
values given, each checked; the method's own options go into its options dataclass.

    from simsiam.configure import from_preset
    cfg = from_preset("digits", method="swav", prototypes=50, epochs=5)

Strict where a person types: a value for an option the chosen method does not have is a one-line
ConfigError naming the methods that have it (from their declarations, not a list kept here).
Lenient where a file written by an older simsiam is read: its config.json held every method's
options, so the ones of other methods are dropped (they were never used). Also here, for the CLI
and Python alike: `--resume`'s config (`resume_config`), `--config FILE` (`with_file`), and the
folder preset's crop size from the images themselves (`follow_the_images`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .backbones import RESNETS, check_arch
from .config import DEFAULT_PRESET, PRESETS, Config, coerce_fields, folder_recipe, json_kind, read_config_file
from .errors import ConfigError
from .methods import METHODS, option_owners
from .options import Choice, check
from .runtime import log


def from_dict(d: dict, strict: bool = True) -> Config:
    """A Config from a flat dict (JSON: the run's options and the method's): unknown keys and wrong
    types fail loudly; an option of another method is a ConfigError (`strict`) or dropped (files of
    older versions, which wrote every method's options)."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config is a JSON object of option: value pairs, not {json_kind(d)}")
    method = d.get("method", "simsiam")
    check("--method", method, Choice(METHODS))
    options_cls = METHODS[method].Options
    own = {f.name for f in dataclasses.fields(options_cls)}
    run_names = set(Config.names())
    owners = option_owners()
    others = sorted(k for k in d if k not in run_names and k not in own and k in owners)
    unknown = sorted(str(k) for k in d if k not in run_names and k not in own and k not in owners)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)}; valid keys are the options of `simsiam train --help`"
        )
    if others and strict:
        name = others[0]
        raise ConfigError(
            f"--{name.replace('_', '-')} is not an option of --method {method}; it is one of "
            f"{', '.join(owners[name])} (see `simsiam train --help`)"
        )
    options = options_cls(**coerce_fields(options_cls, {k: v for k, v in d.items() if k in own}))
    cfg = Config(**coerce_fields(Config, {k: v for k, v in d.items() if k in run_names}), options=options)
    by_preset = cfg.preset in PRESETS and {"cifar_stem", "width"} & set(PRESETS[cfg.preset])
    check_arch(cfg.arch, cfg.cifar_stem, cfg.width, f" (preset {cfg.preset} sets them)" if by_preset else "")
    return cfg


def from_preset(name: str | None, **overrides: Any) -> Config:
    """The preset's values (those the method has: a preset may set SwAV's prototypes), then the
    method's `DEFAULTS`, then `overrides` (strict)."""
    name = name or DEFAULT_PRESET
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    method = overrides.get("method", PRESETS[name].get("method", "simsiam"))
    check("--method", method, Choice(METHODS))
    own = {f.name for f in dataclasses.fields(METHODS[method].Options)}
    preset = {k: v for k, v in PRESETS[name].items() if k in Config.names() or k in own}
    return from_dict({**preset, **METHODS[method].DEFAULTS, **overrides, "preset": name})


def load_json(path) -> Config:
    """A run's config.json (or any config file), from this version or an older one."""
    return from_dict(read_config_file(path), strict=False)


def with_file(path, given: dict, what: str = "--config") -> Config:
    """The config of file `path` (lenient: an older version's), then `given` (strict)."""
    base = from_dict(read_config_file(path, what), strict=False)
    return from_dict({**base.to_dict(), **given})


def resume_config(run_dir: str | Path, given: dict) -> Config:
    """`--resume`: the run's own config.json with `given` on top (e.g. more --epochs). Its cache
    folder is not taken: a run directory does not choose where this machine writes."""
    saved = Path(run_dir) / "config.json"
    if not saved.exists():
        raise ConfigError(f"--resume: {saved} not found; is --run-dir the directory of an earlier run?")
    base = from_dict(read_config_file(saved, "--resume: config file"), strict=False)
    return from_dict({**base.to_dict(), "cache_dir": None, **given})


def follow_the_images(data_dir: str, given: dict) -> dict:
    """The folder preset's crop size (and blur, stem) from the images' median shorter side,
    printed; options given win (they are left out of what is returned)."""
    from .data.datasets import typical_size

    found = typical_size(data_dir)
    if found is None:
        return {}
    side, n = found
    recipe = {k: v for k, v in folder_recipe(side).items() if k not in given}
    if given.get("arch", PRESETS["folder"]["arch"]) not in RESNETS:
        recipe.pop("cifar_stem", None)  # a ResNet stem; other backbones keep their own
    small = recipe.get("cifar_stem") and "the paper's recipe for small images: CIFAR stem, no blur"
    log(
        f"folder preset: the images' median shorter side is {side} px ({n} sampled): --image-size "
        f"{recipe['image_size']}" + (f", {small}" if small else "") + " (give --image-size to choose)"
    )
    return recipe
