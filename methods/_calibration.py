"""Calibrated directions: which component, with which sign, edits each attribute (issue 15, finding 2).

Unsupervised methods (`hspace-pca`, `jacobian`, `park`) find directions that are not tied to an attribute: the
h-space paper names its PCs by looking at them, Park et al. pick pc0/pc1 and a sign by hand. A harness must
choose automatically, so these methods calibrate in `prepare` (methods-spec §7 A10 generalised), once per
calibration group (the directions one set of renders shares: one per prompt for text models):

1. n calibration samples, from `calibration_seeds` (disjoint from every evaluated sample, see there).
2. Every candidate component j is applied with sign s ∈ {+1, −1} at every calibration strength γ to every
   sample i, along that sample's own direction v_{j,i} (the same vector for every sample when the method's
   directions are shared: PCA, Jacobian from a reference sample; per sample for Park's local basis and
   image-specific Jacobians).
3. The method's scorer (`score_attribute`; the world oracle on world suites, zero-shot CLIP on real ones)
   scores the originals and every edit for every attribute of the group; the gain g_{j,s,i} is
   score(edit) − score(original), averaged over the strengths. Only the scorer and the calibration samples
   are used, never the evaluation's metrics.
4. Shared directions: the candidate (j, s) with the highest mean gain wins (methods-spec §7 A10's rule);
   ties go to the lower component, then to +.
5. Per-sample directions: a vector's sign is arbitrary per sample (singular vectors carry a sign convention,
   not a meaning), so the sign that transfers is one relative to a reference vector:
   r_j = Σ_i (g_{j,+,i} − g_{j,−,i}) v_{j,i}, and sample i is edited along sign⟨v_{j,i}, r_j⟩ · v_{j,i}.
   Component j is scored by the mean gain of that rule with each sample aligned to the reference built
   from the *other* samples (leave-one-out): with vectors unrelated across samples an in-sample reference
   would match every sample's own best sign and make any component look good. j* = the best score (ties:
   the lower component; a zero inner product counts as +).

The record per attribute (stored in the prepared artifact) holds j*, the sign (shared directions) or the
reference vector (per-sample directions), the score of every component ("gain": the chosen sign's mean gain,
or the leave-one-out aligned gain), the mean gain of each component at + and at −, and the baseline score;
`record_info` puts the choice and its scores in each row's info. A method that is given a fixed sign
(Park's `sign: positive`) scores its components at that sign (`fixed_sign`) and keeps no reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from harness.errors import ConfigError
from harness.hashing import STABLE_SEED_BITS, stable_seed
from harness.suites import Attribute
from methods._scorers import Scorer, score_attribute

CALIBRATION_SEED_BASE = 2 ** STABLE_SEED_BITS
"""Calibration seeds are CALIBRATION_SEED_BASE + a stable_seed, i.e. in [2^60, 2^61)."""


@dataclass(frozen=True)
class CalibrationOptions:
    """How `component: auto` is calibrated (methods/_calibration.py)."""

    n_samples: int = 8
    """Calibration samples (fresh seeds, never evaluated ones)."""
    strengths: tuple[float, ...] = (1.0,)
    """Edit strengths the candidates are scored at (gains averaged); set them to the run's strengths,
    since a direction that edits at strength 2 may do nothing visible at 1. Positive: the sign is the
    candidate's."""
    max_components: int | None = None
    """Consider only the first components (null: every component the method keeps)."""

    def validate(self, prefix: str) -> None:
        if self.n_samples < 1:
            raise ConfigError(f"{prefix}.n_samples", self.n_samples, "an integer >= 1")
        if not self.strengths or any(s <= 0 for s in self.strengths):
            raise ConfigError(f"{prefix}.strengths", list(self.strengths), "a non-empty list of numbers > 0",
                              "the candidate's sign gives the direction")
        if self.max_components is not None and self.max_components < 1:
            raise ConfigError(f"{prefix}.max_components", self.max_components, "null or an integer >= 1")

    def components(self, available: int) -> list[int]:
        return list(range(min(available, self.max_components or available)))


def calibration_seeds(prepare_seed: int, n: int, tag: str) -> list[int]:
    """n noise seeds for calibration samples, disjoint from every seed a run evaluates.

    Guarantee: an evaluated unit's noise seed is `stable_seed("noise", ...)` (harness.units.WorkUnit.noise_seed),
    and every stable_seed is < 2^STABLE_SEED_BITS; calibration seeds are 2^STABLE_SEED_BITS + a stable_seed,
    so they lie in [2^60, 2^61) and can equal no evaluated seed, whatever the run's seeds, models or suites
    (by construction, not by hash luck). They are also disjoint from the seeds `prepare` fits directions on
    (`_hspace.sample_seeds`, stable_seeds too), so the choice is made on samples the directions never saw.
    """
    return [CALIBRATION_SEED_BASE + stable_seed("calibration", tag, int(prepare_seed), i) for i in range(n)]


