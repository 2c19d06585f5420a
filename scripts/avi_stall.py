"""AVI ‖y‖/‖x‖ stall (issue 15 item 6/7; findings in methods/avi.py): closed-form optimum of L1 + L3 vs the trained
MLP on its training pair, then the ratio on held-out samples. Usage: PYTHONPATH=. python scripts/avi_stall.py"""
import sys
import time
import torch
from harness.models import load_backbone
from harness.config import SamplerConfig
from harness.suites import load_suite
from harness.diffusion import Schedule, initial_noise, make_condition
from methods.avi import attribute_vectors, edit_steps, latent_pair, compose, train_mlp, TrainConfig, mlp_features

torch.set_num_threads(1)
bb = load_backbone("world-text2img", device="cpu")
suite = load_suite("world")
item = suite.item("circle-large")
sampler = SamplerConfig(num_steps=20, eta=0.0, guidance_scale=5.0)
sched = Schedule.from_backbone(bb, 20)
i_x, i_z = edit_steps(sched, 0.7, 0.1)
print("state", bb.state_shape(), "i_x,i_z", i_x, i_z, sched.timesteps[i_x], sched.timesteps[i_z])
x_T, noises = initial_noise([123], bb.state_shape(), 20, 0.0)
co = make_condition(bb, [item.prompt], 5.0)
ct = make_condition(bb, [item.target_prompt], 5.0)
x, z = latent_pair(bb, x_T, noises, co, ct, sched, i_x, i_z, 0.0, "branch")
X, Z = x[0].double(), z[0].double()
k = X.shape[-1] // 2
print("|x|", float(X.norm()), "|z|", float(Z.norm()), "|x-z|/|x|", float((X - Z).norm() / X.norm()))
u_a, v_a, sx, sz = (t.double() for t in attribute_vectors(X, Z, k))
print("sigma_x[:4]", sx[0, :4].tolist(), "sigma_z[:4]", sz[0, :4].tolist())
topk = torch.stack([ (sx[c, :k] ** 2).sum().sqrt() for c in range(3)])
print("energy of x's top-k / |x| per channel", (topk / X.flatten(1).norm(dim=1)).tolist())
# closed form optimum of lam1 L1 + lam3 L3 over S, per channel
lam1 = lam3 = 10.0
S_opt = []
for c in range(3):
    U, V = u_a[c], v_a[c]
    G = (U.T @ U) * (V.T @ V)
    b = torch.einsum("hi,hw,wi->i", U, Z[c], V)
    S = torch.linalg.solve(lam1 * G + lam3 * torch.eye(2 * k, dtype=G.dtype), lam1 * b + lam3 * sz[c])
    S_opt.append(S)
S_opt = torch.stack(S_opt)
y_opt = compose(u_a, S_opt, v_a)
print("optimum: |y|/|x| =", float(y_opt.norm() / X.norm()), " |y-z|/|z| =", float((y_opt - Z).norm() / Z.norm()))
print("optimum S[0,:4]", S_opt[0, :4].tolist(), "S[0,-4:]", S_opt[0, -4:].tolist())
for spp, ep, width, lr in [(64, 2, 256, 1e-4), (500, 5, 256, 1e-4), (2000, 10, 256, 1e-3)]:
    cfg = TrainConfig(k=k, width=width, samples_per_pair=spp, epochs=ep, lr=lr)
    t0 = time.time()
    mlp, st = train_mlp(x, z, cfg, seed=0)
    with torch.no_grad():
        s = mlp(mlp_features(x[0], z[0], "x"))[0].double()
    y = compose(u_a, s, v_a)
    print(f"spp={spp} ep={ep} w={width} lr={lr}: steps {st['steps']} loss {st['first_loss']:.4g}->{st['final_loss']:.4g} "
          f"|y|/|x|={float(y.norm()/X.norm()):.3f} |S|/|S*|={float(s.norm()/S_opt.norm()):.3f} "
          f"S[0,:3]={s[0,:3].tolist()} ({time.time()-t0:.0f}s)")
    sys.stdout.flush()


# -- generalisation to samples the MLP was not trained on
def pairs(seeds):
    x_T, noises = initial_noise(seeds, bb.state_shape(), 20, 0.0)
    co = make_condition(bb, [item.prompt] * len(seeds), 5.0)
    ct = make_condition(bb, [item.target_prompt] * len(seeds), 5.0)
    return latent_pair(bb, x_T, noises, co, ct, sched, i_x, i_z, 0.0, "branch")

xtr, ztr = pairs(list(range(100, 108)))
xte, zte = pairs(list(range(200, 206)))
k = 16

def ratio(mlp, x, z):
    with torch.no_grad():
        s = mlp(mlp_features(x, z, "x"))[0]
    u, v, _, _ = attribute_vectors(x, z, k)
    y = compose(u, s, v)
    return (y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).tolist()

for n_pairs, spp, ep, lr in [(1, 500, 5, 1e-4), (1, 2000, 10, 1e-3), (8, 500, 5, 1e-4)]:
    t0 = time.time()
    mlp, st = train_mlp(xtr[:n_pairs], ztr[:n_pairs], TrainConfig(k=k, width=256, samples_per_pair=spp, epochs=ep, lr=lr), seed=0)
    r_tr, r_te = ratio(mlp, xtr[:n_pairs], ztr[:n_pairs]), ratio(mlp, xte, zte)
    print(f"pairs={n_pairs} spp={spp} ep={ep} lr={lr} steps={st['steps']}: train ratio {sum(r_tr)/len(r_tr):.3f}, "
          f"held-out ratio mean {sum(r_te)/len(r_te):.3f} min {min(r_te):.3f} max {max(r_te):.3f} ({time.time()-t0:.0f}s)", flush=True)
