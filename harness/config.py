"""Run configuration: YAML files validated into typed objects, with `key=value` overrides.

Load order: dataclass defaults < YAML file < command-line overrides. The fully resolved
config is saved beside every run's results (see harness.store).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.errors import ConfigError
from harness.schema import from_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


@dataclass(frozen=True)
class SamplerConfig:
    """The DDIM trajectory every method shares (both papers use DDIM)."""

    num_steps: int = 10
    eta: float = 0.0
    guidance_scale: float = 7.5
    """Classifier-free guidance scale for text-conditional models; ignored by unconditional ones."""

    def validate(self, prefix: str) -> None:
        if self.num_steps < 1:
            raise ConfigError(f"{prefix}.num_steps", self.num_steps, "an integer >= 1")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"{prefix}.eta", self.eta, "a number in [0, 1]")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ConfigError(f"{prefix}.guidance_scale", self.guidance_scale, "a finite number >= 0")


@dataclass(frozen=True)
class MethodEntry:
    """One method in the grid. The same method may appear twice with different options and labels."""

    name: str
    label: str = ""
    """Row name in results and tables; defaults to `name`."""
    options: dict[str, Any] = field(default_factory=dict)
    strengths: tuple[float, ...] | None = None
    """Overrides the run's `strengths` for this method (edit scales differ between methods)."""
    models: tuple[str, ...] | None = None
    """Restrict this method to these of the run's models (default: every model of a family it supports)."""

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class ExecutorConfig:
    kind: Literal["ray", "inprocess"] = "ray"
    num_workers: int | None = None
    """Actors to start; default: one per GPU, or one per CPU when there is no GPU."""
    address: str | None = None
    """Join an existing Ray cluster (e.g. "auto" or "head:6379"); default starts a local instance."""
    batch_size: int = 2
    """Units denoised together. Part of the run's identity: batches are fixed before scheduling."""
    gpus_per_worker: float = 1.0
    max_retries: int = 1
    """Retries of a batch whose method raised, before its units are recorded as failed."""
    unit_timeout_s: float | None = None
    """Per-unit time limit (a batch gets this times its size); a unit past it is recorded as failed."""
    threads: int = 1
    """CPU threads per worker. Fixed, not derived from the machine: CPU kernels reduce in a
    thread-count-dependent order, so images are byte-identical across executors only at equal threads."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """auto: fp32 on CPU, fp16 on CUDA."""
    jobs_per_worker: int = 2
    """Ray: batches sent to a worker at once while enough remain for every worker. The second waits
    in the worker and starts while the first one's images are written and its result travels back."""
    compile: bool = False
    """torch.compile each model's UNet (and VAE decoder) once per worker; compiled graphs are cached on
    disk (HARNESS_COMPILE_CACHE, default ~/.cache/harness/inductor) so later workers and runs reuse them."""

    def validate(self, prefix: str) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"{prefix}.batch_size", self.batch_size, "an integer >= 1")
        if self.num_workers is not None and self.num_workers < 1:
            raise ConfigError(f"{prefix}.num_workers", self.num_workers, "an integer >= 1 or null")
        if self.threads < 1:
            raise ConfigError(f"{prefix}.threads", self.threads, "an integer >= 1")
        if self.max_retries < 0:
            raise ConfigError(f"{prefix}.max_retries", self.max_retries, "an integer >= 0")
        if self.jobs_per_worker < 1:
            raise ConfigError(f"{prefix}.jobs_per_worker", self.jobs_per_worker, "an integer >= 1")


