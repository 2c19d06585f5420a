"""AVI (methods/avi.py): SVD algebra against torch.linalg.svd, losses against their formulas, training, end to end."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness.config import SamplerConfig, run_config_from_dict
from harness.runner import execute, plan
from harness.store import RunStore
from harness.suites import load_suite
from methods.avi import (
    AVI, AVIOptions, TrainConfig, attribute_vectors, avi_losses, compose, gamma_scale, reverse_composite_vectors,
    train_mlp,
)
from methods.base import EditRequest, PrepareContext

SIDE = 8
K = SIDE // 2
TINY = dict(samples_per_pair=16, epochs=1, batch_size=8, lr=1e-3)
SAMPLER = SamplerConfig(num_steps=5, eta=0.0, guidance_scale=7.5)


def to_u8(img: torch.Tensor) -> torch.Tensor:
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ref_svd(m: torch.Tensor):
    u, s, vh = torch.linalg.svd(m.double())
    return u, s, vh.T


def truncation(m: torch.Tensor, r: int) -> torch.Tensor:
    u, s, v = ref_svd(m)
    return (u[:, :r] * s[:r]) @ v[:, :r].T


# -- algebra --------------------------------------------------------------------------------------

def test_composite_reconstructs_x_with_singular_values() -> None:
    x = rand(SIDE, SIDE, seed=1)
    z = rand(SIDE, SIDE, seed=2)
    # A rank-k latent is reconstructed exactly from its own x block with S = [σ_x[:k], 0].
    u, s, v = ref_svd(x)
    x_rank_k = (u[:, :K] * s[:K]) @ v[:, :K].T
    u_a, v_a, sx, _ = attribute_vectors(x_rank_k, z, K)
    w = torch.cat([torch.linalg.svdvals(x_rank_k)[:K], torch.zeros(K, dtype=torch.float64)]).float()
    torch.testing.assert_close(compose(u_a, w, v_a).double(), x_rank_k, atol=1e-5, rtol=0)
    # Identical x and z, S = σ_x split between the two copies of each vector: the rank-k truncation of x.
    u_a, v_a, sx, sz = attribute_vectors(x, x, K)
    torch.testing.assert_close(sx, sz)
    half = torch.linalg.svdvals(x)[:K].float() / 2
    w = torch.cat([half, half.flip(0)])
    torch.testing.assert_close(compose(u_a, w, v_a).double(), truncation(x, K), atol=1e-5, rtol=0)
    # The z block alone with S = [0, J σ_z[:k]] gives z's rank-k truncation (checks the J ordering).
    u_a, v_a, _, sz = attribute_vectors(x, z, K)
    w = torch.cat([torch.zeros(K), torch.linalg.svdvals(z)[:K].float().flip(0)])
    torch.testing.assert_close(compose(u_a, w, v_a).double(), truncation(z, K), atol=1e-5, rtol=0)


def test_full_spectrum_reconstructs_full_rank_x_exactly() -> None:
    # 2k = side and z = x's tail (x minus its rank-k truncation, whose top-k vectors are x's vectors k..2k-1):
    # U_A then holds every singular vector of x once, and S = [σ_x[:k], J σ_x[k:]] must give back x itself.
    x = rand(SIDE, SIDE, seed=5)
    assert torch.linalg.matrix_rank(x) == SIDE
    z = x - truncation(x, K)
    u_a, v_a, sx, _ = attribute_vectors(x, z, K)
    sigma = torch.linalg.svdvals(x)
    w = torch.cat([sigma[:K], sigma[K:].flip(0)]).float()
    torch.testing.assert_close(compose(u_a, w, v_a).double(), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(sx.double(), sigma, atol=1e-5, rtol=0)
    # A rank-k latent with z = x: S = [σ_x[:k], 0] reproduces it.
    xk = rand(SIDE, K, seed=6) @ rand(K, SIDE, seed=7)
    u_a, v_a, _, _ = attribute_vectors(xk, xk, K)
    w = torch.cat([torch.linalg.svdvals(xk)[:K].float(), torch.zeros(K)])
    torch.testing.assert_close(compose(u_a, w, v_a).double(), xk, atol=1e-5, rtol=0)


def test_attribute_vectors_match_reference_svd_columns() -> None:
    x, z = rand(2, 3, SIDE, SIDE, seed=8), rand(2, 3, SIDE, SIDE, seed=9)
    u_a, v_a, sx, sz = attribute_vectors(x, z, K)
    assert u_a.shape == (2, 3, SIDE, 2 * K) and sx.shape == (2, 3, 2 * K)
    for b in range(2):
        for c in range(3):
            ux, _, vx = ref_svd(x[b, c])
            uz, _, vz = ref_svd(z[b, c])
            for j in range(K):
                # columns are equal up to the joint sign of (u_j, v_j); the rank-one products are sign-free
                for (u_ref, v_ref, col) in ((ux, vx, j), (uz, vz, 2 * K - 1 - j)):
                    torch.testing.assert_close(
                        torch.outer(u_a[b, c, :, col], v_a[b, c, :, col]).double(),
                        torch.outer(u_ref[:, j], v_ref[:, j]), atol=1e-5, rtol=0)


def test_reverse_composite_identity() -> None:
    x, z = rand(3, SIDE, SIDE, seed=10), rand(3, SIDE, SIDE, seed=11)
    u_a, v_a, _, _ = attribute_vectors(x, z, K)
    u_b, v_b = reverse_composite_vectors(u_a, v_a)
    w = torch.randn(3, 2 * K, generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(compose(u_b, w, v_b), compose(u_a, w.flip(-1), v_a), atol=1e-5, rtol=0)
    # and U_B really is the column-reversed U_A (z block first)
    torch.testing.assert_close(u_b[..., 0], u_a[..., 2 * K - 1])


def test_losses_match_formulas() -> None:
    n = 3
    x, z = rand(n, SIDE, SIDE, seed=13).float(), rand(n, SIDE, SIDE, seed=14).float()
    s = torch.randn(n, 2 * K, generator=torch.Generator().manual_seed(15))
    ds = torch.randn(n, 2 * K, generator=torch.Generator().manual_seed(16))
    u_a, v_a, sx, sz = attribute_vectors(x, z, K)
    got_a = avi_losses(s, ds, u_a, v_a, x, z, sx, sz, "A")
    got_b = avi_losses(s, ds, u_a, v_a, x, z, sx, sz, "B")
    J = torch.eye(2 * K).flip(1)  # permutation matrix that reverses columns
    for i in range(n):
        UA, VA = u_a[i].double(), v_a[i].double()
        UB, VB = UA @ J.double(), VA @ J.double()
        S, S2 = torch.diag(s[i].double()), torch.diag((s[i] + ds[i]).double())
        X, Z = x[i].double(), z[i].double()
        sx_ref = torch.linalg.svdvals(X)[: 2 * K]
        sz_ref = torch.linalg.svdvals(Z)[: 2 * K]
        fro2 = lambda m: float(torch.trace(m.T @ m))  # noqa: E731
        ref_a = [fro2(UA @ S @ VA.T - Z), fro2(UB @ S2 @ VB.T - X),
                 float(torch.dot(s[i].double() - sz_ref, s[i].double() - sz_ref)),
                 float(torch.dot((s[i] + ds[i]).double() - sx_ref, (s[i] + ds[i]).double() - sx_ref))]
        ref_b = [fro2(UB @ S2 @ VB.T - Z), fro2(UA @ S @ VA.T - X),
                 float(torch.dot((s[i] + ds[i]).double() - sz_ref, (s[i] + ds[i]).double() - sz_ref)),
                 float(torch.dot(s[i].double() - sx_ref, s[i].double() - sx_ref))]
        for j in range(4):
            assert got_a[i, j].item() == pytest.approx(ref_a[j], rel=1e-4, abs=1e-4)
            assert got_b[i, j].item() == pytest.approx(ref_b[j], rel=1e-4, abs=1e-4)


def test_gamma_zero_keeps_x_block_and_rows_mode_is_quadratic() -> None:
    x, z = rand(2, SIDE, SIDE, seed=17), rand(2, SIDE, SIDE, seed=18)
    s = torch.rand(2, 2 * K, generator=torch.Generator().manual_seed(19)) + 0.5
    u_a, v_a, _, _ = attribute_vectors(x, z, K)

    def expected(gz: float, i: int) -> torch.Tensor:
        ux, _, vx = ref_svd(x[i])
        uz, _, vz = ref_svd(z[i])
        w = s[i].double()
        xb = (ux[:, :K] * w[:K]) @ vx[:, :K].T
        zb = (uz[:, :K].flip(1) * w[K:]) @ vz[:, :K].flip(1).T
        return xb + gz * zb

    for mode, power in (("z_columns", 1), ("z_columns_and_rows", 2)):
        for gamma in (0.0, 0.5, 1.0, 2.0):
            u, v = gamma_scale(u_a, v_a, K, torch.full((2,), gamma), mode)
            y = compose(u, s, v)
            for i in range(2):
                torch.testing.assert_close(y[i].double(), expected(gamma**power, i), atol=1e-5, rtol=0)


# -- training -------------------------------------------------------------------------------------

def optimum_loss(u_a, v_a, x, z, sx, sz, composite: str) -> float:
    """Minimum of the (quadratic) objective over free S, ΔS per matrix, by L-BFGS: what a perfect MLP reaches."""
    s = torch.zeros(x.shape[0], 2 * K, requires_grad=True)
    ds = torch.zeros(x.shape[0], 2 * K, requires_grad=True)
    opt = torch.optim.LBFGS([s, ds], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = (avi_losses(s, ds, u_a, v_a, x, z, sx, sz, composite) * 10).sum(-1).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((avi_losses(s, ds, u_a, v_a, x, z, sx, sz, composite) * 10).sum(-1).mean())


@pytest.mark.parametrize("composite", ["A", "B"])
def test_training_moves_s_toward_singular_value_targets(composite: str) -> None:
    x = rand(1, 4, SIDE, SIDE, seed=20).float() * 2
    z = rand(1, 4, SIDE, SIDE, seed=21).float() * 2
    u_a, v_a, sx, sz = attribute_vectors(x[0], z[0], K)
    target_s, target_s2 = (sz, sx) if composite == "A" else (sx, sz)
    cfg = TrainConfig(k=K, width=64, samples_per_pair=480, epochs=1, batch_size=32, lr=1e-3, composite=composite)

    def distances(mlp):
        with torch.no_grad():
            s, ds = mlp(x[0].flatten(-2))
            loss = (avi_losses(s, ds, u_a, v_a, x[0], z[0], sx, sz, composite) * 10).sum(-1).mean()
        return float((s - target_s).norm()), float((s + ds - target_s2).norm()), float(loss)

    # lr ~ 0: the network as initialised (same seed, same init)
    init, _ = train_mlp(x, z, TrainConfig(**{**cfg.__dict__, "samples_per_pair": 1, "lr": 1e-12}), seed=3)
    trained, stats = train_mlp(x, z, cfg, seed=3)
    d0, d20, l0 = distances(init)
    d1, d21, l1 = distances(trained)
    assert stats["steps"] == 480 * 4 // 32
    # S (and S+ΔS) move toward σ_z / σ_x (L3/L4 targets; reading B swaps them) ...
    assert d1 < 0.8 * d0 and d21 < 0.8 * d20
    # ... and the objective gets close to its optimum over free (S, ΔS) (the losses conflict, so > 0).
    best = optimum_loss(u_a, v_a, x[0], z[0], sx, sz, composite)
    assert l1 - best < 0.1 * (l0 - best)


def test_training_is_deterministic_with_jitter() -> None:
    x, z = rand(1, 2, SIDE, SIDE, seed=22).float(), rand(1, 2, SIDE, SIDE, seed=23).float()
    cfg = TrainConfig(k=K, width=16, samples_per_pair=20, epochs=2, batch_size=8, jitter=0.05)
    a, _ = train_mlp(x, z, cfg, seed=7)
    b, _ = train_mlp(x, z, cfg, seed=7)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


# -- the method on tiny-sd ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backbone():
    from harness.models import load_backbone

    return load_backbone("tiny-sd")


@pytest.fixture(scope="module")
def suite():
    s = load_suite("svd_paper")
    return replace(s, items=tuple(it for it in s.items if it.id in ("person-male", "person-old")))


@pytest.fixture(scope="module")
def prepared(backbone, suite):
    method = AVI(AVIOptions(**TINY))
    state = method.prepare(backbone, PrepareContext(suite=suite, sampler=SAMPLER, seed=123))
    return method, state


def test_prepare_state(prepared, backbone) -> None:
    _, state = prepared
    assert state["k"] == 8 and state["width"] == 256 and state["hw"] == 256
    assert sorted(state["mlps"]) == ["person-male", "person-old"]
    assert state["mlps"]["person-male"]["head_s.weight"].shape == (16, 256)
    assert state["i_z"] > state["i_x"]
    assert state["train_stats"]["person-male"]["samples_per_pair"] == 16


def test_edit_is_deterministic_and_logs_norm_ratio(prepared, backbone, suite) -> None:
    method, state = prepared
    reqs = [EditRequest("a", suite.items[0], 1.0, 5), EditRequest("b", suite.items[1], 0.5, 6)]
    out1 = method.edit(backbone, state, reqs, SAMPLER)
    out2 = method.edit(backbone, state, reqs, SAMPLER)
    for o1, o2 in zip(out1, out2):
        assert torch.equal(to_u8(o1.edited), to_u8(o2.edited))
        assert torch.equal(to_u8(o1.original), to_u8(o2.original))
        assert o1.edited.shape == (3, 32, 32)
        assert o1.info["norm_ratio"] > 0 and o1.info["norm_ratio"] == o1.info["final_norm_ratio"]
    # The original is the plain original-prompt trajectory.
    from methods._common import generate

    plain = generate(backbone, reqs, SAMPLER)
    assert torch.equal(to_u8(plain[0]), to_u8(out1[0].original))
    # Renormalised outputs have unit final norm ratio.
    renorm = AVI(AVIOptions(**TINY, renormalise=True)).edit(backbone, state, reqs[:1], SAMPLER)
    assert renorm[0].info["final_norm_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert renorm[0].info["norm_ratio"] == pytest.approx(out1[0].info["norm_ratio"], rel=1e-6)


def test_independent_z_source_and_suite_scope(backbone, suite) -> None:
    method = AVI(AVIOptions(**TINY, z_source="independent", train_scope="suite", mlp_input="concat"))
    one = replace(suite, items=suite.items[:1])
    state = method.prepare(backbone, PrepareContext(suite=one, sampler=SAMPLER, seed=1))
    assert list(state["mlps"]) == ["__suite__"]
    out = method.edit(backbone, state, [EditRequest("a", suite.items[0], 1.0, 5)], SAMPLER)
    assert torch.isfinite(out[0].edited).all()


def test_runs_end_to_end_through_harness(tmp_path) -> None:
    cfg = run_config_from_dict({
        "run_id": "avi-e2e", "models": ["tiny-sd"], "suites": ["svd_paper"], "items": ["person-male"],
        "seeds": [0, 1], "strengths": [0.0, 1.0], "sampler": {"num_steps": 5, "eta": 0.0, "guidance_scale": 7.5},
        "methods": [{"name": "avi", "options": {"samples_per_pair": 4, "epochs": 1, "width": 32,
                                                 "lambdas": [10, 10, 1, 1], "gamma_mode": "z_columns_and_rows"}}],
        "executor": {"kind": "inprocess", "batch_size": 2}, "output_dir": str(tmp_path),
    })
    summary = execute(plan(cfg), progress=False)
    rows = RunStore(cfg.run_dir).read_rows()
    assert summary.failed == 0 and len(rows) == 4
    assert (rows["status"] == "done").all(), rows.get("error")
    infos = [json.loads(i) for i in rows["info"]]
    assert all(i["norm_ratio"] > 0 and i["k"] == 8 for i in infos)


# -- continuation after the edit step -------------------------------------------------------------

def test_continuation_options_follow_their_definition(prepared, backbone, suite) -> None:
    """empty at guidance 1 = an explicit unconditional DDIM continuation from y; the default continues with
    the original prompt at the run's CFG (the paper's reading); target differs from both."""
    from tests.methods.continuation import explicit_continuation

    method, state = prepared
    reqs = [EditRequest("a", suite.items[0], 1.0, 5)]
    lat = method.edit_latents(backbone, state, reqs, SAMPLER)
    outs = {p: AVI(AVIOptions(**TINY, continue_prompt=p, continue_guidance=g)).edit(backbone, state, reqs, SAMPLER)[0]
            for p, g in (("empty", 1.0), ("original", None), ("target", None))}
    empty = explicit_continuation(backbone, lat["y"], lat["i_x"], SAMPLER.num_steps, "", 1.0)
    torch.testing.assert_close(outs["empty"].edited, empty[0], atol=2e-5, rtol=0)
    original = explicit_continuation(backbone, lat["y"], lat["i_x"], SAMPLER.num_steps, reqs[0].item.prompt, 7.5)
    torch.testing.assert_close(outs["original"].edited, original[0], atol=2e-5, rtol=0)
    assert not torch.allclose(outs["target"].edited, outs["original"].edited, atol=1e-3)
    assert all(torch.equal(o.original, outs["original"].original) for o in outs.values())  # the unedited image
    assert outs["empty"].info["continue_prompt"] == "empty"


def test_training_reaches_the_closed_form_optimum_on_its_pair() -> None:
    """With ΔS free, L2 and L4 only fix S+ΔS, so S minimises λ1‖U_A diag(S) V_Aᵀ − Z‖² + λ3‖S − σ_z‖²: the
    ridge system (λ1 G + λ3 I) S = λ1 b + λ3 σ_z, G_ij = (u_i·u_j)(v_i·v_j), b_i = u_iᵀ Z v_i. A trained MLP
    must reach it on the pair it was trained on (and so must ‖y‖/‖x‖, recorded as train_norm_ratio)."""
    x = rand(1, 2, SIDE, SIDE, seed=30).float()
    z = x + 0.3 * rand(1, 2, SIDE, SIDE, seed=31).float()
    u_a, v_a, _, sz = (t.double() for t in attribute_vectors(x[0], z[0], K))
    opt = []
    for c in range(2):
        gram = (u_a[c].T @ u_a[c]) * (v_a[c].T @ v_a[c])
        b = torch.einsum("hi,hw,wi->i", u_a[c], z[0, c].double(), v_a[c])
        opt.append(torch.linalg.solve(10 * gram + 10 * torch.eye(2 * K, dtype=gram.dtype), 10 * b + 10 * sz[c]))
    s_opt = torch.stack(opt)
    cfg = TrainConfig(k=K, width=64, samples_per_pair=2000, epochs=2, batch_size=32, lr=1e-3)
    mlp, stats = train_mlp(x, z, cfg, seed=0)
    with torch.no_grad():
        s = mlp(x[0].flatten(-2))[0].double()
    torch.testing.assert_close(s, s_opt, atol=0.02 * float(s_opt.abs().max()), rtol=0)
    ratio = compose(u_a, s_opt, v_a).flatten(1).norm(dim=1) / x[0].double().flatten(1).norm(dim=1)
    assert stats["train_norm_ratio"] == pytest.approx(float(ratio.mean()), rel=0.02)
