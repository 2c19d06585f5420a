"""JVP/VJP helpers for Jacobian methods (Haas et al. Alg. 1/2; Park et al.'s pullback).

Forward-mode AD does not go through PyTorch's fused CPU flash attention, so every JVP runs under
the math SDPA backend (environment-notes.md §3). A batch of k tangent directions is handled in one
call by replicating the primal k times: the UNet treats samples independently, so the JVP of the
batched function with a batched tangent is [J v_1, ..., J v_k].
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

Fn = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def ad_safe_attention() -> Iterator[None]:
    with sdpa_kernel(SDPBackend.MATH):
        yield


def jvp(f: Fn, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), J_f(x) v) for matching shapes; x and v carry the same batch."""
    with ad_safe_attention():
        return torch.func.jvp(f, (x,), (v.to(x.dtype),))


def vjp(f: Fn, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """J_f(x)ᵀ u."""
    with ad_safe_attention():
        _, pullback = torch.func.vjp(f, x)
        return pullback(u.to(x.dtype))[0]


def batched_jvp(f: Fn, x: torch.Tensor, vs: torch.Tensor) -> torch.Tensor:
    """[J v_i] for k tangents vs (k, *x.shape[1:]) at one point x (1, ...), in one batched call."""
    k = vs.shape[0]
    return jvp(f, x.expand(k, *x.shape[1:]).contiguous(), vs)[1]


def batched_vjp(f: Fn, x: torch.Tensor, us: torch.Tensor) -> torch.Tensor:
    """[Jᵀ u_i] for k cotangents us (k, *f(x).shape[1:]) at one point x (1, ...), in one batched call."""
    k = us.shape[0]
    return vjp(f, x.expand(k, *x.shape[1:]).contiguous(), us)
