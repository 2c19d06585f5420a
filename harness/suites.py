"""Prompt/attribute suites: data files in configs/suites/<name>.yaml, each item with a stable id."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from harness.config import CONFIG_DIR, load_yaml
from harness.errors import ConfigError
from harness.hashing import file_sha256, stable_hash
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
    image: str | None = None
    """A real image to edit (path, relative to the suite file): the unit starts from its DDIM inversion,
    with `prompt` as its caption."""


@dataclass(frozen=True)
class ImageFolder:
    """Items from a folder of real images and a captions file (CSV with a header, or JSONL).

    Columns/keys: file (required), caption, target_caption, attribute, id (default: the file stem).
    """

    folder: str
    captions: str
    attribute: str | None = None
    """Attribute of items whose captions file gives none."""


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    items: tuple[SuiteItem, ...]
    attributes: dict[str, Attribute] = field(default_factory=dict)
    description: str = ""
    image_folders: tuple[ImageFolder, ...] = ()
    image_transform: Literal["center-crop", "resize"] = "center-crop"
    """How real images of any size become the model's square input."""
    world: str | None = None
    """The procedural world (harness.world.registry) whose exact oracle checks the attributes' factor targets;
    None means the shapes world where any attribute names a factor (suites written before worlds had names)."""

    @property
    def oracle_world(self) -> str | None:
        """The world scoring this suite's factor targets, or None if no attribute has one."""
        if self.world:
            return self.world
        return "shapes" if any(a.factor for a in self.attributes.values()) else None

    def validate(self, prefix: str) -> None:
        ids = [it.id for it in self.items]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ConfigError(f"{prefix}.items", sorted(dup)[0], "unique item ids")
        if self.oracle_world:
            from harness.world.registry import get_world, world_names

            if self.oracle_world not in world_names():
                raise ConfigError(f"{prefix}.world", self.oracle_world, world_names(), "name a registered world")
            world = get_world(self.oracle_world)
            for name, attr in self.attributes.items():
                if attr.factor is None:
                    continue
                if attr.factor not in world.factor_names:
                    raise ConfigError(f"{prefix}.attributes.{name}.factor", attr.factor, list(world.factor_names),
                                      f"a factor of the {world.name} world")
                if attr.value not in world.factor_values[attr.factor]:
                    raise ConfigError(f"{prefix}.attributes.{name}.value", attr.value,
                                      list(world.factor_values[attr.factor]), f"a value of factor {attr.factor}")
        for i, it in enumerate(self.items):
            if it.attribute not in self.attributes:
                raise ConfigError(f"{prefix}.items[{i}].attribute", it.attribute, sorted(self.attributes),
                                  "declare the attribute under `attributes:` or fix its name")

    def item(self, item_id: str) -> SuiteItem:
        for it in self.items:
            if it.id == item_id:
                return it
        raise ConfigError("items", item_id, [it.id for it in self.items], f"no such item in suite {self.name!r}")

    @property
    def fingerprint(self) -> str:
        """Hash of what the suite asks for. A real image counts by its bytes, not its path, so moving the
        checkout keeps prepare caches valid and replacing an image's content invalidates them."""
        content = to_dict(self)
        content.pop("image_folders")  # already expanded into items
        content["items"] = [dict(it, image=file_sha256(it["image"])) if it.get("image") else it
                            for it in content["items"]]
        return stable_hash(content)


def select_items(suite: Suite, items: tuple[str, ...] | None) -> Suite:
    """The suite restricted to a run's `items` (what prepare sees and what its cache key covers)."""
    if items is None:
        return suite
    return replace(suite, items=tuple(it for it in suite.items if it.id in items))


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
    prefix = f"suites[{path.stem}]"
    raw["items"] = [_resolve_image(it, path.parent) for it in raw.get("items", [])]
    folders = raw.get("image_folders", [])
    for i, folder in enumerate(folders if isinstance(folders, list) else []):
        raw["items"] += _folder_items(from_dict(ImageFolder, folder, f"{prefix}.image_folders[{i}]"), path.parent,
                                      f"{prefix}.image_folders[{i}]")
    return from_dict(Suite, raw, prefix=prefix)


def _resolve_image(item: Any, base: Path) -> Any:
    if isinstance(item, dict) and item.get("image"):
        item = dict(item, image=str((base / item["image"]).resolve()))
    return item


def _folder_items(spec: ImageFolder, base: Path, prefix: str) -> list[dict[str, Any]]:
    import csv
    import json

    folder, captions = (base / spec.folder).resolve(), (base / spec.captions).resolve()
    if not captions.is_file():
        raise ConfigError(f"{prefix}.captions", spec.captions, "an existing CSV or JSONL file",
                          f"no file at {captions}")
    if captions.suffix == ".jsonl":
        records = [json.loads(line) for line in captions.read_text().splitlines() if line.strip()]
    else:
        with open(captions, newline="") as f:
            records = list(csv.DictReader(f))
    items = []
    for n, rec in enumerate(records):
        if not rec.get("file"):
            raise ConfigError(f"{prefix}.captions[{n}].file", rec.get("file"), "an image file name")
        attribute = rec.get("attribute") or spec.attribute
        if not attribute:
            raise ConfigError(f"{prefix}.attribute", None, "an attribute name",
                              "give the folder an `attribute` or the captions file an attribute column")
        items.append({"id": rec.get("id") or Path(rec["file"]).stem, "attribute": attribute,
                      "prompt": rec.get("caption", ""), "target_prompt": rec.get("target_caption", ""),
                      "image": str(folder / rec["file"])})
    return items
