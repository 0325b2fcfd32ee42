"""Property-based tests: whatever bytes an image file holds and whatever values the options get, the
result is a decoded image, a counted skip, a valid Config, or one of our one-line errors; never a
crash. Small example counts, so the file runs in seconds on 2 cores."""

import io
import math
import os
import re
import tempfile
import typing
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from simsiam import cli
from simsiam.config import PRESETS, Config, ConfigError
from simsiam.configure import from_dict, from_preset
from simsiam.data import datasets as D
from simsiam.errors import DataError
from simsiam.methods import METHODS

SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)


# --- image files: corrupted, truncated or random bytes ---------------------------------------------


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (11, 9, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


SEEDS = [_encoded(fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP")]


@st.composite
def damaged_bytes(draw) -> bytes:
    """A valid small image with bytes overwritten, cut short, or both; or random bytes."""
    kind = draw(st.sampled_from(["flip", "truncate", "both", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if kind in ("flip", "both"):
        for pos, byte in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=8)):
            data[pos] = byte
    if kind in ("truncate", "both"):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@SETTINGS
@given(data=damaged_bytes(), suffix=st.sampled_from([".jpg", ".png"]), size=st.sampled_from([1, 8, 13]))
def test_decode_image_of_damaged_bytes_decodes_or_says_none(scratch, data, suffix, size):
    path = scratch / f"x{suffix}"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # never the raw PIL warning
        a = D.decode_image(str(path), size)
    assert a is None or (a.shape == (size, size, 3) and a.dtype == np.uint8)


@settings(SETTINGS, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(files=st.lists(damaged_bytes(), min_size=1, max_size=4), strict=st.booleans(), cached=st.booleans())
def test_read_image_folder_of_damaged_files_skips_counted_or_strict_error(scratch, files, strict, cached, capsys):
    root = tempfile.mkdtemp(dir=scratch)
    for i, data in enumerate(files):
        with open(os.path.join(root, f"{i}{'.jpg' if i % 2 else '.png'}"), "wb") as f:
            f.write(data)
    good = sum(D.decode_image(os.path.join(root, name), 6) is not None for name in os.listdir(root))
    cache = None
    if cached:  # fill the cache without --strict first: strict must hold on a cache hit too
        cache = scratch / "cache"
        try:
            D.read_image_folder(root, 6, cache=cache)
        except DataError:
            pass
    capsys.readouterr()  # capsys is shared by the examples: start from nothing
    try:
        images = D.read_image_folder(root, 6, strict=strict, cache=cache)
    except DataError as e:
        assert good < len(files) and "\n" not in str(e)
        assert str(e).startswith("cannot read image" if strict else f"none of the {len(files)} image files"), e
        return
    assert len(images) == good and images.images.shape == (good, 3, 6, 6)
    err = capsys.readouterr().err
    if good < len(files):
        assert f"skipped {len(files) - good} unreadable image file(s)" in err and len(err.splitlines()) == 1
    else:
        assert err == ""


# --- option values: a valid Config or a ConfigError ---------------------------------------------------

# the run's options and every method's own (an option of another method must be a one-line error too)
HINTS = {**{k: v for m in METHODS.values() for k, v in typing.get_type_hints(m.Options).items()}}
HINTS.update({k: v for k, v in typing.get_type_hints(Config).items() if k in Config.names()})
FIELDS = list(HINTS)
CHOICES = {
    "method": ["simsiam", "simclr", "byol", "swav", "mocov2"],
    "dataset": ["digits", "folder", "cifar10"],
    "head_bn": ["none", "all"],
    "symmetry": ["sym", "asym2x"],
    "alternation": ["off", "epoch", "3", "0", "²", "٣", "-1"],
    "placement": ["auto", "stream"],
    "precision": ["fp32", "bf16"],
}
ODD_FLOATS = st.sampled_from([0.0, -0.0, -1.0, 1e-300, 1e308, float("nan"), float("inf"), float("-inf")])
ODD_INTS = st.sampled_from([0, -1, 1, 4096, 4097, 100_000, 2**63, 10**400])


def _value(name: str):
    """Values of the field's type (odd ones included), now and then one of another type."""
    hint = HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and type(None) in typing.get_args(hint) else hint
    if typing.get_origin(base) is tuple:
        n = len(typing.get_args(base))
        number = st.floats() | ODD_FLOATS | st.integers()
        right = st.lists(number, min_size=n, max_size=n)
        typed = st.one_of(
            right, right, right, st.lists(number, max_size=n + 1), st.lists(st.text(max_size=3) | st.none())
        )
    elif base is bool:
        typed = st.booleans()
    elif base is int:
        typed = st.integers() | ODD_INTS
    elif base is float:
        typed = st.floats() | ODD_FLOATS | st.integers() | ODD_INTS
    else:
        typed = st.text(max_size=8) | st.sampled_from(CHOICES.get(name, ["x"]))
    other = st.none() | st.text(max_size=4) | st.booleans() | st.floats() | st.lists(st.integers(), max_size=2)
    return st.integers(0, 9).flatmap(lambda i: other if i == 0 else typed)


overrides = st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: _value(n) for n in names})
)


def _config_or_config_error(make):
    try:
        cfg = make()
    except ConfigError as e:
        assert "\n" not in str(e)
        return None
    assert isinstance(cfg, Config)
    cfg.validate()  # what came back passes its own checks, and holds only finite numbers
    for name, v in cfg.to_dict().items():
        assert all(math.isfinite(x) for x in (v if isinstance(v, tuple) else (v,)) if isinstance(x, float)), name
    assert max(cfg.image_size, cfg.load_size, cfg.to_dict().get("small_crop_size", 0)) <= 4096
    assert min(cfg.std) > 0  # the images are divided by it
    return cfg


# values that broke it once: an int beyond any float, "²" (isdigit() but not int()), NaN in a
# tuple, a string in a tuple, a 100,000 px image, a zero std
KNOWN = [
    {"width": 10**400},
    {"alternation": "²"},
    {"jitter": [float("nan"), 0.4, 0.4, 0.1]},
    {"mean": ["a", 0.5, 0.5]},
    {"image_size": 100_000},
    {"std": [0.2, 0.0, 0.2]},
]


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(values=overrides)
@example(values=KNOWN[0])
@example(values=KNOWN[1])
@example(values=KNOWN[2])
@example(values=KNOWN[3])
@example(values=KNOWN[4])
@example(values=KNOWN[5])
def test_config_from_dict_of_random_values_is_config_or_config_error(values):
    _config_or_config_error(lambda: from_dict({**Config().to_dict(), **values}))


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(preset=st.sampled_from([*PRESETS, *PRESETS, "nope", ""]), values=overrides)
@example(preset="digits", values={"method": []})  # `[] in METHODS` raised TypeError
def test_from_preset_with_random_values_is_config_or_config_error(preset, values):
    _config_or_config_error(lambda: from_preset(preset, **values))


def _flag_values(name: str):
    """What a user could type after --NAME=: numbers of the option's type, odd ones included."""
    hint = HINTS[name]
    if hint is int:
        return st.sampled_from(["0", "-1", "4097", "100000", str(10**30)]) | st.integers().map(str)
    if hint is float:
        return st.sampled_from(["0", "-0", "nan", "inf", "-inf", "1e999", "-1e-9"]) | st.floats().map(repr)
    return st.sampled_from(CHOICES.get(name, ["x"])) | st.text(max_size=6).filter(lambda s: "\0" not in s)


CLI_FIELDS = [n for n in FIELDS if HINTS[n] in (int, float) or n in CHOICES and n not in ("preset", "dataset")]


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(
    args=st.lists(st.sampled_from(CLI_FIELDS), min_size=1, max_size=3, unique=True).flatmap(
        lambda names: st.tuples(*[_flag_values(n).map(lambda v, n=n: f"--{n.replace('_', '-')}={v}") for n in names])
    )
)
def test_cli_option_values_are_config_or_config_error(args):
    """Through the real parser: argparse refuses what is not a number of the option's type (its own
    usage error, exit 2); everything it accepts becomes a Config or a one-line ConfigError."""
    try:
        ns = cli.build_parser().parse_args(["train", *args])
    except SystemExit as e:
        assert e.code == 2
        return
    _config_or_config_error(lambda: cli.config_from_args(ns))


@pytest.mark.parametrize("name", ["image_size", "load_size", "small_crop_size"])
def test_image_sizes_have_an_upper_bound(name):
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} .*4096") as e:
        from_dict({"method": "swav", "image_size": 4097 if name == "image_size" else 224, name: 100_000})
    assert "\n" not in str(e.value)
    from_dict(
        {"method": "swav", "image_size": 4096, "load_size": 4096, "small_crop_size": 4096}
    )  # the bound is allowed


def test_cli_refuses_a_huge_image_size_in_one_line(tmp_path, capsys, monkeypatch):
    """--image-size 100000 used to try to allocate terabytes."""
    from conftest import assert_one_line_error, simsiam

    monkeypatch.chdir(tmp_path)
    res = simsiam(capsys, "train", "--image-size", "100000")
    assert_one_line_error(res, "--image-size 100000", "limit of 4096 px")
    assert not (tmp_path / "runs").exists()


# --- every command's options through the real CLI, in-process ---------------------------------------

MISSING = "/nonexistent/simsiam-fuzz"  # the source / data of every command: after the checks, a DataError
INT_TEXT = st.sampled_from(
    ["0", "1", "2", "-1", "-3", str(2**63), str(2**64 - 1), str(2**64), str(-(2**63) - 1), str(10**30), "2.5", "x"]
) | st.integers().map(str)
FLOAT_TEXT = st.sampled_from(
    ["0", "-0", "nan", "inf", "-inf", "1e999", "-1e-9", "1e-300", "0.5", "x"]
) | st.floats().map(repr)
DEVICE_TEXT = st.sampled_from(
    ["auto", "cpu", "cuda", "cuda:0", "cuda:99", "mps", "foo", "cuda:x", "CPU", "", "cuda:-1", "meta", "cpu\n"]
) | st.text(max_size=6).filter(lambda s: "\0" not in s)
FLAG = st.just(None)  # a switch: given or not


def _train_values(name: str):
    if name == "device":
        return DEVICE_TEXT
    if typing.get_origin(HINTS[name]) is tuple:
        return st.lists(
            FLOAT_TEXT, min_size=len(typing.get_args(HINTS[name])), max_size=len(typing.get_args(HINTS[name]))
        )
    return _flag_values(name)


TUPLES = [n for n in FIELDS if typing.get_origin(HINTS[n]) is tuple]
COMMANDS = {
    "train": (
        ["train", "--data-dir", MISSING],
        {f"--{n.replace('_', '-')}": _train_values(n) for n in [*CLI_FIELDS, *TUPLES, "device"]},
    ),
    "eval knn": (["eval", "knn", MISSING], {"--k": INT_TEXT, "--t": FLOAT_TEXT, "--device": DEVICE_TEXT}),
    "eval linear": (
        ["eval", "linear", MISSING],
        {
            "--epochs": INT_TEXT,
            "--batch-size": INT_TEXT,
            "--lr": FLOAT_TEXT,
            "--seed": INT_TEXT,
            "--device": DEVICE_TEXT,
            "--fast": FLAG,
        },
    ),
    "export": (
        ["export", MISSING, "--out", "b.safetensors"],
        {"--format": st.sampled_from(["safetensors", "onnx", "x"])},
    ),
    "embed": (
        ["embed", MISSING, "--data-dir", MISSING, "--out", "e.npy"],
        {"--batch-size": INT_TEXT, "--device": DEVICE_TEXT, "--projector": FLAG},
    ),
    "reproduce": (
        ["reproduce", "predictor", "--data-dir", MISSING, "--out", "out"],
        {
            "--seeds": INT_TEXT,
            "--epochs": INT_TEXT,
            "--device": DEVICE_TEXT,
            "--check": FLAG,
            "--scale": st.sampled_from(["cpu", "paper", "x"]),
        },
    ),
    "compare": (
        ["compare", "simsiam", "byol", "--data-dir", MISSING, "--out", "out"],
        {
            "--seeds": INT_TEXT,
            "--epochs": INT_TEXT,
            "--device": DEVICE_TEXT,
            "--set": st.sampled_from(["width=0.5", "x", "lr=-1"]),
        },
    ),
    "report": (["report", MISSING], {"--no-retrieval": FLAG, "--no-embedding-map": FLAG}),
}


@st.composite
def command_lines(draw) -> list[str]:
    """A command with a few of its options at random values (odd ones included)."""
    head, options = COMMANDS[draw(st.sampled_from(list(COMMANDS)))]
    argv = list(head)
    for name in draw(st.lists(st.sampled_from(list(options)), min_size=1, max_size=3, unique=True)):
        value = draw(options[name])
        argv += [name] if value is None else [name, *value] if isinstance(value, list) else [f"{name}={value}"]
    return argv


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(argv=command_lines())
@example(argv=["eval", "knn", MISSING, "--k=0"])  # reported an accuracy
@example(argv=["embed", MISSING, "--data-dir", MISSING, "--out", "e.npy", "--batch-size=0"])  # a traceback
@example(argv=["train", "--data-dir", MISSING, "--seed=1180591620717411303424"])  # torch.manual_seed overflow
@example(argv=["compare", "simsiam", "--data-dir", MISSING, "--device=foo"])
def test_every_commands_options_are_a_usage_error_a_config_error_or_checked(
    argv, capsys, tmp_path_factory, monkeypatch
):
    """Whatever the values: argparse's usage error (exit 2), or one `simsiam: error:` line, naming
    an option when a check refused it, else the missing source that the command met next; never
    an exception out of main()."""
    monkeypatch.chdir(tmp_path_factory.getbasetemp())
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse: not a value of the option's type, or a missing value
        assert e.code == 2
        return
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("simsiam: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert MISSING in errors[0] or re.search(r"--[a-z]", errors[0]), errors[0]
