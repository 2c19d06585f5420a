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


def test_only_the_ray_executor_imports_ray() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for top in ("harness", "methods", "metrics")
        for p in (REPO / top).rglob("*.py")
        if p.name != "ray_executor.py" and ("import ray" in p.read_text() or "from ray" in p.read_text())
    ]
    assert offenders == []


def test_metrics_never_import_methods_and_methods_never_touch_store_or_executors() -> None:
    for p in (REPO / "metrics").rglob("*.py"):
        text = p.read_text()
        assert "import methods" not in text and "from methods" not in text, p
    for p in (REPO / "methods").rglob("*.py"):
        text = p.read_text()
        for forbidden in ("harness.store", "harness.executors", "harness.worker", "harness.runner"):
            assert forbidden not in text, (p, forbidden)
