"""Fingerprints of the code that makes a run's images: each method's module and the shared helpers it imports.

Unit keys name methods and their `version`, not their code, so without these an edited `edit` would
resume an old run and keep the old code's images as done. A method's modules are its own module plus,
transitively, every module of `methods`, `harness.diffusion` and `harness.method_api` it imports (found by reading the import
statements, lazy ones inside functions included); each is hashed by its source bytes. The run keeps
them in config.yaml (`code_fingerprints`), so a changed module is refused with a diff naming it.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any, Iterable

from harness.config import REPO_ROOT
from harness.hashing import file_sha256

SHARED_PACKAGES = ("methods", "harness.diffusion", "harness.method_api")
"""Where the code a method runs lives (harness.method_api: the EditMethod base class, moved out of
methods/base.py by issue 17.12, which only re-exports it now). Not everything that shapes a run's pixels is here: the worker's
float-to-uint8 rounding (`harness.worker.to_uint8`), real-image loading and resizing (`harness.images`) and
model loading (`harness.models`) are outside, so a change there is not detected by these fingerprints
(`harness verify` re-generates batches and compares the bytes; that is the check for those)."""


def _in_scope(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in SHARED_PACKAGES)


def _source(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") else None


def _imports(name: str, path: Path) -> set[str]:
    """Modules named by the import statements of one file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            if _in_scope(base):  # `from pkg import mod` imports a module too (looked up only in scope: cheap)
                out.update(f"{base}.{alias.name}" for alias in node.names if _source(f"{base}.{alias.name}"))
    return out


@functools.lru_cache(maxsize=None)
def module_closure(module: str) -> dict[str, Path]:
    """`module` and every in-scope module it imports, transitively, with the packages around them.

    Cached per process (which files a method uses); their hashes are not (file_sha256 rereads a changed file)."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _source(name)
        if path is None:
            continue
        seen[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if _in_scope(".".join(parts[:i]))]
        todo += [m for m in _imports(name, path) if _in_scope(m)]
    return seen


def _label(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:  # a plug-in installed elsewhere
        return str(path)


def method_code(cls: Any) -> dict[str, str]:
    """{source file: sha256 prefix} of the code a method class runs."""
    return {_label(p): file_sha256(p)[:16] for p in module_closure(cls.__module__).values()}


def code_fingerprints(classes: Iterable[Any]) -> dict[str, str]:
    """The union of `method_code` over a run's method classes (a shared helper appears once)."""
    out: dict[str, str] = {}
    for cls in classes:
        out.update(method_code(cls))
    return dict(sorted(out.items()))
