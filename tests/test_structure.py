"""The package's shape (docs/architecture.md): no import cycle, lazy imports included; nothing
imports the engine (engine.py) for a utility; the step loop has no branch on a method or an experiment."""

import ast
import inspect
from pathlib import Path

import simsiam
from simsiam.engine import train_one_epoch

PACKAGE = Path(simsiam.__file__).parent


def imports() -> dict[str, set[str]]:
    """module -> the simsiam modules it imports anywhere in its source (relative imports)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["simsiam", *path.relative_to(PACKAGE).with_suffix("").parts]
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {m: set() for m in names}
    for mod, path in names.items():
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                subs = {f"{base}.{a.name}" for a in node.names} & names.keys()
                edges[mod] |= (subs or {base}) & names.keys() - {mod, "simsiam"}
    return edges


def test_no_import_cycles():
    edges = imports()
    assert "simsiam.engine" in edges and "simsiam.methods.simsiam" in edges["simsiam.methods"]

    def reach(start, node, seen):
        for nxt in edges[node]:
            assert nxt != start, f"import cycle through {start} and {node}"
            if nxt not in seen:
                seen.add(nxt)
                reach(start, nxt, seen)

    for mod in edges:
        reach(mod, mod, set())


def test_only_the_cli_and_the_experiment_runner_import_the_engine():
    importers = {m for m, deps in imports().items() if "simsiam.engine" in deps}
    assert importers == {"simsiam.cli", "simsiam.experiments.runner"}  # the package's API loads it lazily


def test_config_is_a_leaf():
    """config.py imports no other part of simsiam but errors and options, so every module can take a
    typed `cfg: Config` (a method's options live in the method's file, not in config.py)."""
    assert imports()["simsiam.config"] <= {"simsiam.errors", "simsiam.options"}
    assert imports()["simsiam.options"] <= {"simsiam.errors"}


def test_the_step_loop_knows_no_method_and_no_experiment():
    source = inspect.getsource(train_one_epoch)
    for word in ["cfg.method", "alternation", "target_memory", "symmetry", "small_crops", "hasattr", "simsiam"]:
        assert word not in source, word
    assert len(source.splitlines()) <= 40  # fits on one screen


def test_every_robustness_row_names_tests_that_exist():
    """docs/robustness.md promises a test per row: each row names at least one, and each named
    file::test (or `::test` of the file named before it) is defined in tests/."""
    import re

    tests = Path(__file__).parent
    rows = [r for r in (tests.parent / "docs" / "robustness.md").read_text().splitlines() if r.startswith("| ")]
    rows = [r for r in rows if not r.startswith("| case |")]
    assert len(rows) >= 25
    for row in rows:
        cell = row.rstrip(" |").rsplit("|", 1)[1]
        named = re.findall(r"(test_\w+\.py)?::(test_\w+)", cell)
        assert named, f"no test named in row: {row}"
        file = None
        for f, name in named:
            file = f or file
            assert file and re.search(rf"^def {name}\(", (tests / file).read_text(), re.M), f"{file}::{name} not found"


def test_importing_simsiam_loads_no_training_stack_and_no_matplotlib():
    """The package's names load when first used: `import simsiam` (and the CLI's parser) pull in
    neither matplotlib nor the engine; the names still resolve."""
    import subprocess
    import sys

    code = (
        "import sys, simsiam, simsiam.cli; simsiam.cli.build_parser(); "
        "assert not {'matplotlib', 'simsiam.engine', 'simsiam.report'} & set(sys.modules), sorted(sys.modules); "
        "from simsiam import Config, from_preset, train, write_report, SimSiam; print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
