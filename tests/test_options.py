"""Every option is checked where it is declared, by one function, for every command: a bad value is
one `simsiam: error:` line naming the option and what is allowed (exit 2), before any file is read
or any model loaded; from Python the same ConfigError. Driven in-process: `cli.main([...])`."""

import dataclasses
import typing

import pytest
import torch

from simsiam import cli
from simsiam.config import Config
from simsiam.configure import from_dict, load_json
from simsiam.errors import ConfigError

MISSING = "/nonexistent/simsiam-source"  # validation comes first, so a bad option wins over this


def one_line_error(argv, capsys, *needles) -> str:
    """main(argv) returns 2 and prints exactly one stderr line, `simsiam: error: ...`, with needles."""
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("simsiam: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


KNN = ["eval", "knn", MISSING]
LINEAR = ["eval", "linear", MISSING]
EMBED = ["embed", MISSING, "--data-dir", MISSING, "--out", "emb.npy"]
REPRODUCE = ["reproduce", "predictor", "--out", "out"]
COMPARE = ["compare", "simsiam", "--out", "out"]
DEVICE = "auto, cpu, cuda, cuda:N or mps"


@pytest.mark.parametrize(
    "argv,needles",
    [
        # eval knn: --k 0 and --t 0 reported an accuracy (11.1%), --k -3 was a traceback
        ([*KNN, "--k", "0"], ["--k must be a positive integer, got 0"]),
        ([*KNN, "--k", "-3"], ["--k must be a positive integer, got -3"]),
        ([*KNN, "--t", "0"], ["--t must be a positive number, got 0"]),
        ([*KNN, "--t", "-0.1"], ["--t must be a positive number"]),
        ([*KNN, "--t", "nan"], ["--t must be a positive number, got nan"]),
        ([*KNN, "--t", "inf"], ["--t must be a positive number, got inf"]),
        ([*KNN, "--device", "foo"], ["--device must be " + DEVICE, "'foo'"]),
        # eval linear: --epochs / --batch-size / --lr were one shared message, --seed unchecked
        ([*LINEAR, "--epochs", "0"], ["--epochs must be a positive integer, got 0"]),
        ([*LINEAR, "--batch-size", "-1"], ["--batch-size must be a positive integer"]),
        ([*LINEAR, "--lr", "0"], ["--lr must be a positive number"]),
        ([*LINEAR, "--lr", "nan"], ["--lr must be a positive number"]),
        ([*LINEAR, "--seed", str(2**70)], ["--seed", str(2**64 - 1), "torch's seed range"]),
        ([*LINEAR, "--device", "cuda:x"], ["--device must be " + DEVICE]),
        # train
        (["train", "--batch-size", "1"], ["--batch-size must be at least 2", "BatchNorm", "got 1"]),
        (["train", "--seed", str(2**70)], ["--seed", str(2**64 - 1), "torch's seed range", str(2**70)]),
        (["train", "--seed", str(-(2**63) - 1)], ["--seed", str(-(2**63))]),
        (["train", "--crop-ratio", "-1", "2"], ["--crop-ratio needs 0 < min <= max, got (-1.0, 2.0)"]),
        (["train", "--crop-ratio", "1.3", "0.7"], ["--crop-ratio needs 0 < min <= max, got (1.3, 0.7)"]),
        (["train", "--blur-sigma", "2", "0.1"], ["--blur-sigma needs 0 < min <= max, got (2.0, 0.1)"]),
        (["train", "--blur-sigma", "0", "0"], ["--blur-sigma needs 0 < min <= max"]),
        (
            ["train", "--method", "swav", "--small-crop-scale", "0.5", "0.1"],
            ["--small-crop-scale needs 0 < min <= max <= 1"],
        ),
        (["train", "--jitter", "-0.1", "0.4", "0.4", "0.1"], ["--jitter needs brightness >= 0", "hue in [0, 0.5]"]),
        (["train", "--jitter", "0.4", "0.4", "0.4", "0.6"], ["--jitter", "hue in [0, 0.5]", "0.6"]),
        (["train", "--jitter", "0.4", "-1", "0.4", "0.1"], ["--jitter", "contrast >= 0"]),
        (["train", "--device", "foo"], ["--device must be " + DEVICE, "'foo'"]),
        (["train", "--device", "cuda:"], ["--device must be " + DEVICE]),
        (["train", "--momentum", "-1"], ["--momentum must be a number in [0, 1)"]),  # was SGD's traceback
        (["train", "--weight-decay", "-1"], ["--weight-decay must be >= 0"]),  # was SGD's traceback
        # embed: --batch-size 0 was a traceback
        ([*EMBED, "--batch-size", "0"], ["--batch-size must be a positive integer, got 0"]),
        ([*EMBED, "--device", "gpu"], ["--device must be " + DEVICE]),
        # reproduce / compare
        ([*REPRODUCE, "--seeds", "0"], ["--seeds must be a positive integer, got 0"]),
        ([*REPRODUCE, "--seeds", "-2"], ["--seeds must be a positive integer, got -2"]),
        ([*REPRODUCE, "--epochs", "0"], ["--epochs must be a positive integer, got 0"]),
        ([*REPRODUCE, "--device", "foo"], ["--device must be " + DEVICE]),
        ([*COMPARE, "--seeds", "0"], ["--seeds must be a positive integer, got 0"]),
        ([*COMPARE, "--epochs", "-1"], ["--epochs must be a positive integer, got -1"]),
        ([*COMPARE, "--device", "foo"], ["--device must be " + DEVICE]),
    ],
)
def test_a_bad_option_of_any_command_is_one_line_before_anything_is_read(argv, needles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(argv, capsys, *needles)
    assert list(tmp_path.iterdir()) == []  # nothing written: no run directory, no output folder


def test_reproduce_and_compare_check_their_data_dir_before_training(capsys, tmp_path, monkeypatch):
    """A missing --data-dir was found only by the first training (compare: in a child process,
    two error lines)."""
    monkeypatch.chdir(tmp_path)
    for argv in (REPRODUCE, COMPARE):
        one_line_error([*argv, "--data-dir", MISSING], capsys, MISSING, "does not exist")
    assert list(tmp_path.iterdir()) == []


# --- --config FILE, --resume, load_json: a file that is not a JSON object of options --------------

BAD_FILES = {
    "not utf-8": b'{"lr": "\xff\xfe"}',
    "invalid json": b'{"lr": 0.1,',
    "a json list": b'["lr", 0.1]',
    "a json number": b"3",
    "a json string": b'"lr"',
    "null": b"null",
    "nested too deep": b"[" * 100_000,
    "an int of 5000 digits": b'{"seed": 1' + b"0" * 5000 + b"}",
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_config_file_that_is_not_a_json_object_is_one_line_naming_it(kind, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.json"
    path.write_bytes(BAD_FILES[kind])
    one_line_error(["train", "--config", str(path)], capsys, "--config", str(path))
    one_line_error(["train", "--resume", "--run-dir", str(tmp_path)], capsys, "--resume", str(path))
    with pytest.raises(ConfigError, match="config.json") as e:
        load_json(path)
    assert "\n" not in str(e.value)


def test_a_config_file_that_cannot_be_read_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in (tmp_path / "missing.json", tmp_path):  # not there; a folder
        one_line_error(["train", "--config", str(path)], capsys, "--config", str(path))
        with pytest.raises(ConfigError, match=str(path)):
            load_json(path)


def test_a_config_file_with_a_bad_value_names_the_option(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.json"
    path.write_text('{"batch_size": 1}')
    one_line_error(["train", "--config", str(path)], capsys, "--batch-size must be at least 2")


@pytest.mark.parametrize("value", [[1, 2], 3, "lr", None, [("lr", 0.1)]])
def test_config_from_dict_of_something_else_than_a_dict_is_a_config_error(value):
    with pytest.raises(ConfigError, match="object of option"):
        from_dict(value)
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict({1: 2, "lr": 0.1})  # a key that is not a string: named, not a TypeError


# --- the Python API: the same checks ------------------------------------------------------------


@pytest.mark.parametrize(
    "protocol,options,needle",
    [
        ("knn", dict(k=0), "--k must be a positive integer"),
        ("knn", dict(k=2.5), "--k must be a positive integer, got 2.5"),
        ("knn", dict(t=0.0), "--t must be a positive number"),
        ("knn", dict(device="foo"), "--device must be"),
        ("linear", dict(epochs=0), "--epochs must be a positive integer"),
        ("linear", dict(batch_size=-1), "--batch-size must be a positive integer"),
        ("linear", dict(lr=float("nan")), "--lr must be a positive number"),
        ("linear", dict(seed=2**64), "--seed must be an integer in"),
    ],
)
def test_evaluate_checks_its_options_before_loading(protocol, options, needle):
    from simsiam.evaluation import evaluate

    with pytest.raises(ConfigError, match=needle) as e:
        evaluate(MISSING, protocol, **options)  # the missing source would be a DataError
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "options,needle",
    [
        (dict(batch_size=0), "--batch-size must be a positive integer, got 0"),
        (dict(device="foo"), "--device must be"),
    ],
)
def test_embed_folder_checks_its_options_before_reading(options, needle, tmp_path):
    from simsiam.export import embed_folder

    with pytest.raises(ConfigError, match=needle):
        embed_folder(MISSING, MISSING, tmp_path / "e.npy", **options)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["foo", "", "cuda:x", "cuda:-1", "CPU", " cpu", "cuda:٣", "meta", "cpu\n"])
def test_resolve_device_refuses_a_name_that_is_no_device_in_one_line(name):
    from simsiam.runtime import resolve_device

    with pytest.raises(ConfigError, match="--device must be " + DEVICE) as e:
        resolve_device(name)
    assert "\n" not in str(e.value)


def test_resolve_device_refuses_a_gpu_that_is_not_there(monkeypatch):
    from simsiam.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"--device cuda:2: only 2 CUDA GPUs are visible \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # there: no error (nothing allocated)
    assert resolve_device("cpu") == torch.device("cpu")


def test_the_bounds_themselves_are_allowed():
    """Defaults and the edges of each range pass (training numerics do not move)."""
    assert Config(seed=2**64 - 1).seed == 2**64 - 1 and Config(seed=-(2**63)).seed == -(2**63)  # torch's range
    for ok in [
        dict(batch_size=2),
        dict(crop_ratio=(1.0, 1.0), blur_sigma=(0.5, 0.5)),
        dict(jitter=(0.0, 0.0, 0.0, 0.5)),
        dict(momentum=0.0, weight_decay=0.0),
        dict(device="cuda:0"),
        dict(device="mps"),
    ]:
        Config(**ok)
    assert from_dict({"alternation": "007"}).to_dict()["alternation"] == "007"  # SimSiam's option
    with pytest.raises(ConfigError, match="--seed"):
        Config(seed=2**64)
    with pytest.raises(ConfigError, match="--batch-size must be an integer at least 2"):
        Config(batch_size=64.0)  # type: ignore[arg-type]


def test_every_number_and_device_option_of_config_declares_its_constraint():
    """Declared where the option is declared: a new numeric field without a check fails here."""
    hints = typing.get_type_hints(Config)

    def numeric(hint) -> bool:
        args = [a for a in typing.get_args(hint) if a is not type(None)] if type(None) in typing.get_args(hint) else []
        base = args[0] if args else hint
        return base in (int, float) or typing.get_origin(base) is tuple

    fields = dataclasses.fields(Config)
    unchecked = [f.name for f in fields if "check" not in f.metadata and (numeric(hints[f.name]) or f.name == "device")]
    assert unchecked == []


def test_help_shows_each_constraint(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option, so a constraint is never wrapped
    for argv, texts in [
        (["train"], ["[> 0; paper/Config default: 0.05", "[>= 2; paper/Config default: 512", "0 < min <= max <= 1"]),
        (["train"], ["brightness >= 0, contrast >= 0, saturation >= 0, hue in [0, 0.5]", "cuda:N | mps"]),
        (["eval", "knn"], ["neighbours [> 0] (default: 200)", "cuda:N | mps"]),
        (["eval", "linear"], ["[-9223372036854775808 to 18446744073709551615]"]),
        (["embed"], ["[> 0] (default: 256)"]),
        (["compare"], ["seeds per method", "[> 0] (default: 1)"]),
        (["reproduce"], ["override the scale's epochs [> 0]"]),
    ]:
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
        out = capsys.readouterr().out
        for text in texts:
            assert text in out, (argv, text)
