"""The h-space hook: read, shift or replace the output of `unet.mid_block`.

Haas et al. (FG 2024, SM A) define h-space as "the activation after the deepest bottleneck layer",
which their code and Park et al.'s take as the mid-block output. With classifier-free guidance the
UNet sees the batch [uncond, cond]; a shift is applied to both halves, as the official SD code does.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


def expand_to(value: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample tensor (B, ...) or (1, ...) over the CFG-stacked batch (n*B, ...)."""
    if value.shape[0] in (1, h.shape[0]):
        return value.to(h.dtype)
    reps = h.shape[0] // value.shape[0]
    if reps * value.shape[0] != h.shape[0]:
        raise ValueError(f"h-space tensor of batch {value.shape[0]} does not divide the UNet batch {h.shape[0]}")
    return value.to(h.dtype).repeat(reps, *([1] * (value.dim() - 1)))


class MidBlockHook:
    """Context manager around `unet.mid_block`. Leaves the UNet exactly as it found it on exit.

    Attributes set by callers before a forward pass:
    - `delta`: tensor added to h (plain injection), or a function h -> Δh of the h this very pass produced
      (Asyrp's learned f_t(h_t); it receives the whole UNet batch, CFG halves included), or None;
    - `relative`: when True, `delta` is in units of ‖h‖: the shift added to sample b is delta_b · ‖h_b‖, with
      ‖h_b‖ the Frobenius norm of the h the model produced for sample b at this pass (its conditional
      half under CFG; the same shift then goes to both halves, like an absolute one);
    - `samples`: the number of samples B in the UNet batch (B, or 2B under CFG); needed when `relative`;
    - `replace`: tensor substituted for h (to differentiate the UNet output with respect to h), or None.
    After a forward pass `last` holds the (possibly shifted) h of the whole batch and `raw` the h the
    model produced before any shift.
    """

    def __init__(self, unet: Any) -> None:
        self.unet = unet
        self.delta: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None
        self.relative = False
        self.samples: int | None = None
        self.replace: torch.Tensor | None = None
        self.last: torch.Tensor | None = None
        self.raw: torch.Tensor | None = None
        self._handle: Any = None  # torch's RemovableHandle while entered

    def _hook(self, module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        h = output
        self.raw = output
        if self.replace is not None:
            h = expand_to(self.replace, h)
        if self.delta is not None:
            delta = self.delta(output) if callable(self.delta) else self.delta
            if self.relative:
                delta = delta.to(h.dtype) * self.h_norms(output).view(-1, *([1] * (h.dim() - 1)))
            h = h + expand_to(delta, h)
        self.last = h
        return h

    def h_norms(self, h: torch.Tensor) -> torch.Tensor:
        """‖h_b‖ per sample (B,), from the conditional half (the last B rows) of the UNet batch."""
        if self.samples is None:
            raise ValueError("a relative Δh needs hook.samples (the number of samples in the batch)")
        return h[-self.samples:].flatten(1).norm(dim=1)

    def __enter__(self) -> "MidBlockHook":
        if self.unet.mid_block is None:
            raise ValueError("this UNet has no mid_block, so it has no h-space")
        self._handle = self.unet.mid_block.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self.delta = self.replace = self.last = self.raw = None
        self.relative, self.samples = False, None

