"""The method plug-in API: one small protocol, registered by name.

A method is one module in `methods/` with a class like:

    @register_method("my-method")
    class MyMethod(EditMethod):
        families = ("text",)                  # model families it is defined for
        Options = MyOptions                   # frozen dataclass; the config's `options:` are validated into it
        def prepare(self, backbone, ctx):     # optional, once per (model, suite): learn directions, train an MLP
            return {"direction": tensor}      # cached as an artifact keyed by a hash of its inputs; overriding
                                              # `prepare` is what makes the harness run it (needs_prepare)
        def edit(self, backbone, state, requests, sampler):
            return [EditOutput(original=..., edited=...) for r in requests]

A method runs on one batch in a plain Python process: it never imports ray, never writes files
and never picks a device (the backbone is already on one).

The API lives in `harness` (issue 17.12) so that the harness plans and runs work against its own types and
never imports the `methods` package for them; `methods.base` re-exports everything here, so a method
module's `from methods.base import ...` keeps working. The only place the harness touches the `methods`
package is `discover_methods`, which loads it by name as a plug-in package, like the entry points.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Sequence

import torch

from harness.config import SamplerConfig
from harness.diffusion.backbone import Backbone
from harness.registry import Registry
from harness.suites import Suite, SuiteItem

ENTRY_POINT_GROUP = "latent_edit_harness.methods"
BUILTIN_METHODS_PACKAGE = "methods"
"""The repository's own plug-in package: every public module in it is imported by `discover_methods`."""


@dataclass(frozen=True)
class NoOptions:
    pass


@dataclass(frozen=True)
class EditRequest:
    unit_key: str
    item: SuiteItem
    strength: float
    seed: int
    """Noise seed of the sample; shared by every method for the same (model, suite, item, seed)."""
    x_T: torch.Tensor | None = None
    """For real-image units: the DDIM inversion of the image, to start from instead of the seed's noise."""
    x_0: torch.Tensor | None = None
    """For real-image units: the image itself as a diffusion state (C, H, W) (VAE mean for latent models), the
    x_0 that `x_T` inverts. Image-to-image methods (SDEdit, DiffEdit) edit it rather than its reconstruction."""


@dataclass
class EditOutput:
    original: torch.Tensor
    """Unedited image, float (3, H, W) in [0, 1]."""
    edited: torch.Tensor
    """Edited image, float (3, H, W) in [0, 1]."""
    info: dict[str, Any] = field(default_factory=dict)
    """Scalar diagnostics stored in the unit's row (e.g. the chosen component)."""


@dataclass(frozen=True)
class PrepareContext:
    suite: Suite
    sampler: SamplerConfig
    seed: int
    """Seed of the one-off preparation (fixed per method, model and suite)."""


class EditMethod:
    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    families: ClassVar[tuple[str, ...]] = ("unconditional", "text")
    Options: ClassVar[type] = NoOptions
    needs_prepare: ClassVar[bool] = False
    """Derived, not declared: True exactly when the class overrides `prepare`. A declared value could be
    forgotten, and then `prepare` never ran and `edit` failed on a missing state key (see __init_subclass__)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overrides = cls.prepare is not EditMethod.prepare
        declared = cls.__dict__.get("needs_prepare")
        if declared is not None and bool(declared) != overrides:
            raise TypeError(f"{cls.__qualname__}.needs_prepare = {declared!r}, but the class "
                            f"{'overrides' if overrides else 'does not override'} `prepare`; "
                            "remove the line (it is derived from whether `prepare` is overridden)")
        cls.needs_prepare = overrides

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def prepare(self, backbone: Backbone, ctx: PrepareContext) -> dict[str, Any]:
        return {}

    def edit(self, backbone: Backbone, state: dict[str, Any], requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        raise NotImplementedError


METHODS: Registry[type[EditMethod]] = Registry("method", "methods")


def register_method(name: str):
    def decorator(cls: type[EditMethod]) -> type[EditMethod]:
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


_discovered = False


def discover_methods() -> Registry[type[EditMethod]]:
    """Import every public module of the built-in methods package and any installed plug-ins (entry point group)."""
    global _discovered
    if not _discovered:
        package = importlib.import_module(BUILTIN_METHODS_PACKAGE)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"{BUILTIN_METHODS_PACKAGE}.{info.name}")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
        _discovered = True
    return METHODS
