"""MetricsConfig: the `metrics:` section of a run config, as frozen dataclasses.

`MetricsConfig.from_dict` is the schema check: unknown keys and wrong types raise ConfigError
naming the dotted key (e.g. `metrics.fid.batch_size`).
"""
from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Union, get_args, get_origin, get_type_hints

from harness.errors import ConfigError
from metrics.clip import TABLE_I_PROMPTS


@dataclass(frozen=True)
class FIDConfig:
    enabled: bool = True
    backbone: str = "inception"  # a name in metrics.backbones: inception | random-test | clip | registered ones
    weights: str | None = None  # local weights file (inception); never downloaded
    reference: Literal["originals", "folder"] = "originals"  # folder: images in reference_dir
    reference_dir: str | None = None  # the reference folder when reference is "folder"
    batch_size: int = 32
    internal_dtype: Literal["float32", "float64"] = "float32"  # inside the inception network
    seed: int = 0  # random-test backbone only
    feature_dim: int = 16  # random-test backbone only
    kid: bool = False
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # reduced to min(n_eval, n_ref) with a warning when larger


@dataclass(frozen=True)
class ClipConfig:
    enabled: bool = True
    backend: Literal["open_clip", "transformers", "registered"] = "open_clip"
    model: str = "ViT-B-32"  # open_clip name | transformers directory | registered name
    pretrained: str | None = None  # open_clip: local checkpoint file
    model_config: str | None = None  # open_clip: local model-config json (file stem = model)
    random_weights: bool = False  # tests only; labelled in provenance
    batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class LPIPSConfig:
    enabled: bool = True
    net: Literal["alex", "vgg", "squeeze"] = "alex"
    random_backbone: bool = False  # tests only: lpips pnet_rand=True, labelled in provenance
    seed: int = 0
    batch_size: int = 16


@dataclass(frozen=True)
class DisentanglementConfig:
    enabled: bool = False  # needs metrics.clip; zero-shot attribute scores on originals and edits
    prompts: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(TABLE_I_PROMPTS))
    logit_scale: float = 100.0
    repeat_column: str = "seed"  # rows column that identifies a repetition
    signed: bool = False
    batch_size: int = 32


@dataclass(frozen=True)
class OracleConfig:
    enabled: bool = True  # runs only for attributes with a (factor, value) target: the embedded world


@dataclass(frozen=True)
class MetricsConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    fid: FIDConfig = field(default_factory=FIDConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    disentanglement: DisentanglementConfig = field(default_factory=DisentanglementConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, prefix: str = "metrics") -> MetricsConfig:
        """Build from the parsed `metrics:` mapping; missing keys keep their defaults."""
        return _build(cls, data or {}, prefix)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, data, "a mapping")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in hints:
            raise ConfigError(f"{prefix}.{key}", data[key], names, "unknown key")
    kwargs = {k: _coerce(f"{prefix}.{k}", v, hints[k]) for k, v in data.items()}
    obj = cls(**kwargs)
    for f in dataclasses.fields(cls):  # positive sizes: a zero batch would loop forever
        if f.name in ("batch_size", "kid_subsets", "kid_subset_size", "feature_dim") and getattr(obj, f.name) < 1:
            raise ConfigError(f"{prefix}.{f.name}", getattr(obj, f.name), "an integer >= 1")
    return obj


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, value, [str(a) for a in args])
        return value
    if origin is dict:  # only dict[str, tuple[str, str]] (attribute prompts) is used
        ok = isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(s, str) for s in v)
            for k, v in value.items())
        if not ok:
            raise ConfigError(key, value, "a mapping attribute -> [positive prompt, negative prompt]")
        return {k: tuple(v) for k, v in value.items()}
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(key, value, f"a value of type {getattr(tp, '__name__', tp)}")
