from __future__ import annotations

import pytest

import dataclasses
import math

from harness.errors import HarnessError
from harness.store import ROW_COLUMNS, RunStore, UnitRow


def row(unit_key: str, **changes) -> UnitRow:
    """A complete row with made-up identity fields (what the store writes does not depend on them)."""
    fields = dict(run_id="r", unit_key=unit_key, batch_key="b", method="m", method_name="m", method_version=1,
                  options="{}", model="tiny", suite="s", item_id="i", attribute="a", prompt="p",
                  target_prompt="q", strength=1.0, seed=0, noise_seed="7", original_path=f"{unit_key}.orig.png",
                  edited_path=f"{unit_key}.edit.png", prepare_seconds=0.0, prepare_key=None, device="cpu",
                  worker="w0")
    return UnitRow(**{**fields, **changes})


def test_changed_config_is_refused_with_a_diff(tmp_path) -> None:
    store = RunStore(tmp_path / "r")
    store.initialise({"a": 1, "b": 2})
    store.initialise({"a": 1, "b": 2})  # same config: fine (resume)
    with pytest.raises(HarnessError) as err:
        store.initialise({"a": 1, "b": 3})
    assert "-b: 2" in str(err.value) and "+b: 3" in str(err.value)


def test_damaged_config_and_manifest_are_one_clear_error(tmp_path) -> None:
    store = RunStore(tmp_path / "r")
    store.initialise({"a": 1})
    store.manifest_path.write_text("{not json")
    with pytest.raises(HarnessError, match="manifest.json is damaged.*restore it"):
        store.manifest()
    store.config_path.write_text("- just\n- a list\n")
    with pytest.raises(HarnessError, match="config.yaml is damaged"):
        store.read_config()
    with pytest.raises(HarnessError, match="config.yaml is damaged"):
        store.initialise({"a": 1})


def test_amendable_keys_are_rewritten_and_recorded(tmp_path) -> None:
    store = RunStore(tmp_path / "r")
    store.initialise({"a": 1, "code": {"m.py": "old", "h.py": "same"}})
    with pytest.raises(HarnessError, match="code"):
        store.initialise({"a": 1, "code": {"m.py": "new", "h.py": "same"}})
    store.initialise({"a": 1, "code": {"m.py": "new", "h.py": "same"}}, amendable=("code",))
    assert "new" in store.config_path.read_text()
    assert store.manifest()["amendments"][0]["changed"] == {"code": {"m.py": ["old", "new"]}}
    with pytest.raises(HarnessError, match="different config"):  # other keys never
        store.initialise({"a": 2, "code": {"m.py": "new", "h.py": "same"}}, amendable=("code",))


def test_second_lock_is_refused(tmp_path) -> None:
    store = RunStore(tmp_path / "r")
    with store.lock():
        with pytest.raises(HarnessError, match="in use"):
            with RunStore(tmp_path / "r").lock():
                pass
    with store.lock():  # released
        pass


def test_truncated_shard_is_detected_read_only_and_set_aside_by_repair(tmp_path) -> None:
    store = RunStore(tmp_path / "r")
    store.write_shard("good", [row("u1", status="done")])
    store.write_shard("bad", [row("u2", status="done")])
    data = store.shard_path("bad").read_bytes()
    store.shard_path("bad").write_bytes(data[: len(data) // 2])
    assert store.done_batches() == {"good"}
    assert list(store.read_rows()["unit_key"]) == ["u1"]
    assert store.corrupt_shards() == [store.shard_path("bad")]
    assert store.shard_path("bad").read_bytes() == data[: len(data) // 2]  # reading changed nothing
    assert store.repair() == [store.shard_dir / "bad.corrupt"]  # what `harness run` does, and logs
    assert not store.shard_path("bad").exists() and store.corrupt_shards() == []


def test_atomic_writes_leave_no_temporary_files(tmp_path) -> None:
    import numpy as np

    store = RunStore(tmp_path / "r")
    store.write_image("images/x.png", np.zeros((4, 4, 3), dtype=np.uint8))
    assert [p.name for p in (tmp_path / "r" / "images").iterdir()] == ["x.png"]


def test_unknown_row_keys_raise_instead_of_being_dropped(tmp_path) -> None:
    # Issue 17.13: write_shard took dicts and kept only the known columns, so a misspelt key vanished.
    store = RunStore(tmp_path / "r")
    with pytest.raises(TypeError, match="edit_second"):
        dataclasses.replace(row("u1"), edit_second=1.0)
    with pytest.raises(ValueError, match="unknown row columns"):
        UnitRow.from_record({**row("u1").as_record(), "edit_second": 1.0})
    with pytest.raises(TypeError, match="UnitRow"):
        store.write_shard("b", [row("u1").as_record()])  # type: ignore[list-item]  # the point of the test
    with pytest.raises(ValueError, match="status"):
        row("u1", status="ok")
    assert not store.shard_dir.exists() or not list(store.shard_dir.iterdir())


def test_rows_round_trip_through_a_shard_and_a_retry_replaces_only_its_units(tmp_path) -> None:
    store = RunStore(tmp_path / "r")
    store.write_shard("b", [row("u1"), row("u2", error="boom")])
    stored = store.read_rows()
    assert tuple(stored.columns) == ROW_COLUMNS
    assert list(stored["status"]) == ["failed", "failed"] and math.isnan(stored["edit_seconds"][0])
    store.update_shard("b", [row("u2", status="done", edit_seconds=2.5)])
    again = store.read_rows()
    assert list(again["status"]) == ["failed", "done"] and again["error"].isna().all()
    assert again["edit_seconds"][1] == 2.5
    with pytest.raises(ValueError, match="u3"):
        store.update_shard("b", [row("u3")])
