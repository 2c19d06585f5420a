"""How much of each attribute's supervised h-space direction an unsupervised basis can express (issue 15).

Calibrated `hspace-pca` and `jacobian` can only edit along their own basis vectors (PCA components of h_t,
top right singular vectors of ∂ε/∂h); the calibration picks one vector and a sign per attribute. If the
attribute's direction (the `supervised` mean difference, learnt from labelled samples of the same model) lies
outside that basis, no calibration can make the method edit the attribute: the method's basis, not its
calibration or the world, is the limit. Per attribute this prints, averaged over the timesteps:
- span: the share of the supervised direction's energy inside the basis' span, ‖P d_t‖² / ‖d_t‖²
  (a random K-dimensional subspace of R^D holds K / D of it in expectation);
- cos: |cos(d_t, b_t)| with the vector b_t the calibration chose.
Reads the artifacts of a finished run (the run's own plan names them); writes nothing. Usage:
    python scripts/basis_alignment.py [results/faces_targets] [--model faces-ddpm]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from harness.config import run_config_from_dict
from harness.runner import plan
from harness.store import RunStore


def per_step(basis: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """(K, steps, D): a basis given per step (K, steps, C, H, W) or once for every step (K, C, H, W)."""
    steps = direction.shape[0]
    if basis.dim() == direction.dim() + 1:
        return basis.flatten(2).double()
    return basis.flatten(1).double()[:, None, :].expand(-1, steps, -1)


def alignment(direction: torch.Tensor, basis: torch.Tensor, chosen: int) -> tuple[float, float]:
    """(mean span share, mean |cos| with the chosen vector) over the steps where the direction is non-zero."""
    d = direction.flatten(1).double()  # (steps, D)
    b = per_step(basis, direction)      # (K, steps, D)
    spans, coss = [], []
    for t in range(d.shape[0]):
        n = d[t].norm()
        if n == 0:
            continue
        q, _ = torch.linalg.qr(b[:, t].T)  # orthonormalise (the bases are orthonormal already; cheap insurance)
        spans.append(float((q.T @ d[t]).norm() ** 2 / n ** 2))
        coss.append(float(abs(b[chosen, t] @ d[t]) / (b[chosen, t].norm() * n)))
    return sum(spans) / len(spans), sum(coss) / len(coss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="?", default="results/faces_targets")
    ap.add_argument("--model", default="faces-ddpm")
    ap.add_argument("--supervised", default="supervised", help="label of the supervised row (original directions)")
    args = ap.parse_args()
    run = Path(args.run)
    store = RunStore(run)
    p = plan(run_config_from_dict(store.read_config()))  # the saved config minus its derived keys
    states = {}
    for job in p.prepares:
        if job.model == args.model:
            art = store.load_artifact(job.key)
            if art is not None:
                states[job.method] = art["state"]
    if args.supervised not in states:
        raise SystemExit(f"{run}: no prepared `{args.supervised}` artifact for {args.model} "
                         f"(have: {', '.join(sorted(states)) or 'none'}); --supervised names the label")
    sup = states[args.supervised]["groups"][""]["directions"]
    bases = {}
    if "hspace-pca" in states:
        st = states["hspace-pca"]
        bases["hspace-pca"] = (st["groups"][""]["components"], st["calibration"][""])
    if "jacobian" in states:
        st = states["jacobian"]
        bases["jacobian"] = (st["directions"][""]["vectors"], st["calibration"][""])
    dim = next(iter(sup.values()))[0].numel()
    header = "attribute " + "".join(f"| {m} span (K={b.shape[0]}) | cos chosen " for m, (b, _) in bases.items())
    print(header)
    for attr, d in sup.items():
        cells = []
        for _, (b, calib) in bases.items():
            span, cos = alignment(d, b, int(calib[attr]["component"]))
            cells.append(f"| {span:.3f} | {cos:.3f} (comp {calib[attr]['component']}) ")
        print(f"{attr:9s} " + "".join(cells))
    print("random K-dim subspace holds K / D in expectation: " +
          ", ".join(f"{m} {b.shape[0] / dim:.4f}" for m, (b, _) in bases.items()) + f" (D = {dim})")


if __name__ == "__main__":
    main()
