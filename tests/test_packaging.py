"""`methods` and `metrics` are generic names: they must resolve to this repository's packages."""
from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["harness", "methods", "metrics"])
def test_packages_resolve_inside_repository(name: str) -> None:
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().is_relative_to(REPO), module.__file__


def test_pyproject_lists_every_package_explicitly() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("harness", "methods", "metrics")
        for p in (REPO / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk <= listed, f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"



def test_make_test_runs_lint_and_types_before_the_tests() -> None:
    # Issue 17.11: CI (`.ci/run`) runs exactly `make test`; the lint step must be part of it, not beside it.
    makefile = (REPO / "Makefile").read_text()
    test_rule = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "lint" in test_rule.split(":", 1)[1].split()
    lint_body = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check" in lint_body and "mypy" in lint_body
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]
    assert config["ruff"]["lint"]["select"] and set(config["mypy"]["files"]) >= {"harness", "methods", "metrics"}
    assert any(line.startswith(("ruff", "mypy")) for line in (REPO / "requirements.txt").read_text().splitlines())


# The architecture walls (ray, store, executors, methods, reports) are checked in tests/test_walls.py.
