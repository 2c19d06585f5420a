"""MetricsConfig schema checks and the provenance-checked table builder."""
from __future__ import annotations

import pandas as pd
import pytest

from harness.errors import ConfigError
from metrics.config import MetricsConfig
from metrics.provenance import ProvenanceMismatchError, build_table


def test_from_dict_defaults_and_overrides() -> None:
    cfg = MetricsConfig.from_dict({"fid": {"backbone": "random-test", "batch_size": 7},
                                   "disentanglement": {"prompts": {"smile": ["A smiling person", "A person"]}}})
    assert cfg.fid.backbone == "random-test" and cfg.fid.batch_size == 7 and cfg.fid.reference == "originals"
    assert cfg.disentanglement.prompts == {"smile": ("A smiling person", "A person")}
    assert MetricsConfig.from_dict(cfg.to_dict()) == cfg
    assert MetricsConfig.from_dict(None) == MetricsConfig()
    with pytest.raises(AttributeError):
        cfg.device = "cpu"  # type: ignore[misc]  # frozen


@pytest.mark.parametrize("data, key", [
    ({"fid": {"weigths": "x"}}, "metrics.fid.weigths"),
    ({"clipp": {}}, "metrics.clipp"),
    ({"fid": {"batch_size": "8"}}, "metrics.fid.batch_size"),
    ({"fid": {"batch_size": True}}, "metrics.fid.batch_size"),
    ({"fid": {"batch_size": 0}}, "metrics.fid.batch_size"),
    ({"lpips": {"random_backbone": 1}}, "metrics.lpips.random_backbone"),
    ({"lpips": {"net": "resnet"}}, "metrics.lpips.net"),
    ({"fid": {"reference": "cifar"}}, "metrics.fid.reference"),
    ({"clip": "ViT-B-32"}, "metrics.clip"),
    ({"disentanglement": {"prompts": {"smile": ["only one"]}}}, "metrics.disentanglement.prompts.smile"),
])
def test_from_dict_rejects_bad_keys_and_types(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        MetricsConfig.from_dict(data)
    assert err.value.key == key


def _agg(method: str, attr: str, value: float, weights: str = "w1", n: int = 10) -> dict:
    return dict(method=method, attribute=attr, metric="fid", value=value, n=n, implementation="i",
                library_version="1", backbone="inception", weights_sha256=weights, resize="r", reference_hash="h")


def test_build_table_pivots_and_refuses_mixed_provenance() -> None:
    ok = pd.DataFrame([_agg("a", "old", 1.0), _agg("b", "old", 2.0), _agg("a", "young", 3.0, weights="w2")])
    table = build_table(ok, "fid")
    assert table.loc["b", "old"] == 2.0 and table.loc["a", "young"] == 3.0  # different columns may differ
    mixed = pd.DataFrame([_agg("a", "old", 1.0), _agg("b", "old", 2.0, weights="w2")])
    with pytest.raises(ProvenanceMismatchError, match="weights_sha256"):
        build_table(mixed, "fid")
    unequal_n = pd.DataFrame([_agg("a", "old", 1.0), _agg("b", "old", 2.0, n=5)])
    build_table(unequal_n, "fid")
    with pytest.raises(ProvenanceMismatchError, match="n differs"):
        build_table(unequal_n, "fid", require_same_n=True)
