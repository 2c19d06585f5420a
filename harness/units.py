"""Work units and batches: the run's grid, fixed before any scheduling.

One unit = (method, model, suite item, attribute, strength, seed). Its key and its noise seed come
from stable hashes of those fields, never from a global RNG stream, and batches are formed from the
sorted unit list before work is handed out, so results never depend on how many workers ran them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness.config import MethodEntry, RunConfig
from harness.errors import ConfigError
from harness.hashing import stable_hash, stable_seed
from harness.schema import from_dict, to_dict
from harness.suites import Suite


@dataclass(frozen=True)
class WorkUnit:
    method: str
    """Method label (a run may hold one method twice with different options)."""
    model: str
    suite: str
    item_id: str
    attribute: str
    strength: float
    seed: int

    @property
    def key(self) -> str:
        return stable_hash("unit", self.method, self.model, self.suite, self.item_id, self.attribute,
                           self.strength, self.seed)

    @property
    def noise_seed(self) -> int:
        # Independent of the method and strength: every method edits the same starting sample.
        return stable_seed("noise", self.model, self.suite, self.item_id, self.seed)


@dataclass(frozen=True)
class PrepareJob:
    """One-off preparation of a method on a (model, suite): its result is cached as an artifact."""

    method: str
    model: str
    suite: str
    key: str
    seed: int


@dataclass(frozen=True)
class Batch:
    method: str
    model: str
    suite: str
    prepare_key: str
    units: tuple[WorkUnit, ...]

    @property
    def key(self) -> str:
        return stable_hash("batch", [u.key for u in self.units])


@dataclass(frozen=True)
class Retry:
    """The failed units of a finished batch, redone by `harness run --retry-failed`.

    The whole batch is computed again, since a unit's bytes depend on its batch-mates (CPU kernels are not
    batch-size invariant), so a retried unit gets the bytes an undisturbed run would have; only the
    `unit_keys`' images and rows are written, the batch's other units stay as they are."""

    batch: Batch
    unit_keys: frozenset[str]

    @property
    def units(self) -> tuple[WorkUnit, ...]:
        return self.batch.units  # what is computed, so what a per-unit time limit counts

    @property
    def key(self) -> str:
        return self.batch.key


@dataclass(frozen=True)
class ResolvedMethod:
    entry: MethodEntry
    cls: Any
    options: Any

    @property
    def label(self) -> str:
        return self.entry.key

    @property
    def options_dict(self) -> dict[str, Any]:
        return to_dict(self.options)

    @property
    def code(self) -> dict[str, str]:
        """{source file: hash} of the code this method runs (harness.code_fingerprint)."""
        from harness.code_fingerprint import method_code

        return method_code(self.cls)


def resolve_methods(config: RunConfig) -> list[ResolvedMethod]:
    from harness.method_api import discover_methods

    registry = discover_methods()
    out = []
    for entry in config.methods:
        cls = registry.get(entry.name)
        options: Any = from_dict(cls.Options, entry.options, prefix=f"methods[{entry.key}].options")
        for key, value in _numbers(to_dict(options), f"methods[{entry.key}].options"):
            if not math.isfinite(value):
                raise ConfigError(key, value, "a finite number", "NaN and inf are not option values")
        out.append(ResolvedMethod(entry, cls, options))
    return out


def _numbers(data: Any, prefix: str) -> list[tuple[str, float]]:
    """(dotted key, value) of every float in nested options, so that none is NaN or inf."""
    if isinstance(data, dict):
        return [kv for k, v in data.items() for kv in _numbers(v, f"{prefix}.{k}")]
    if isinstance(data, (list, tuple)):
        return [kv for i, v in enumerate(data) for kv in _numbers(v, f"{prefix}[{i}]")]
    return [(prefix, data)] if isinstance(data, float) else []


def prepare_key(method: ResolvedMethod, model_fingerprint: str, suite: Suite, config: RunConfig) -> str:
    # The code too: what an edited `prepare` learns must not be served from the old code's artifact.
    return stable_hash("prepare", method.cls.name, method.cls.version, method.code, method.options_dict,
                       model_fingerprint, suite.fingerprint, to_dict(config.sampler))


def expand_grid(config: RunConfig, methods: list[ResolvedMethod], suites: dict[str, Suite],
                families: dict[str, str], fingerprints: dict[str, str]) -> tuple[list[PrepareJob], list[Batch]]:
    """All prepare jobs and unit batches of the run; methods skip model families they are not defined for."""
    prepares: list[PrepareJob] = []
    batches: list[Batch] = []
    for method in methods:
        strengths = method.entry.strengths or config.strengths
        for m in method.entry.models or ():
            if m not in config.models:
                raise ConfigError(f"methods[{method.label}].models", m, config.models, "name one of the run's models")
        compatible = [m for m in (method.entry.models or config.models) if families[m] in method.cls.families]
        if not compatible:
            raise ConfigError(f"methods[{method.label}]", method.entry.name, method.cls.families,
                              f"this method needs a model of family {'/'.join(method.cls.families)}; "
                              f"the run's models are {', '.join(f'{m} ({families[m]})' for m in config.models)}")
        for model in compatible:
            for suite_name, suite in suites.items():
                pkey = prepare_key(method, fingerprints[model], suite, config)
                if method.cls.needs_prepare:
                    # Seeded by the registered method, like `pkey`, never by the label: a label is a display
                    # name, and variants of one method (supervised vs supervised-projected) must learn from the
                    # same samples, or their comparison measures two sample draws as much as the option.
                    prepares.append(PrepareJob(method.label, model, suite_name, pkey,
                                               stable_seed("prepare", method.cls.name, model, suite_name)))
                items = suite.items  # already restricted to the run's `items`
                units = sorted(
                    (WorkUnit(method.label, model, suite_name, it.id, it.attribute, float(s), seed)
                     for it in items for s in strengths for seed in config.seeds),
                    key=lambda u: u.key,
                )
                size = config.executor.batch_size
                for start in range(0, len(units), size):
                    batches.append(Batch(method.label, model, suite_name, pkey, tuple(units[start:start + size])))
    return prepares, batches

