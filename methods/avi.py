"""AVI: Attribute Vector Integration (Wang et al. 2025, arXiv:2502.02225, Sec. 3.2 and Fig. 1; methods-spec §2).

No official code exists; the algorithm is the reconstruction of methods-spec §2.3 with every
ambiguity of the register (§9 items 1-11) exposed as an option whose default is the proposed reading.

Pipeline per request (one sample, prompt pair p_o -> p_t, strength γ):
  1. Denoise x_T with p_o up to grid step i_x (t ≈ T_x): x = x_{T_x}.
  2. z = z_{T_x+Δτ} under p_t: Δτ further DDIM steps from x ("branch", A1) or an independent
     p_t trajectory from the same x_T stopped at the same step ("independent").
  3. For each latent channel c: X = x[c], Z = z[c] (H×W); SVDs X = U_x Σ_x V_xᵀ, Z = U_z Σ_z V_zᵀ.
     Attribute vectors U_A = [U_x[:, :k], U_z[:, :k] J], V_A = [V_x[:, :k], V_z[:, :k] J]
     (J reverses the column order), U_B = U_A J, V_B = V_A J.
  4. S = f_θ(vec X) (MLP head 1). y_pred[c] = U_A(γ) diag(S) V_Aᵀ, where U_A(γ) scales the
     z-derived columns by γ (A4).
  5. y_pred replaces x_{T_x}; denoising continues to t = 0 "with the guidance of the original text prompt"
     (Fig. 1 caption): `continue_prompt: original` at the run's CFG is the default. Other continuations are
     options (empty / target prompt, any guidance). Measured on world-text2img (world suite, items
     circle-large, circle-red, circle-square, circle-left, square-blue-bg, 4 seeds each, 20 steps, CFG 5,
     strength 1, one training pair per item, 500 samples/pair, 5 epochs, width 256;
     scripts/measure_continuation.py), with a control that continues the UNEDITED x_{T_x} the same way:
       original @ CFG 5: flip 0/20, preservation 1.00 (control 0/20): the prompt regenerates the original;
       empty @ 1 (no CFG): flip 0/20, validity 0.05, preservation 0.04 (control: 0/20, preservation 0.91):
         y_pred is ~16% of x's norm (below), and without guidance such a latent decodes to no clean object;
       target @ CFG 5: flip 20/20, preservation 1.00, but the control flips 17/20 too: the target prompt
         edits, not AVI (this is the `sd` baseline started at T_x).
     So none of the three shows an AVI edit here while ‖y_pred‖/‖x‖ ≈ 0.16; the default stays the paper's.
  On the faces world (faces-text2img, faces_hspace, 5 attributes x 4 seeds, 20 steps, CFG 5, 8 training
  pairs per item; scripts/measure_continuation.py --world faces) the original prompt undoes any latent
  replacement: even the TARGET prompt's own x_t put in place of x flips <= 0.10 of units from t 0.7, 0.5 or
  0.3 with the original prompt after it (the full caption re-renders every factor it names), so AVI flips
  0 there at every t_x (preservation 1.00). With the empty prompt (guidance 1) that upper bound flips 0.80
  from 0.7 and 1.00 from 0.3, where the empty continuation alone is harmless (preservation 1.00; 0.62 from
  0.7: faces-text2img saw the empty caption in 10% of its steps). AVI with t_x 0.3 and the empty prompt:
  z_source branch flips 0.00 at γ 1 (preservation 0.74), 0.15 / 0.95 at γ 4; z_source independent 0.25 /
  0.90 at γ 4, 0.30 / 0.74 at γ 6 (harness runs, seeds 0-3). The faces configs use t_x 0.3, independent z,
  the empty prompt at guidance 1 and γ 4 (on 16 other seeds, configs/faces_targets.yaml: 0.35 / 0.87); the
  AVI edit is far below the upper bound's, i.e. AVI's composition y_pred (norm ratio 0.6-0.8 there) carries
  little of z's attribute.
  The original image is the plain p_o trajectory from the same x_T (it shares steps 0..i_x-1).

Why ‖y_pred‖/‖x‖ stalls (measured on world-text2img, item circle-large, x at t = 701, z at t = 601, k = 16,
width 256, λ = 10; scripts/avi_stall.py; the training check is also a test):
  - The objective is quadratic in (S, ΔS) and ΔS is free, so L2 and L4 only fix S + ΔS and S minimises
    λ1 L1 + λ3 L3: the ridge system (λ1 G + λ3 I) S = λ1 b + λ3 σ_z with G_ij = (u_i·u_j)(v_i·v_j),
    b_i = u_iᵀ Z v_i. At that optimum ‖y‖/‖x‖ = 1.044 (‖x‖ = 57.2; x's top 16 singular values hold 94-95%
    of each channel's energy), so the reconstruction itself does not shrink y.
  - Training reaches the optimum on its own pair: 235 Adam steps (500 samples/pair, 5 epochs, lr 1e-4) give
    ‖S‖/‖S*‖ = 0.998 and ratio 1.044. The quickstart's 64 samples/pair × 3 channels / batch 32 × 2 epochs
    = 12 steps stop at 0.035: the default-initialised MLP outputs ≈ 0.25 against targets σ ≈ 9-12 and Adam
    moves each weight by about lr per step (under-training, the 0.01-0.035 of the issue).
  - On samples it was not trained on, the same MLP gives 0.19 (0.16-0.23 over 6 held-out seeds), and still
    0.19 after 1,880 steps at lr 1e-3: the ~0.2 plateau. A ReLU MLP fitted to ONE noise-dominated input
    vec(X) does not carry its output to other inputs. With 8 training pairs per item: 0.60 (0.55-0.67).
  So the stall is poor generalisation from one (x, z) pair per attribute (pairs_per_item = 1, the reading
  A6 of "sampling number 5000 for one pair"), not a bug in the losses or the optimiser. Each row's info
  records norm_ratio (‖y‖/‖x‖ on the edited sample, before renormalising) beside train_norm_ratio (the same
  on the training pairs): both small = under-trained, only norm_ratio small = not generalising. Remedies
  are options, not defaults: pairs_per_item (the paper's 500 per pair with > 5 pairs), renormalise.

Training (in `prepare`, A5-A7): per suite item (one prompt pair = one attribute, as the paper
"learns the attribute 'young'" from a prompt pair) `pairs_per_item` latent pairs (x, z) are sampled
from seeds derived from the preparation seed; each pair is replicated `samples_per_pair` times
(default: 5000 when only one pair is trained on, else 500 per pair; optional Gaussian jitter) and
one MLP per item (or one for the whole suite, `train_scope: suite`) is trained with Adam on
    L1 = ‖U_A diag(S) V_Aᵀ − Z‖_F²           (target)
    L2 = ‖U_B diag(S+ΔS) V_Bᵀ − X‖_F²        (source)
    L3 = ‖S − σ_z[:2k]‖²                      (target singular-value regulariser)
    L4 = ‖(S+ΔS) − σ_x[:2k]‖²                 (source singular-value regulariser)
    L  = mean over the batch of channel matrices of Σ_i λ_i L_i.
Reading B (`composite: B`) swaps the roles: U_A diag(S) V_Aᵀ -> X with S -> σ_x, and
U_B diag(S+ΔS) V_Bᵀ -> Z with S+ΔS -> σ_z; inference uses U_A(γ) diag(S) V_Aᵀ in both readings.

Note: strength 0 does NOT give the unedited image: γ = 0 keeps the x block U_x[:, :k] diag(S[:k]) V_x[:, :k]ᵀ.

Options (defaults in brackets):
  t_x [0.7]            T_x as a fraction of T, mapped to a grid step with Schedule.step_index (A5).
  delta_tau [0.1]      Δτ as a fraction of T; z is taken at step_index(t_x − delta_tau), at least one
                       step after i_x when delta_tau > 0 (A5).
  z_source ["branch"]  "branch" | "independent" (A1).
  k [None]             attribute vectors kept per latent; None = min(H, W) // 2 (32 for SD's 64×64).
  width [None]         width of the three hidden Linear layers; None = H·W (4096 for SD).
  mlp_input ["x"]      "x" = vec(X) (A2) | "z" = vec(Z) | "concat" = [vec X, vec Z].
  lambdas [(10, 10, 10, 10)]  λ1..λ4 (A7).
  lr [1e-4], batch_size [32] (channel matrices per step), epochs [5] (A7, "convergence within 5 epochs").
  pairs_per_item [1]   latent pairs (x, z) sampled per item from distinct seeds.
  samples_per_pair [None]  replications of each pair; None = 5000 if one pair is trained on, else 500 (A6).
  jitter [0.0]         std of Gaussian noise added to X and Z of every replicated sample (A6).
  train_scope ["item"] "item" = one MLP per prompt pair | "suite" = one MLP on all items' pairs.
  composite ["A"]      "A" (proposed reading, A3) | "B" (alternative reading B).
  gamma_mode ["z_columns"]  "z_columns" (A4) | "z_columns_and_rows" (also scales V_A's z rows: quadratic in γ).
  renormalise [False]  rescale each channel of y_pred to ‖x[c]‖_F (A11 / §9.11); the ratio
                       ‖y_pred‖_F/‖x‖_F before any rescaling is always logged as info["norm_ratio"].
  svd_dtype ["float64"]  precision of the SVDs ("float32" | "float64").
  continue_prompt ["original"]  "original" | "empty" | "target": the prompt after step i_x (see step 5).
  continue_guidance [None]  guidance after step i_x; None = the run's guidance scale, 1 = no CFG.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from harness.config import SamplerConfig
from harness.diffusion import Schedule, denoise, initial_noise, make_condition
from harness.diffusion.backbone import Backbone
from harness.errors import ConfigError
from harness.hashing import stable_seed
from methods._common import (
    ContinuePrompt, check_continuation_guidance, continuation_condition, original_condition, pairs, start_noise,
    target_condition,
)
from methods.base import EditMethod, EditOutput, EditRequest, PrepareContext, register_method

SUITE_KEY = "__suite__"
_GEN_CHUNK = 8  # latent pairs denoised together in `prepare`


@dataclass(frozen=True)
class AVIOptions:
    t_x: float = 0.7
    delta_tau: float = 0.1
    z_source: Literal["branch", "independent"] = "branch"
    k: int | None = None
    width: int | None = None
    mlp_input: Literal["x", "z", "concat"] = "x"
    lambdas: tuple[float, ...] = (10.0, 10.0, 10.0, 10.0)
    lr: float = 1e-4
    batch_size: int = 32
    epochs: int = 5
    pairs_per_item: int = 1
    samples_per_pair: int | None = None
    jitter: float = 0.0
    train_scope: Literal["item", "suite"] = "item"
    composite: Literal["A", "B"] = "A"
    gamma_mode: Literal["z_columns", "z_columns_and_rows"] = "z_columns"
    renormalise: bool = False
    svd_dtype: Literal["float32", "float64"] = "float64"
    continue_prompt: ContinuePrompt = "original"
    continue_guidance: float | None = None

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        check_continuation_guidance(f"{p}continue_guidance", self.continue_guidance)
        if not 0.0 < self.t_x <= 1.0:
            raise ConfigError(f"{p}t_x", self.t_x, "a fraction in (0, 1]")
        if not 0.0 <= self.delta_tau < self.t_x:
            raise ConfigError(f"{p}delta_tau", self.delta_tau, "a fraction in [0, t_x)")
        if self.k is not None and self.k < 1:
            raise ConfigError(f"{p}k", self.k, "an integer >= 1 or null")
        if self.width is not None and self.width < 1:
            raise ConfigError(f"{p}width", self.width, "an integer >= 1 or null")
        if len(self.lambdas) != 4 or any(not math.isfinite(v) or v < 0 for v in self.lambdas):
            raise ConfigError(f"{p}lambdas", list(self.lambdas), "four finite numbers >= 0 (λ1..λ4)")
        for name in ("batch_size", "epochs", "pairs_per_item"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{p}{name}", getattr(self, name), "an integer >= 1")
        if self.samples_per_pair is not None and self.samples_per_pair < 1:
            raise ConfigError(f"{p}samples_per_pair", self.samples_per_pair, "an integer >= 1 or null")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"{p}lr", self.lr, "a finite number > 0")
        if not (self.jitter >= 0 and math.isfinite(self.jitter)):
            raise ConfigError(f"{p}jitter", self.jitter, "a finite number >= 0")


# -- the SVD algebra (batched over any leading dims; matrices are the last two) ---------------------

def _svd_dtype(name: str) -> torch.dtype:
    return torch.float64 if name == "float64" else torch.float32


def attribute_vectors(x: torch.Tensor, z: torch.Tensor, k: int, svd_dtype: str = "float64"
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """U_A, V_A (..., H|W, 2k) and the descending singular values σ_x[:2k], σ_z[:2k] (float32).

    U_A = [U_x[:, :k], U_z[:, :k] J], V_A = [V_x[:, :k], V_z[:, :k] J] (J reverses column order).
    """
    dt = _svd_dtype(svd_dtype)
    r = min(x.shape[-2], x.shape[-1])
    if not 1 <= k or 2 * k > r:
        raise ValueError(f"k={k} needs 1 <= k and 2k <= min(H, W) = {r}")
    ux, sx, vhx = torch.linalg.svd(x.to(dt), full_matrices=False)
    uz, sz, vhz = torch.linalg.svd(z.to(dt), full_matrices=False)
    vx, vz = vhx.transpose(-1, -2), vhz.transpose(-1, -2)
    u_a = torch.cat([ux[..., :k], uz[..., :k].flip(-1)], dim=-1)
    v_a = torch.cat([vx[..., :k], vz[..., :k].flip(-1)], dim=-1)
    return u_a.float(), v_a.float(), sx[..., : 2 * k].float(), sz[..., : 2 * k].float()


def reverse_composite_vectors(u_a: torch.Tensor, v_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U_B = U_A J, V_B = V_A J: the z block first, then the x block, each reversed."""
    return u_a.flip(-1), v_a.flip(-1)


