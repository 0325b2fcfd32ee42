"""The package's shape (docs/architecture.md): no import cycle, lazy imports included; nothing
imports train.py for a utility; the step loop has no branch on a method or an experiment."""

import ast
import inspect
from pathlib import Path

import simsiam
from simsiam.train import train_one_epoch

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
    assert "simsiam.train" in edges and "simsiam.methods.simsiam" in edges["simsiam.methods"]

    def reach(start, node, seen):
        for nxt in edges[node]:
            assert nxt != start, f"import cycle through {start} and {node}"
            if nxt not in seen:
                seen.add(nxt)
                reach(start, nxt, seen)

    for mod in edges:
        reach(mod, mod, set())


def test_only_the_cli_and_the_experiment_runner_import_train():
    importers = {m for m, deps in imports().items() if "simsiam.train" in deps}
    assert importers == {"simsiam", "simsiam.cli", "simsiam.experiments.runner"}  # the package: its API


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
