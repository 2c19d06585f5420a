"""Architecture walls, checked on parsed import statements (issue 17.12).

The earlier check matched text ("import ray" in the source), so `from harness import store` or
`import harness.executors as ex` passed the store/executor wall, and a comment mentioning `import ray`
failed it. Here every import statement, lazy ones inside functions included, is parsed with `ast`,
relative imports are resolved, and `from pkg import name` counts as importing `pkg.name` too (it may be a
module). The walls:
- only `harness/executors/ray_executor.py` imports ray;
- `methods` never imports the store, the executors, the worker or the runner;
- `metrics` never imports `methods`;
- `harness` never imports `methods` (the method API is `harness.method_api`; the built-in methods are
  loaded by name as plug-ins, by `discover_methods`);
- `harness.reports` reads stored results only: none of the code that produces them (runner, worker,
  executors, models, the diffusion code, methods, the metrics stage, torch, diffusers, transformers, ray).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "methods", "metrics")

REPORTS_MUST_NOT_IMPORT = (
    "harness.runner", "harness.worker", "harness.executors", "harness.models", "harness.diffusion",
    "harness.method_api", "harness.units", "harness.evaluation", "methods", "metrics.stage", "metrics._stage",
    "torch", "diffusers", "transformers", "ray",
)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module an import statement anywhere in `source` (the module `module`) may bind."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return out


def reaches(imports: set[str], forbidden: str) -> bool:
    """True when some import is `forbidden` or a module inside it."""
    return any(name == forbidden or name.startswith(forbidden + ".") for name in imports)


def violations(module: str, imports: set[str]) -> list[str]:
    """The walls `module` breaks with these imports, one line each (empty when it keeps to them)."""
    top = module.split(".")[0]
    out = []
    if module != "harness.executors.ray_executor" and reaches(imports, "ray"):
        out.append(f"{module} imports ray (only harness.executors.ray_executor may)")
    if top == "methods":
        out += [f"{module} imports {f}" for f in ("harness.store", "harness.executors", "harness.worker",
                                                   "harness.runner") if reaches(imports, f)]
    if top in ("metrics", "harness") and reaches(imports, "methods"):
        out.append(f"{module} imports methods")
    if module == "harness.reports" or module.startswith("harness.reports."):
        out += [f"{module} (a report) imports {f}" for f in REPORTS_MUST_NOT_IMPORT if reaches(imports, f)]
    return out


def project_modules() -> list[tuple[str, Path]]:
    out = []
    for top in PACKAGES:
        for path in sorted((REPO / top).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out.append((name, path))
    return out


def test_every_module_keeps_to_the_walls() -> None:
    broken = []
    for name, path in project_modules():
        broken += violations(name, imported_modules(path.read_text(), name, path.name == "__init__.py"))
    assert broken == []


def test_the_check_sees_every_package_module() -> None:
    names = {name for name, _ in project_modules()}
    assert {"harness.executors.ray_executor", "harness.method_api", "methods.base", "metrics.stage",
            "harness.reports.tables"} <= names


@pytest.mark.parametrize(("module", "source", "expected"), [
    # The text match let these through: the wall is about what is imported, not how it is spelled.
    ("methods.x", "from harness import store\n", "methods.x imports harness.store"),
    ("methods.x", "import harness.executors.ray_executor as ex\n", "methods.x imports harness.executors"),
    ("methods.x", "def f():\n    from harness import worker\n", "methods.x imports harness.worker"),
    ("methods.x", "from harness.runner import run\n", "methods.x imports harness.runner"),
    ("metrics.x", "from methods import base\n", "metrics.x imports methods"),
    ("metrics.functional.x", "import methods.base as b\n", "metrics.functional.x imports methods"),
    ("harness.units", "def plan():\n    import methods.base\n", "harness.units imports methods"),
    ("harness.store", "import ray.util as u\n", "harness.store imports ray (only harness.executors.ray_executor may)"),
    ("harness.reports.x", "from harness.worker import Worker\n", "harness.reports.x (a report) imports harness.worker"),
    ("harness.reports.x", "from ..diffusion import sampler\n",
     "harness.reports.x (a report) imports harness.diffusion"),
])
def test_a_module_breaking_a_wall_is_reported(module: str, source: str, expected: str) -> None:
    assert expected in violations(module, imported_modules(source, module))


@pytest.mark.parametrize(("module", "source"), [
    ("methods.x", '"""Never `import ray` here, nor `from harness import store`."""\n# import ray\n'),
    ("methods.x", "from harness.diffusion import sampler\nfrom harness.storey import x\n"),
    ("harness.executors.ray_executor", "import ray\n"),
    ("harness.reports.x", "from harness.store import RunStore\nfrom metrics.registry import metric_spec\n"),
    ("harness.worker", "from harness.method_api import EditRequest\n"),
])
def test_text_that_only_mentions_a_module_is_not_an_import(module: str, source: str) -> None:
    assert violations(module, imported_modules(source, module)) == []
