"""Reduced precision on the CPU: every method of the conformance suite in bfloat16 (and float16, whose CPU
kernels exist for these tiny models), against its float32 run (issue 17.9).

The GPU default is fp16 (harness.worker.choose_dtype); on CPU-only CI nothing else exercises it. Where the
arithmetic runs when the model is in half precision (documented in methods/_subspace.py and here):
- the UNet, VAE and text encoder run in the model dtype (that is the point of half precision);
- the DDIM state and step arithmetic stay float32 (harness.diffusion.sampler: predict_eps returns float32);
- JVP/VJP products run through the half-precision UNet, but their inputs and outputs are cast to the
  working dtype (methods._subspace.working_dtype: float32, never half), where the QR and SVD of the subspace
  iteration run; the incremental PCA runs in float64 (methods._hspace.TimestepIPCA); avi's SVDs in svd_dtype.
A half-precision case passes when it runs, every output is finite, and its images are close to float32's
(mean absolute difference of [0, 1] images under HALF_TOL; edits amplify rounding through the trajectory).
The whole matrix is `slow`; a few cases (one per dtype and family) run in the default suite.
"""
from __future__ import annotations

import pytest
import torch

from harness.models import load_backbone
from methods.base import PrepareContext
from tests.methods.test_conformance import CASES, PREPARE_SEED, SAMPLER, SMILE, AGE, REAL, SUITE, _method, _real_start
from methods.base import EditRequest

pytestmark = pytest.mark.usefixtures("one_thread")

HALF_TOL = {torch.bfloat16: 0.05, torch.float16: 0.02}
FAST = {("hspace-pca", "", "tiny-unet", torch.bfloat16), ("sd", "", "tiny-sd", torch.bfloat16),
        ("jacobian", "sample", "tiny-unet", torch.float16)}


def _params() -> list:
    out = []
    for case in CASES:
        name, label, model = case.values
        for dtype in (torch.bfloat16, torch.float16):
            marks = () if (name, label, model, dtype) in FAST else (pytest.mark.slow,)
            out.append(pytest.param(name, label, model, dtype, marks=marks,
                                    id=f"{case.id}-{str(dtype).removeprefix('torch.')}"))
    return out


_BACKBONES: dict = {}


def _run(name: str, label: str, model: str, dtype: torch.dtype) -> list:
    key = (model, dtype)
    if key not in _BACKBONES:
        _BACKBONES[key] = load_backbone(model, "cpu", dtype)
    backbone = _BACKBONES[key]
    x_T, x_0 = _real_start(_BACKBONES.setdefault((model, torch.float32), load_backbone(model, "cpu")))
    requests = [EditRequest("a", SMILE, 2.0, 11), EditRequest("b", AGE, -1.0, 12), EditRequest("c", REAL, 2.0, 13, x_T, x_0)]
    method = _method(name, label)
    state = method.prepare(backbone, PrepareContext(suite=SUITE, sampler=SAMPLER, seed=PREPARE_SEED)) \
        if type(method).needs_prepare else {}
    return method.edit(backbone, state, requests, SAMPLER)


@pytest.mark.parametrize("name, label, model, dtype", _params())
def test_method_runs_in_half_precision_close_to_float32(name: str, label: str, model: str, dtype) -> None:
    half, full = _run(name, label, model, dtype), _run(name, label, model, torch.float32)
    for h, f in zip(half, full):
        for what in ("original", "edited"):
            a, b = getattr(h, what), getattr(f, what)
            assert a.dtype == torch.float32 or a.dtype == b.dtype
            assert torch.isfinite(a).all(), f"{what}: non-finite values in {dtype}"
            diff = (a.float() - b.float()).abs().mean().item()
            assert diff < HALF_TOL[dtype], f"{what}: mean |{dtype} - float32| = {diff:.4f}"