@dataclass
class CalibrationTarget:
    """What a method hands `calibrate` for one calibration group."""

    originals: torch.Tensor
    """The unedited calibration samples, (n, 3, H, W) in [0, 1]."""
    render: Callable[[int, torch.Tensor], torch.Tensor]
    """render(j, strengths (n,)) -> the samples edited along their own direction j, sample i at strengths[i]
    (a negative strength is the − sign)."""
    components: Sequence[int]
    """Candidate component indices."""
    vectors: Callable[[int], torch.Tensor] | None = None
    """vectors(j) -> each sample's direction j, (n, ...); None when every sample shares one direction."""


def calibrate(target: CalibrationTarget, attributes: Mapping[str, Attribute], scorer: Scorer,
              options: CalibrationOptions, fixed_sign: int | None = None) -> dict[str, dict[str, Any]]:
    """The calibration record of every attribute (module docstring, steps 2-5)."""
    if not target.components:
        raise ValueError("calibration needs at least one candidate component")
    n = target.originals.shape[0]
    names = list(attributes)
    base = {a: _scores(scorer, target.originals, attributes[a]) for a in names}
    signs = (1, -1) if fixed_sign is None else (fixed_sign,)
    # gains[a][j][s]: (n,) gain per sample, averaged over the strengths; one render serves every attribute.
    gains: dict[str, dict[int, dict[int, torch.Tensor]]] = {a: {} for a in names}
    for j in target.components:
        for s in signs:
            total = {a: torch.zeros(n, dtype=torch.float64) for a in names}
            for strength in options.strengths:
                images = target.render(j, torch.full((n,), s * float(strength), dtype=torch.float64))
                for a in names:
                    total[a] += _scores(scorer, images, attributes[a]) - base[a]
            for a in names:
                gains[a].setdefault(j, {})[s] = total[a] / len(options.strengths)

    records = {}
    for a in names:
        rows: list[tuple[float, int | None, torch.Tensor | None]] = []  # (score, sign, reference direction)
        for j in target.components:
            g = gains[a][j]
            if fixed_sign is not None:
                rows.append((float(g[fixed_sign].mean()), fixed_sign, None))
                continue
            if target.vectors is None:
                plus, minus = float(g[1].mean()), float(g[-1].mean())
                rows.append((plus, 1, None) if plus >= minus else (minus, -1, None))
                continue
            vectors, shape = _flat_vectors(target, j, n)
            weighted = (g[1] - g[-1])[:, None] * vectors             # sample i's vote for the reference
            reference = weighted.sum(0)
            loo = reference[None] - weighted                         # the reference without sample i
            chosen = _sign((vectors * loo).sum(1))
            aligned = torch.where(chosen > 0, g[1], g[-1]).mean()
            rows.append((float(aligned), None, reference.reshape(shape).float()))
        best = max(range(len(rows)), key=lambda k: (rows[k][0], -k))  # ties: the lower component
        score, sign, reference = rows[best]
        j = target.components[best]
        records[a] = {
            "component": int(j),
            "sign": sign,
            "reference": reference,
            "gain": score,
            "baseline": float(base[a].mean()),
            "n_samples": n,
            "strengths": [float(s) for s in options.strengths],
            "candidates": {
                "component": [int(c) for c in target.components],
                "gain": [r[0] for r in rows],
                "gain_positive": [float(gains[a][c][1].mean()) if 1 in gains[a][c] else None
                                  for c in target.components],
                "gain_negative": [float(gains[a][c][-1].mean()) if -1 in gains[a][c] else None
                                  for c in target.components],
            },
        }
    return records


def aligned_sign(record: Mapping[str, Any], vector: torch.Tensor | None = None) -> int:
    """The sign to apply with the record's component: the shared sign, or ⟨vector, reference⟩'s (0 -> +)."""
    if record["reference"] is None:
        return int(record["sign"])
    if vector is None:
        raise ValueError("this calibration chose a per-sample sign: pass the sample's direction")
    ref = record["reference"].to(torch.float64).reshape(-1)
    return int(_sign(vector.detach().cpu().to(torch.float64).reshape(-1) @ ref))


def record_info(record: Mapping[str, Any], sign: int) -> dict[str, Any]:
    """The row diagnostics of a calibrated choice (JSON scalars and short lists)."""
    return {"component": record["component"], "sign": int(sign), "calibrated": True,
            "calibration_gain": record["gain"], "calibration_baseline": record["baseline"],
            "calibration_samples": record["n_samples"],
            "calibration_gains": record["candidates"]["gain"]}


def manual_info(component: int, sign: int) -> dict[str, Any]:
    return {"component": int(component), "sign": int(sign), "calibrated": False}


def group_attributes(items: Sequence[Any]) -> list[str]:
    """The distinct attributes of suite items, in first-seen order."""
    return list(dict.fromkeys(it.attribute for it in items))


def _scores(scorer: Scorer, images: torch.Tensor, attribute: Attribute) -> torch.Tensor:
    return score_attribute(scorer, images, attribute).detach().to("cpu", torch.float64).reshape(-1)


def _flat_vectors(target: CalibrationTarget, j: int, n: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Each sample's direction j as rows (n, D), float64, and the shape of one direction."""
    if target.vectors is None:
        raise ValueError("this calibration target has no direction vectors")
    v = target.vectors(j).detach().to("cpu", torch.float64)
    return v.reshape(n, -1), tuple(v.shape[1:])


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, -1, 1)
