"""Optional torch.compile of a backbone's UNet and VAE decoder (ExecutorConfig.compile).

The compiled UNet serves plain inference only (see `use_compiled`): autodiff (JVP/VJP through the
UNet) and h-space hooks go to the eager module, because dynamo does not trace functorch transforms
and, by default, does not guard on hooks added after compilation: a hooked call through a graph
traced without the hook would silently drop the edit. Graphs are cached on disk, so a worker, or a
later run, pays the compile time once per shape rather than once per process.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


def compile_backbone(backbone: Any, mode: str | None = None) -> Any:
    """Attach compiled forwards: `backbone.compiled_unet`, and the VAE decoder compiled in place."""
    enable_persistent_cache()
    mode = mode or ("max-autotune-no-cudagraphs" if backbone.device.type == "cuda" else "default")
    # dynamic=False: a leaderboard reuses a few fixed batch shapes; each gets its own specialised graph.
    backbone.compiled_unet = torch.compile(backbone.unet, mode=mode, dynamic=False)
    if backbone.vae is not None:
        backbone.vae.decoder = torch.compile(backbone.vae.decoder, mode=mode, dynamic=False)
    return backbone


def _has_hooks(module: Any) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def use_compiled(backbone: Any, x: torch.Tensor) -> bool:
    """True when this UNet call is plain inference that the compiled graph computes exactly."""
    if getattr(backbone, "compiled_unet", None) is None or torch.is_grad_enabled():
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x) or forward_ad.unpack_dual(x).tangent is not None:
        return False
    return not any(_has_hooks(m) for m in backbone.unet.modules())
