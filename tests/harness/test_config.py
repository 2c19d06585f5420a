"""Bad configs stop before any work: one line naming key, value and what is allowed; exit 2; nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import load_run_config, run_config_from_dict
from harness.errors import ConfigError
from tests.conftest import tiny_run


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


BAD = {
    "unknown top-level key": ({"numsteps": 3}, "numsteps"),
    "unknown sampler key": ({"sampler": {"num_step": 3}}, "sampler.num_step"),
    "wrong type": ({"sampler": {"num_steps": "many"}}, "sampler.num_steps"),
    "unknown method": ({"methods": [{"name": "pcaa"}]}, "methods"),
    "unknown model": ({"models": ["no-such-model"]}, "models"),
    "unknown suite": ({"suites": ["no-such-suite"]}, "suites"),
    "unknown item": ({"items": ["smiel"]}, "items[0]"),
    "unknown method option": ({"methods": [{"name": "random-direction", "options": {"scal": 1}}]},
                              "methods[random-direction].options.scal"),
    "nan strength": ({"strengths": [float("nan")]}, "strengths[0]"),
    "bad executor kind": ({"executor": {"kind": "slurm"}}, "executor.kind"),
    # A grid of 0 units is a mistake, not a successful run.
    "empty seeds": ({"seeds": []}, "seeds"),
    "empty strengths": ({"strengths": []}, "strengths"),
    "empty method strengths": ({"methods": [{"name": "random-direction", "strengths": []}]},
                               "methods[random-direction].strengths"),
    # What would fail every unit is refused before any work.
    "nan method option": ({"methods": [{"name": "random-direction", "options": {"scale": float("nan")}}]},
                          "methods[random-direction].options.scale"),
    "inf method option": ({"methods": [{"name": "random-direction", "options": {"scale": float("inf")}}]},
                          "methods[random-direction].options.scale"),
    "steps beyond the scheduler": ({"sampler": {"num_steps": 1000}}, "sampler.num_steps"),
    "output_dir leaving the project": ({"output_dir": "../../x"}, "output_dir"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_exits_2_naming_the_key_and_writes_nothing(case, tmp_path, capsys) -> None:
    change, key = BAD[case]
    out = tmp_path / "out"
    path = write(tmp_path, tiny_run(out, **change))
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert key in err[0] and "allowed" in err[0], err[0]
    assert not out.exists()


def test_malformed_yaml_names_the_line(tmp_path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("run_id: x\nmodels: [tiny-sd\nsuites: [a]\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "malformed YAML" in err and "line" in err


def test_unknown_attribute_in_suite_file_is_named(tmp_path) -> None:
    from harness.suites import load_suite

    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "version": 1, "attributes": {"smile": {"positive": "a", "negative": "b"}},
                                     "items": [{"id": "x", "attribute": "smiel"}]}))
    with pytest.raises(ConfigError) as err:
        load_suite(str(suite))
    assert "items[0].attribute" in str(err.value) and "smiel" in str(err.value) and "smile" in str(err.value)


def test_overrides_and_conveniences(tmp_path) -> None:
    path = write(tmp_path, tiny_run(tmp_path))
    cfg = load_run_config(path, ["sampler.num_steps=7", "methods.random-direction.options.scale=2.5", "seeds=3"])
    assert cfg.sampler.num_steps == 7
    assert cfg.methods[1].options == {"scale": 2.5}
    assert cfg.seeds == (0, 1, 2)
    with pytest.raises(ConfigError, match="methods.nope"):
        load_run_config(path, ["methods.nope.options.scale=1"])


def test_method_family_mismatch_is_a_config_error(tmp_path) -> None:
    from harness.runner import plan

    cfg = run_config_from_dict(tiny_run(tmp_path, models=["tiny-unet"], methods=[{"name": "sd"}]))
    with pytest.raises(ConfigError, match="family"):
        plan(cfg)


def test_most_steps_the_scheduler_can_index_are_accepted(tmp_path) -> None:
    """1000 training timesteps with steps_offset 1: 999 DDIM steps index t <= 999, 1000 would index t = 1000."""
    from harness.models import max_sampling_steps, resolve_model
    from harness.runner import plan

    assert max_sampling_steps(resolve_model("tiny-unet")) == 999
    assert max_sampling_steps(resolve_model("world-ddpm")) == 999
    plan(run_config_from_dict(tiny_run(tmp_path, sampler={"num_steps": 999})))


def test_relative_output_dir_is_resolved_from_the_project_not_the_current_directory(tmp_path, monkeypatch) -> None:
    from harness.config import REPO_ROOT

    monkeypatch.chdir(tmp_path)
    cfg = run_config_from_dict(tiny_run(tmp_path, output_dir="results/sub"))
    assert cfg.run_dir == REPO_ROOT / "results" / "sub" / "t"
    absolute = run_config_from_dict(tiny_run(tmp_path, output_dir=str(tmp_path / "elsewhere")))
    assert absolute.run_dir == tmp_path / "elsewhere" / "t"


def test_every_shipped_run_config_loads_and_plans() -> None:
    """The run configs that need only the embedded checkpoints are valid as shipped: method names and options,
    models and suites resolve, and the plan has units for every method entry. (The paper configs and
    world_real.yaml need downloaded weights; tests/harness/test_paper_configs.py runs those with tiny models.)"""
    from harness.config import load_run_config
    from harness.runner import plan

    repo = Path(__file__).resolve().parents[2]
    # Every run config but those needing downloaded weights (and the model registry), so a new one is covered.
    needs_weights = {"models", "paper_svd_table1", "paper_hspace_table1", "world_real"}
    offline = sorted(p for p in (repo / "configs").glob("*.yaml") if p.stem not in needs_weights)
    assert {"quickstart", "faces_curves", "faces_targets"} <= {p.stem for p in offline}
    for path in offline:
        p = plan(load_run_config(path))
        assert p.num_units > 0, path.name
        labels = {m.label for m in p.methods}
        assert len(labels) == len(load_run_config(path).methods), path.name
