"""The metric registry: every metric the stage computes is declared once, by the module that computes it.

A metric module registers one stage function with the metrics it produces:

    @register_metrics("lpips", MetricSpec("lpips", "per_image", "min"))
    def lpips_stage(ctx: StageContext) -> StageOutput: ...

Each `MetricSpec` says the name (or, with `family=True`, a name prefix such as "oracle_changed:" for one
metric per factor), whether values exist per image or only per group, and which direction is better.
The stage (`metrics.stage.compute_metrics`) loops over the registered modules; the reports read the
directions and what is a leaderboard column from here, never from name patterns. Adding a metric is
one module in `metrics/`: modules are discovered by importing the package's public modules.

This module imports no model code, so reading the declarations costs only the imports of the metric modules.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Literal

Kind = Literal["per_image", "group"]
Better = Literal["max", "min"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    better: Better | None
    """"max" (higher is better), "min" (lower is better), or None (no direction: a rate, a matrix cell)."""
    family: bool = False
    """`name` is a prefix: the metric exists once per suffix (e.g. oracle_changed:<factor>)."""
    leaderboard: bool = True
    """A leaderboard column of its own; False for matrix cells and raw scores the HTML report draws."""
    clamp_mean: bool = False
    """An aggregate of per-image values is max(mean, 0) (torchmetrics' CLIP score convention)."""

    def matches(self, metric: str) -> bool:
        return metric.startswith(self.name) if self.family else metric == self.name


StageFn = Callable[[Any], Any]
"""(metrics._stage.StageContext) -> metrics._stage.StageOutput; typed loosely here to keep this module light."""


@dataclass(frozen=True)
class MetricModule:
    name: str
    specs: tuple[MetricSpec, ...]
    compute: StageFn
    order: int
    """Position in the stage (and in its output tables): lower first; ties by name."""


_MODULES: dict[str, MetricModule] = {}
_DISCOVERED = False


def register_metrics(name: str, *specs: MetricSpec, order: int = 50) -> Callable[[StageFn], StageFn]:
    """Register `compute(ctx)` as the stage step that produces `specs`; a metric name may be declared once."""
    def decorator(fn: StageFn) -> StageFn:
        if name in _MODULES and _MODULES[name].compute is not fn:
            raise ValueError(f"metric module {name!r} is already registered")
        for s in specs:
            for other in _MODULES.values():
                if other.name != name and any(o.matches(s.name) or s.matches(o.name) for o in other.specs):
                    raise ValueError(f"metric {s.name!r} of {name!r} is already declared by {other.name!r}")
        _MODULES[name] = MetricModule(name, tuple(specs), fn, order)
        return fn

    return decorator


def discover() -> None:
    """Import every public module of the `metrics` package once, so each registers its metrics."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import metrics

    for info in pkgutil.iter_modules(metrics.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"metrics.{info.name}")
    _DISCOVERED = True


def metric_modules() -> list[MetricModule]:
    discover()
    return sorted(_MODULES.values(), key=lambda m: (m.order, m.name))


def metric_spec(metric: str) -> MetricSpec | None:
    """The declaration of `metric` (an exact name, or a member of a declared family), or None."""
    discover()
    exact = [s for m in _MODULES.values() for s in m.specs if not s.family and s.name == metric]
    if exact:
        return exact[0]
    fams = [s for m in _MODULES.values() for s in m.specs if s.family and s.matches(metric)]
    return max(fams, key=lambda s: len(s.name)) if fams else None


def better(metric: str) -> Better | None:
    """'max', 'min', or None for undeclared metrics and metrics without a direction."""
    spec = metric_spec(metric)
    return spec.better if spec else None
