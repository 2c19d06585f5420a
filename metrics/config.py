"""MetricsConfig: the `metrics:` section of a run config, as frozen dataclasses.

`MetricsConfig.from_dict` is the schema check (harness.schema.from_dict, as for the rest of a run config):
unknown keys and wrong types raise ConfigError naming the dotted key (e.g. `metrics.fid.batch_size`);
each section's `validate` refuses sizes below 1.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from harness.errors import ConfigError
from harness import schema
from metrics.clip import TABLE_I_PROMPTS


def _require_positive(obj: Any, prefix: str, *names: str) -> None:
    """Positive sizes: a zero batch would loop forever."""
    for name in names:
        value = getattr(obj, name)
        if value < 1:
            raise ConfigError(f"{prefix}.{name}" if prefix else name, value, "an integer >= 1")


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

    def validate(self, prefix: str) -> None:
        _require_positive(self, prefix, "batch_size", "kid_subsets", "kid_subset_size", "feature_dim")


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

    def validate(self, prefix: str) -> None:
        _require_positive(self, prefix, "batch_size")


@dataclass(frozen=True)
class LPIPSConfig:
    enabled: bool = True
    backbone: Literal["lpips", "clip-features"] = "lpips"
    """lpips: the lpips package with `net` (needs torchvision's ImageNet weights); clip-features: the same
    distance formula, uniform weights, on the metrics.clip model's vision hidden states (embedded, labelled)."""
    net: Literal["alex", "vgg", "squeeze"] = "alex"
    random_backbone: bool = False  # tests only: lpips pnet_rand=True, labelled in provenance
    seed: int = 0
    batch_size: int = 16

    def validate(self, prefix: str) -> None:
        _require_positive(self, prefix, "batch_size")


@dataclass(frozen=True)
class DisentanglementConfig:
    enabled: bool = False  # needs metrics.clip; zero-shot attribute scores on originals and edits
    prompts: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(TABLE_I_PROMPTS))
    logit_scale: float = 100.0
    repeat_column: str = "seed"  # rows column that identifies a repetition
    signed: bool = False
    batch_size: int = 32

    def validate(self, prefix: str) -> None:
        _require_positive(self, prefix, "batch_size")


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
        """Build from the parsed `metrics:` mapping; missing keys keep their defaults (harness.schema.from_dict)."""
        return schema.from_dict(cls, data or {}, prefix)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def needs_clip_model(self) -> bool:
        """Whether any enabled metric uses the metrics.clip model (CLIP score, zero-shot scores, FID
        features with backbone clip, LPIPS with backbone clip-features)."""
        return (self.clip.enabled or self.disentanglement.enabled
                or (self.fid.enabled and self.fid.backbone == "clip")
                or (self.lpips.enabled and self.lpips.backbone == "clip-features"))
