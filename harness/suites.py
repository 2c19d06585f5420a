"""Prompt/attribute suites: data files in configs/suites/<name>.yaml, each item with a stable id."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import CONFIG_DIR, load_yaml
from harness.errors import ConfigError
from harness.hashing import stable_hash
from harness.schema import from_dict, to_dict

SUITE_DIR = CONFIG_DIR / "suites"


@dataclass(frozen=True)
class Attribute:
    """An attribute a zero-shot CLIP scorer can judge: score = P(positive | image) against negative."""

    positive: str
    negative: str
    factor: str | None = None
    """For the embedded world: the scene factor this attribute changes (checked exactly by the oracle)."""
    value: str | None = None
    """For the embedded world: the factor value the edit should reach."""


@dataclass(frozen=True)
class SuiteItem:
    id: str
    attribute: str
    prompt: str = ""
    """Original prompt (text-conditional models); unconditional models ignore it."""
    target_prompt: str = ""
    """Prompt carrying the attribute (text edits: SD baseline, AVI, Park et al.)."""


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    items: tuple[SuiteItem, ...]
    attributes: dict[str, Attribute] = field(default_factory=dict)
    description: str = ""

    def validate(self, prefix: str) -> None:
        ids = [it.id for it in self.items]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ConfigError(f"{prefix}.items", sorted(dup)[0], "unique item ids")
        for i, it in enumerate(self.items):
            if it.attribute not in self.attributes:
                raise ConfigError(f"{prefix}.items[{i}].attribute", it.attribute, sorted(self.attributes),
                                  "declare the attribute under `attributes:` or fix its name")

    def item(self, item_id: str) -> SuiteItem:
        for it in self.items:
            if it.id == item_id:
                return it
        raise ConfigError(f"items", item_id, [it.id for it in self.items], f"no such item in suite {self.name!r}")

    @property
    def fingerprint(self) -> str:
        return stable_hash(to_dict(self))


def list_suites(directory: Path = SUITE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_suite(name_or_path: str, directory: Path = SUITE_DIR) -> Suite:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError("suites", name_or_path, list_suites(directory),
                          f"unknown suite; add configs/suites/{name_or_path}.yaml or pass a path to a suite file")
    raw: dict[str, Any] = load_yaml(path)
    raw.setdefault("name", path.stem)
    return from_dict(Suite, raw, prefix=f"suites[{path.stem}]")