def compose(u: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """U diag(w) Vᵀ, batched: u (..., H, r), w (..., r), v (..., W, r) -> (..., H, W)."""
    return (u * w.unsqueeze(-2)) @ v.transpose(-1, -2)


def gamma_scale(u_a: torch.Tensor, v_a: torch.Tensor, k: int, gamma: torch.Tensor,
                mode: str = "z_columns") -> tuple[torch.Tensor, torch.Tensor]:
    """U_A(γ) (z-derived columns × γ) and V_A (also × γ when mode is "z_columns_and_rows").

    gamma broadcasts against the leading dims of u_a (e.g. shape (B, 1) for (B, C, H, 2k)).
    """
    gamma = torch.as_tensor(gamma, dtype=u_a.dtype, device=u_a.device)
    ones = torch.ones_like(gamma)
    col = torch.cat([ones.unsqueeze(-1).expand(*gamma.shape, k), gamma.unsqueeze(-1).expand(*gamma.shape, k)], -1)
    col = col.unsqueeze(-2)  # broadcast over the rows of U / V
    u = u_a * col
    v = v_a * col if mode == "z_columns_and_rows" else v_a
    return u, v


def avi_losses(s: torch.Tensor, ds: torch.Tensor, u_a: torch.Tensor, v_a: torch.Tensor, x: torch.Tensor,
               z: torch.Tensor, sx: torch.Tensor, sz: torch.Tensor, composite: str = "A") -> torch.Tensor:
    """Per-matrix losses (N, 4) = [L1, L2, L3, L4] for S, ΔS (N, 2k) and channel matrices X, Z (N, H, W)."""
    u_b, v_b = reverse_composite_vectors(u_a, v_a)
    s2 = s + ds
    if composite == "A":
        y_target = compose(u_a, s, v_a)      # U_A diag(S) V_Aᵀ -> Z
        y_source = compose(u_b, s2, v_b)     # U_B diag(S+ΔS) V_Bᵀ -> X
        l3 = ((s - sz) ** 2).sum(-1)
        l4 = ((s2 - sx) ** 2).sum(-1)
    else:
        y_target = compose(u_b, s2, v_b)     # U_B diag(S+ΔS) V_Bᵀ -> Z
        y_source = compose(u_a, s, v_a)      # U_A diag(S) V_Aᵀ -> X
        l3 = ((s2 - sz) ** 2).sum(-1)
        l4 = ((s - sx) ** 2).sum(-1)
    l1 = ((y_target - z) ** 2).sum((-2, -1))
    l2 = ((y_source - x) ** 2).sum((-2, -1))
    return torch.stack([l1, l2, l3, l4], dim=-1)


# -- the singular-value MLP ------------------------------------------------------------------------

class AVIMLP(nn.Module):
    """Three Linear(·, width) + ReLU layers, then two linear heads: S and ΔS (2k each)."""

    def __init__(self, d_in: int, width: int, n_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                  nn.Linear(width, width), nn.ReLU())
        self.head_s = nn.Linear(width, n_out)
        self.head_ds = nn.Linear(width, n_out)

    def reset(self, generator: torch.Generator) -> "AVIMLP":
        """PyTorch's default Linear init range (U(±1/sqrt(fan_in))), drawn from a private generator."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    b = 1.0 / math.sqrt(m.in_features)
                    m.weight.copy_(torch.empty(m.weight.shape).uniform_(-b, b, generator=generator))
                    m.bias.copy_(torch.empty(m.bias.shape).uniform_(-b, b, generator=generator))
        return self

    def forward(self, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(inp)
        return self.head_s(h), self.head_ds(h)


def mlp_features(x: torch.Tensor, z: torch.Tensor, mode: str) -> torch.Tensor:
    """MLP input for channel matrices (N, H, W): vec X, vec Z or both (A2)."""
    fx, fz = x.flatten(-2).float(), z.flatten(-2).float()
    if mode == "x":
        return fx
    if mode == "z":
        return fz
    return torch.cat([fx, fz], dim=-1)


@dataclass(frozen=True)
class TrainConfig:
    k: int
    width: int
    mlp_input: str = "x"
    lambdas: tuple[float, ...] = (10.0, 10.0, 10.0, 10.0)
    lr: float = 1e-4
    batch_size: int = 32
    epochs: int = 5
    samples_per_pair: int = 5000
    jitter: float = 0.0
    composite: str = "A"
    svd_dtype: str = "float64"


def build_mlp(hw: int, cfg: TrainConfig) -> AVIMLP:
    d_in = 2 * hw if cfg.mlp_input == "concat" else hw
    return AVIMLP(d_in, cfg.width, 2 * cfg.k)


def train_mlp(x: torch.Tensor, z: torch.Tensor, cfg: TrainConfig, seed: int,
              device: torch.device | str = "cpu") -> tuple[AVIMLP, dict[str, float]]:
    """Train f_θ on latent pairs x, z (P, C, H, W): each of the P·C channel pairs replicated samples_per_pair times.

    Deterministic given `seed`: init, shuffling and jitter come from one CPU generator.
    """
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    xs = x.detach().float().flatten(0, -3).to(device)   # (M, H, W) distinct channel matrices
    zs = z.detach().float().flatten(0, -3).to(device)
    m, hgt, wid = xs.shape
    mlp = build_mlp(hgt * wid, cfg).reset(g).to(device)
    lam = torch.tensor(cfg.lambdas, dtype=torch.float32, device=device)
    opt = torch.optim.Adam(mlp.parameters(), lr=cfg.lr)
    if cfg.jitter == 0:
        pre = attribute_vectors(xs, zs, cfg.k, cfg.svd_dtype)
        feats = mlp_features(xs, zs, cfg.mlp_input)
    n = m * cfg.samples_per_pair
    first = last = float("nan")
    steps = 0
    with torch.enable_grad():
        mlp.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=g) % m
            for start in range(0, n, cfg.batch_size):
                idx = perm[start:start + cfg.batch_size].to(device)
                bx, bz = xs[idx], zs[idx]
                if cfg.jitter > 0:
                    noise = torch.randn((2, *bx.shape), generator=g).to(device) * cfg.jitter
                    bx, bz = bx + noise[0], bz + noise[1]
                    u_a, v_a, sx, sz = attribute_vectors(bx, bz, cfg.k, cfg.svd_dtype)
                    inp = mlp_features(bx, bz, cfg.mlp_input)
                else:
                    u_a, v_a, sx, sz = (t[idx] for t in pre)
                    inp = feats[idx]
                s, ds = mlp(inp)
                loss = (avi_losses(s, ds, u_a, v_a, bx, bz, sx, sz, cfg.composite) * lam).sum(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if steps == 0:
                    first = float(loss.detach())
                last = float(loss.detach())
                steps += 1
    mlp.eval()
    # ‖U_A diag(S) V_Aᵀ‖/‖X‖ on the distinct training pairs (γ = 1): compare with the rows' norm_ratio on the
    # samples being edited to tell under-training (both small) from poor generalisation (only the latter small).
    with torch.no_grad():
        u_a, v_a, _, _ = attribute_vectors(xs, zs, cfg.k, cfg.svd_dtype)
        y = compose(u_a, mlp(mlp_features(xs, zs, cfg.mlp_input))[0], v_a)
        train_ratio = float((y.flatten(1).norm(dim=1) / xs.flatten(1).norm(dim=1)).mean())
    return mlp, {"steps": steps, "first_loss": first, "final_loss": last, "train_norm_ratio": train_ratio}


# -- trajectories ---------------------------------------------------------------------------------

def edit_steps(schedule: Schedule, t_x: float, delta_tau: float) -> tuple[int, int]:
    """Grid steps (i_x, i_z): x = state before step i_x, z = state before step i_z (i_z >= i_x)."""
    i_x = schedule.step_index(t_x)
    if delta_tau <= 0:
        return i_x, i_x
    i_z = max(schedule.step_index(t_x - delta_tau), i_x + 1)
    return i_x, min(i_z, len(schedule))


def latent_pair(backbone: Backbone, x_T: torch.Tensor, noises: torch.Tensor | None, cond_o, cond_t,
                schedule: Schedule, i_x: int, i_z: int, eta: float, z_source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x = x_{T_x} (p_o trajectory) and z (p_t): branched from x, or independent from x_T."""
    x = denoise(backbone, x_T, schedule, cond_o, start=0, stop=i_x, eta=eta, noises=noises)
    if z_source == "branch":
        z = denoise(backbone, x, schedule, cond_t, start=i_x, stop=i_z, eta=eta, noises=noises)
    else:
        z = denoise(backbone, x_T, schedule, cond_t, start=0, stop=i_z, eta=eta, noises=noises)
    return x, z


# -- the method -----------------------------------------------------------------------------------

@register_method("avi")
class AVI(EditMethod):
    families = ("text",)
    Options = AVIOptions
    needs_prepare = True

    def _dims(self, backbone: Backbone) -> tuple[int, int, int]:
        _, hgt, wid = backbone.state_shape()
        k = self.options.k if self.options.k is not None else min(hgt, wid) // 2
        if 2 * k > min(hgt, wid):
            raise ConfigError("options.k", k, f"an integer with 2k <= {min(hgt, wid)} (the latent side)")
        width = self.options.width if self.options.width is not None else hgt * wid
        return hgt * wid, k, width

    def prepare(self, backbone: Backbone, ctx: PrepareContext) -> dict:
        if backbone.family != "text":
            raise ValueError("AVI needs a text-conditional backbone (prompt pairs)")
        o = self.options
        hw, k, width = self._dims(backbone)
        sampler = ctx.sampler
        schedule = Schedule.from_backbone(backbone, sampler.num_steps)
        i_x, i_z = edit_steps(schedule, o.t_x, o.delta_tau)
        rows = [(item, j, stable_seed("avi-train", ctx.seed, item.id, j))
                for item in ctx.suite.items for j in range(o.pairs_per_item)]
        xs, zs = [], []
        for start in range(0, len(rows), _GEN_CHUNK):
            chunk = rows[start:start + _GEN_CHUNK]
            x_T, noises = initial_noise([s for _, _, s in chunk], backbone.state_shape(), sampler.num_steps,
                                        sampler.eta, device=backbone.device)
            cond_o = make_condition(backbone, [it.prompt for it, _, _ in chunk], sampler.guidance_scale)
            cond_t = make_condition(backbone, [it.target_prompt or it.prompt for it, _, _ in chunk],
                                    sampler.guidance_scale)
            x, z = latent_pair(backbone, x_T, noises, cond_o, cond_t, schedule, i_x, i_z, sampler.eta, o.z_source)
            xs.append(x.cpu())
            zs.append(z.cpu())
        x_all, z_all = torch.cat(xs), torch.cat(zs)
        groups: dict[str, list[int]] = {}
        for n, (item, _, _) in enumerate(rows):
            groups.setdefault(item.id if o.train_scope == "item" else SUITE_KEY, []).append(n)
        mlps, stats = {}, {}
        for key, idx in groups.items():
            n_pairs = len(idx)
            spp = o.samples_per_pair if o.samples_per_pair is not None else (5000 if n_pairs == 1 else 500)
            cfg = TrainConfig(k=k, width=width, mlp_input=o.mlp_input, lambdas=tuple(o.lambdas), lr=o.lr,
                              batch_size=o.batch_size, epochs=o.epochs, samples_per_pair=spp, jitter=o.jitter,
                              composite=o.composite, svd_dtype=o.svd_dtype)
            mlp, st = train_mlp(x_all[idx], z_all[idx], cfg, stable_seed("avi-mlp", ctx.seed, key), backbone.device)
            mlps[key] = {name: t.detach().cpu() for name, t in mlp.state_dict().items()}
            stats[key] = {**st, "pairs": n_pairs, "samples_per_pair": spp,
                          "seeds": [rows[n][2] for n in idx]}
        return {"k": k, "width": width, "hw": hw, "mlp_input": o.mlp_input, "i_x": i_x, "i_z": i_z,
                "scope": o.train_scope, "mlps": mlps, "train_stats": stats}

    @staticmethod
    def _key(state: dict, request: EditRequest) -> str:
        return request.item.id if state["scope"] == "item" else SUITE_KEY

    def _mlp(self, state: dict, key: str, device: torch.device) -> AVIMLP:
        if key not in state["mlps"]:
            raise KeyError(f"AVI has no trained MLP for {key!r} (trained: {sorted(state['mlps'])})")
        cfg = TrainConfig(k=state["k"], width=state["width"], mlp_input=state["mlp_input"])
        mlp = build_mlp(state["hw"], cfg)
        mlp.load_state_dict(state["mlps"][key])
        return mlp.to(device).eval()

    @torch.no_grad()
    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        o = self.options
        lat = self.edit_latents(backbone, state, requests, sampler)
        schedule, i_x, x, y = lat["schedule"], lat["i_x"], lat["x"], lat["y"]
        cond_o = original_condition(backbone, requests, sampler)
        original = backbone.decode(denoise(backbone, x, schedule, cond_o, start=i_x, eta=sampler.eta,
                                           noises=lat["noises"]))
        cond_c = continuation_condition(backbone, requests, sampler, o.continue_prompt, o.continue_guidance)
        edited = backbone.decode(denoise(backbone, y, schedule, cond_c, start=i_x, eta=sampler.eta,
                                         noises=lat["noises"]))
        x_norm = x.flatten(1).norm(dim=1)
        info = [{"norm_ratio": float(lat["ratio"][n]), "i_x": i_x, "i_z": lat["i_z"], "k": state["k"],
                 "final_norm_ratio": float(y[n].norm() / x_norm[n]), "continue_prompt": o.continue_prompt,
                 "train_norm_ratio": state["train_stats"][self._key(state, r)].get("train_norm_ratio", float("nan"))}
                for n, r in enumerate(requests)]
        return pairs(original, edited, info)

    @torch.no_grad()
    def edit_latents(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
                     sampler: SamplerConfig) -> dict:
        """Steps 1-4 of the pipeline: x = x_{T_x}, z, and y_pred (the latent that replaces x at step i_x).

        Returns schedule, i_x, i_z, x, z, y (B, C, H, W), noises and ratio = ‖y‖_F/‖x‖_F before any renormalising.
        """
        o = self.options
        k = state["k"]
        schedule = Schedule.from_backbone(backbone, sampler.num_steps)
        i_x, i_z = edit_steps(schedule, o.t_x, o.delta_tau)
        x_T, noises = start_noise(backbone, requests, sampler)
        cond_o = original_condition(backbone, requests, sampler)
        cond_t = target_condition(backbone, requests, sampler)
        x, z = latent_pair(backbone, x_T, noises, cond_o, cond_t, schedule, i_x, i_z, sampler.eta, o.z_source)

        # S = f_θ(vec X) per channel, with each request's own MLP (per item or one for the suite).
        b, c = x.shape[:2]
        s = torch.empty(b, c, 2 * k, device=x.device)
        keys = [self._key(state, r) for r in requests]
        for key in dict.fromkeys(keys):
            rows = [n for n, kk in enumerate(keys) if kk == key]
            mlp = self._mlp(state, key, x.device)
            s[rows] = mlp(mlp_features(x[rows], z[rows], state["mlp_input"]))[0].float()

        u_a, v_a, _, _ = attribute_vectors(x, z, k, o.svd_dtype)
        gamma = torch.tensor([float(r.strength) for r in requests], device=x.device).view(b, 1)
        u_g, v_g = gamma_scale(u_a, v_a, k, gamma.expand(b, c), o.gamma_mode)
        y = compose(u_g, s, v_g)
        x_norm = x.flatten(1).norm(dim=1)
        ratio = y.flatten(1).norm(dim=1) / x_norm
        if o.renormalise:
            scale = x.flatten(2).norm(dim=2) / y.flatten(2).norm(dim=2).clamp_min(1e-12)
            y = y * scale[..., None, None]

        return {"schedule": schedule, "i_x": i_x, "i_z": i_z, "x": x, "z": z, "y": y, "noises": noises,
                "ratio": ratio}
