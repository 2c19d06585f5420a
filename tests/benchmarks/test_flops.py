"""bench.py's FLOP counter against closed forms, including through the project's JVP/VJP helpers."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench

from harness.diffusion.autodiff import vjp


def test_op_flops_match_closed_forms() -> None:
    lin = torch.nn.Linear(64, 32, bias=False)
    x, u = torch.randn(8, 64), torch.randn(8, 32)
    with bench.OpFlops() as c:
        lin(x)
    assert c.total == 2 * 8 * 64 * 32
    with bench.OpFlops() as c:
        vjp(lin, x, u)  # forward + one matmul for the input gradient (the weight needs none)
    assert c.total == 2 * (2 * 8 * 64 * 32)
    conv = torch.nn.Conv2d(4, 8, 3)
    with bench.OpFlops() as c:
        conv(torch.randn(2, 4, 10, 10))
    assert c.total == 2 * (2 * 8 * 8 * 8) * (4 * 9)  # 2 * batch*out_ch*H'*W' * in_ch*k*k
