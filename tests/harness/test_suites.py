"""Suite fingerprints (part of prepare cache keys) follow image content, not where the checkout lies."""
from __future__ import annotations

import shutil
from pathlib import Path

from harness.suites import load_suite

SUITES = Path(__file__).resolve().parents[2] / "configs" / "suites"


def copy_suite(dest: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copy(SUITES / "world_real.yaml", dest / "world_real.yaml")
    shutil.copytree(SUITES / "world_real", dest / "world_real")
    return dest / "world_real.yaml"


def test_moved_suite_keeps_its_fingerprint_and_new_image_bytes_change_it(tmp_path) -> None:
    a, b = load_suite(str(copy_suite(tmp_path / "a"))), load_suite(str(copy_suite(tmp_path / "b")))
    assert a.items[0].image != b.items[0].image  # different absolute paths...
    assert a.fingerprint == b.fingerprint == load_suite("world_real").fingerprint  # ...same content
    first = Path(b.items[0].image)
    second = Path(b.items[1].image)
    first.write_bytes(second.read_bytes())  # same file name, other picture
    assert load_suite(str(tmp_path / "b" / "world_real.yaml")).fingerprint != a.fingerprint


def test_fingerprint_changes_with_a_prompt(tmp_path) -> None:
    path = copy_suite(tmp_path / "c")
    before = load_suite(str(path)).fingerprint
    captions = path.parent / "world_real" / "captions.csv"
    lines = captions.read_text().splitlines()
    lines[1] = lines[1].replace("circle", "disc").replace("square", "box").replace("triangle", "wedge")
    captions.write_text("\n".join(lines) + "\n")
    assert load_suite(str(path)).fingerprint != before


def test_faces_suite_items_are_full_world_captions_that_differ_only_in_the_target() -> None:
    """faces-text2img was trained on full captions only and ignores short ones (measured, see the suite files), so
    every text item must name all eight factors, and its target prompt must change exactly the attribute's factor
    to the attribute's value (the source not already at it)."""
    from harness.world.registry import get_world

    world = get_world("faces")
    for name in ("faces_hspace", "faces_svd"):
        suite = load_suite(name)
        assert suite.world == "faces"
        for item in suite.items:
            source, target = world.parse_caption(item.prompt), world.parse_caption(item.target_prompt)
            assert set(source) == set(world.factor_names), (name, item.id, "source names every factor")
            assert set(target) == set(world.factor_names), (name, item.id, "target names every factor")
            attribute = suite.attributes[item.attribute]
            changed = {k for k in source if source[k] != target[k]}
            assert changed == {attribute.factor}, (name, item.id, changed)
            assert target[attribute.factor] == attribute.value != source[attribute.factor], (name, item.id)
