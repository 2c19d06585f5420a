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


def _unet_row_flops(backbone, control=None) -> float:
    """FLOPs of one UNet row (batch 1, one text conditioning), from a 2-row call (checked linear in the batch)."""
    from harness.diffusion.attention import attention_control

    counts = []
    for rows in (1, 2):
        x = torch.zeros((rows, *backbone.state_shape()))
        emb = backbone.encode_text([""] * rows)
        with attention_control(backbone.unet, control) if control else _nothing(), bench.OpFlops() as c:
            backbone.unet(x, 10, encoder_hidden_states=emb)
        counts.append(c.total)
    assert counts[1] == 2 * counts[0]
    return counts[0]


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_text_methods_flops_match_their_unet_call_counts(tmp_path) -> None:
    """sd, sdedit, sega, diffedit, p2p: the counted FLOPs per unit equal each algorithm's number of UNet rows (from
    the papers' step counts) times one row's FLOPs, plus two VAE decodes; P2P adds its mapper products."""
    import argparse

    from harness.diffusion.attention import attention_control
    from harness.models import load_backbone

    n = 4
    args = argparse.Namespace(model="tiny-sd", suite="hspace_paper", item="smile", units=1, batch_size=1, steps=n,
                              threads=1, compile=False, option=[])
    backbone = load_backbone("tiny-sd")
    row = _unet_row_flops(backbone)
    # P2P's processors materialise the attention probabilities; count its rows with them.
    row_p2p = _unet_row_flops(backbone, lambda p, layer, is_cross: p)
    with bench.OpFlops() as c:
        backbone.decode(torch.zeros((1, *backbone.state_shape())))
    decode = c.total
    shapes = []  # P2P: (heads, queries, keys) of each cross-attention layer, for its mapper products P_src @ M
    with attention_control(backbone.unet, lambda p, layer, is_cross: shapes.append(p.shape[1:]) or p if is_cross
                           else p):
        backbone.unet(torch.zeros((1, *backbone.state_shape())), 10, encoder_hidden_states=backbone.encode_text([""]))
    mapper = sum(2 * h * q * k * k for h, q, k in shapes)  # per step in the cross window (all 4: int(0.8 * 5) = 4)

    sdedit_steps = int(n * 0.6)
    diffedit_steps = int(n * 0.8)  # inversion (1 row, unconditional) and masked decoding (CFG, 2 rows)
    expected = {
        "sd": 4 * n * row,                                        # two CFG trajectories
        "sdedit": (2 * n + 2 * sdedit_steps) * row,               # original + re-run of the last ⌊N t0⌋ steps
        "sega": (2 * n + 4 * n) * row,                            # original + (uncond, prompt, 2 concepts) per step
        "diffedit": (2 * n + 3 * 10 + diffedit_steps + 2 * diffedit_steps) * row,  # + mask: 10 maps x 3 prompts
        "p2p": 4 * n * row_p2p + n * mapper,                      # [uncond Q, uncond R, Q, R] per step
    }
    for method, options in bench.FLOP_METHODS.items():
        margs = argparse.Namespace(**{**vars(args), "method": method, "option": options})
        counted = bench.edit_flops_per_image(margs, tmp_path, warm=True)
        assert counted == expected[method] + 2 * decode, (method, counted, expected[method] + 2 * decode)


def test_prepare_flops_are_counted_once_and_zero_without_a_prepare(tmp_path) -> None:
    """The table's `prepare` column: nothing for sd on tiny-sd (no prepare); for hspace-pca on the unconditional tiny model
    at least its PCA samples' trajectories (n_samples x N UNet rows), counted apart from the per-unit edit."""
    import argparse

    from harness.models import load_backbone

    n, n_samples = 3, 4
    backbone = load_backbone("tiny-unet")
    with bench.OpFlops() as c:
        backbone.unet(torch.zeros((1, *backbone.state_shape())), 10)
    row = c.total
    base = argparse.Namespace(model="tiny-unet", suite="hspace_paper", item="smile", units=1, batch_size=1, steps=n,
                              threads=1, compile=False)
    counts = {}
    for model, method, options in (("tiny-sd", "sd", []),
                                   ("tiny-unet", "hspace-pca", [f"n_samples={n_samples}", "n_components=2", "component=0"])):
        prepare = bench.OpFlops()
        margs = argparse.Namespace(**{**vars(base), "model": model, "method": method, "option": options})
        edit = bench.edit_flops_per_image(margs, tmp_path / method, prepare=prepare)
        counts[method] = (edit, prepare.total)
    assert counts["sd"][1] == 0
    edit, prepared = counts["hspace-pca"]
    assert prepared >= n_samples * n * row, (prepared, n_samples * n * row)
    assert edit == 2 * n * row, (edit, 2 * n * row)  # the original and the edited pass, not the PCA samples