@dataclass(frozen=True)
class RunConfig:
    run_id: str
    models: tuple[str, ...]
    suites: tuple[str, ...]
    methods: tuple[MethodEntry, ...]
    seeds: tuple[int, ...] = (0,)
    """Sample indices; `seeds: 4` in YAML means [0, 1, 2, 3]."""
    strengths: tuple[float, ...] = (1.0,)
    items: tuple[str, ...] | None = None
    """Restrict each suite to these item ids (default: all items)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    output_dir: str = "results"
    metrics: dict[str, Any] = field(default_factory=dict)
    """Metrics-stage settings, validated by the metrics package."""

    def validate(self, prefix: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.run_id):
            raise ConfigError("run_id", self.run_id, "letters, digits, '.', '_' and '-' (max 100)")
        for name in ("models", "suites", "methods", "seeds", "strengths"):
            if not getattr(self, name):
                raise ConfigError(name, list(getattr(self, name)), "a non-empty list",
                                  "an empty list would make a run of 0 units")
        for i, s in enumerate(self.strengths):
            if not math.isfinite(s):
                raise ConfigError(f"strengths[{i}]", s, "finite numbers", "NaN and inf are not edit strengths")
        for m in self.methods:
            if m.strengths is not None and not m.strengths:
                raise ConfigError(f"methods[{m.key}].strengths", [], "a non-empty list, or no key for the run's "
                                  "strengths", "an empty list would give this method 0 units")
            for s in m.strengths or ():
                if not math.isfinite(s):
                    raise ConfigError(f"methods[{m.key}].strengths", s, "finite numbers")
        labels = [m.key for m in self.methods]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ConfigError("methods", sorted(dup)[0], "unique labels", "give repeated methods a distinct `label`")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", list(self.seeds), "distinct integers")
        out = Path(self.output_dir).expanduser()
        if not out.is_absolute() and not Path(os.path.normpath(REPO_ROOT / out)).is_relative_to(REPO_ROOT):
            raise ConfigError("output_dir", self.output_dir, f"a path inside the project ({REPO_ROOT}) or an "
                              "absolute path", "relative paths are resolved from the project root")

    @property
    def run_dir(self) -> Path:
        """Relative output directories are resolved from the project root, never from the current directory,
        so the same config names the same run wherever the command is started."""
        out = Path(self.output_dir).expanduser()
        return Path(os.path.normpath(out if out.is_absolute() else REPO_ROOT / out)) / self.run_id


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """YAML conveniences: scalar lists, `seeds: N`, `model:` for `models:`, method names as strings."""
    raw = dict(raw)
    for single, plural in (("model", "models"), ("suite", "suites")):
        if single in raw:
            if plural in raw:
                raise ConfigError(single, raw[single], f"either {single} or {plural}, not both")
            raw[plural] = raw.pop(single)
    for key in ("models", "suites", "strengths"):
        if key in raw and not isinstance(raw[key], (list, tuple)):
            raw[key] = [raw[key]]
    seeds = raw.get("seeds")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError("seeds", seeds, "an integer >= 1 or a list of integers")
        raw["seeds"] = list(range(seeds))
    if isinstance(raw.get("methods"), list):
        raw["methods"] = [{"name": m} if isinstance(m, str) else m for m in raw["methods"]]
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(text, None, "key=value", "overrides look like sampler.num_steps=20")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys; `methods.<label>.options.k=4` addresses a method by its label."""
    raw = _normalise(raw)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                matches = [m for m in node if isinstance(m, dict) and (m.get("label") or m.get("name")) == part]
                if not matches:
                    labels = [str(m.get("label") or m.get("name")) for m in node if isinstance(m, dict)]
                    raise ConfigError(".".join(path[: i + 1]), part, labels, "name an entry by its label")
                node = matches[0]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(".".join(path[: i + 1]), node, "a mapping", "cannot set a sub-key of a scalar")
        node[path[-1]] = value
    return _normalise(raw)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "an existing YAML file", "check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("config", str(path), "valid YAML", f"malformed YAML at{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", str(path), "a YAML mapping at the top level")
    return data


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    raw = apply_overrides(load_yaml(path), overrides or [])
    raw.setdefault("run_id", Path(path).stem)
    return from_dict(RunConfig, raw)


DERIVED_KEYS = ("model_fingerprints", "code_fingerprints")
"""Written into a run's config.yaml from the models and the methods' code; recomputed, never read, so that
file loads back as a config."""


def run_config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    raw = {k: v for k, v in raw.items() if k not in DERIVED_KEYS}
    return from_dict(RunConfig, apply_overrides(raw, overrides or []))
