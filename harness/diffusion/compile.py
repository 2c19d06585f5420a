"""Optional torch.compile of a backbone's UNet and VAE decoder (ExecutorConfig.compile).

The compiled UNet serves plain inference only (see `use_compiled`): autodiff (JVP/VJP through the
UNet) and h-space hooks go to the eager module, because dynamo does not trace functorch transforms
and, by default, does not guard on hooks added after compilation: a hooked call through a graph
traced without the hook would silently drop the edit. Graphs are cached on disk, so a worker, or a
later run, pays the compile time once per shape rather than once per process.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.autograd import forward_ad

CACHE_ENV = "HARNESS_COMPILE_CACHE"


def compile_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "harness" / "inductor")


def enable_persistent_cache() -> Path:
    """Point inductor's on-disk caches (FX graphs, autotuning, kernels) at one directory shared by runs."""
    path = compile_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    # Assigned, not defaulted: inductor writes its own default into this variable the first time it asks.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return path


def _signature(value: Any) -> Any:
    """What a graph specialises on: tensors by shape/dtype/device, Python scalars by value (dynamic=False)."""
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), str(value.dtype), str(value.device))
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _signature(v)) for k, v in value.items()))
    return value if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__


class CompileTimer:
    """Seconds spent in calls that compiled: the first call of each input signature of a compiled callable.

    torch.compile compiles lazily, inside the first call of each new shape, so without this the compile
    lands in the first timed batch (issue 17.1). Such a call is compile plus one execution; the worker
    moves its whole duration out of the batch's edit time into the rows' compile_seconds.
    """

    def __init__(self, device: torch.device) -> None:
        self.seconds = 0.0
        self.device = device
        self._seen: set[Any] = set()

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            sig = (name, _signature(args), _signature(kwargs))
            if sig in self._seen:
                return fn(*args, **kwargs)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds += time.perf_counter() - start
            self._seen.add(sig)
            return out

        return call


class _TimedModule(torch.nn.Module):
    """A compiled submodule behind CompileTimer, still an nn.Module so it can replace one in place."""

    def __init__(self, compiled: torch.nn.Module, timer: CompileTimer, name: str) -> None:
        super().__init__()
        self.compiled = compiled
        self._call = timer.timed(name, compiled)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)


def compile_backbone(backbone: Any, mode: str | None = None) -> Any:
    """Attach compiled forwards: `backbone.compiled_unet`, and the VAE decoder compiled in place; both
    report their compile time to `backbone.compile_timer`."""
    enable_persistent_cache()
    mode = mode or ("max-autotune-no-cudagraphs" if backbone.device.type == "cuda" else "default")
    timer = CompileTimer(backbone.device)
    # dynamic=False: a leaderboard reuses a few fixed batch shapes; each gets its own specialised graph.
    backbone.compiled_unet = timer.timed("unet", torch.compile(backbone.unet, mode=mode, dynamic=False))
    if backbone.vae is not None:
        compiled = torch.compile(backbone.vae.decoder, mode=mode, dynamic=False)
        backbone.vae.decoder = _TimedModule(compiled, timer, "vae.decoder")
    backbone.compile_timer = timer
    return backbone


def compile_seconds(backbone: Any) -> float:
    """Compile seconds this backbone has spent so far (0 when it is not compiled)."""
    timer = getattr(backbone, "compile_timer", None)
    return timer.seconds if timer is not None else 0.0


def _has_hooks(module: Any) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def use_compiled(backbone: Any, x: torch.Tensor) -> bool:
    """True when this UNet call is plain inference that the compiled graph computes exactly."""
    if getattr(backbone, "compiled_unet", None) is None or torch.is_grad_enabled():
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x) or forward_ad.unpack_dual(x).tangent is not None:
        return False
    return not any(_has_hooks(m) for m in backbone.unet.modules())
