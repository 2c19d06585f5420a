"""Throughput of the harness against a bare loop of the same method code, and model-FLOP accounting.

    python benchmarks/bench.py                       # CPU defaults: tiny models, quick
    python benchmarks/bench.py --model arch-sd21-base --method sd --units 16 --batch-size 8 --steps 50
    python benchmarks/bench.py --write benchmarks/RESULTS.md

In one process it times (a) a bare loop calling the method's `edit` on the same batches with no
harness, (b) the same units through the in-process executor, (c) through Ray with one worker, and
prints images/s with each one's ratio to (a); for the SD baseline on a latent SD layout also (d) diffusers'
StableDiffusionPipeline built from the same components (the reference the baseline must match).
Timings are medians over --repeats after a warm-up, device-synchronised. It also counts the method's
model FLOPs per unit (torch's flop counter over one edit call on the real architecture: every UNet
forward, JVP and VJP) and reports achieved TFLOP/s against this device's measured dense matmul rate,
and times the metrics stage's feature models (Inception, CLIP, LPIPS) on images of the model's size.
--compile runs every path through torch.compile. Run it on an otherwise idle machine: every figure is
wall-clock.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _common import emit

import torch
import torch.utils._python_dispatch

from harness.config import run_config_from_dict
from harness.runner import execute, plan


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def method_options(pairs: list[str]) -> dict:
    """--option key=value pairs; values are YAML scalars as in a run config (2 is an int), dotted keys nest
    (scorer.kind=channel-mean is options {scorer: {kind: channel-mean}})."""
    import yaml

    out: dict = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def config(args: argparse.Namespace, kind: str, out: Path, run_id: str) -> dict:
    return {
        "run_id": run_id, "models": [args.model], "suites": [args.suite], "seeds": list(range(args.units)),
        "items": [args.item], "strengths": [1.0],
        "sampler": {"num_steps": args.steps, "eta": 0.0, "guidance_scale": 7.5},
        "methods": [{"name": args.method, "options": method_options(args.option)}],
        "executor": {"kind": kind, "batch_size": args.batch_size, "num_workers": 1, "threads": args.threads,
                     "compile": args.compile},
        "output_dir": str(out),
    }


def bare_setup(args: argparse.Namespace, out: Path, prepare_counter: OpFlops | None = None) -> tuple:
    """What the bare loop runs: the plan's batches, the method instance with its prepared state, the model.
    `prepare_counter`: an OpFlops that counts the method's one-off `prepare` (directions, calibration, training)."""
    from harness.models import load_backbone
    from harness.suites import load_suite, select_items
    from harness.worker import choose_dtype
    from harness.method_api import EditRequest, PrepareContext

    cfg = run_config_from_dict(config(args, "inprocess", out, "bare"))
    p = plan(cfg)
    method = p.methods[0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = load_backbone(args.model, device, choose_dtype("auto", device))
    if args.compile:
        from harness.diffusion.compile import compile_backbone

        compile_backbone(backbone)
    suite = select_items(load_suite(args.suite), cfg.items)
    instance = method.cls(method.options)
    state: Any = {}
    if method.cls.needs_prepare:
        with prepare_counter if prepare_counter is not None else contextlib.nullcontext():
            state = instance.prepare(backbone, PrepareContext(suite, cfg.sampler, 0))
    batches = [[EditRequest(u.key, suite.item(u.item_id), u.strength, u.noise_seed) for u in b.units]
               for b in p.batches]
    return batches, lambda reqs: instance.edit(backbone, state, reqs, cfg.sampler)


def bare_loop(args: argparse.Namespace, out: Path) -> float:
    """Seconds for all units: the method's own code on the same batches, no executor, no store."""
    batches, edit = bare_setup(args, out)
    sync()
    start = time.perf_counter()
    for reqs in batches:
        for o in edit(reqs):  # the harness converts to uint8 too; count it here so the comparison is fair
            (o.edited.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            (o.original.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    sync()
    return time.perf_counter() - start


class OpFlops(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts FLOPs of every dispatched op with torch.utils.flop_counter's formulas. FlopCounterMode itself
    adds module hooks that break functorch's vjp (the Jacobian and Park methods), so only its table is used."""

    def __init__(self) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry, self.total = flop_registry, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        count = self.registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **(kwargs or {}), out_val=out)
        return out


def edit_flops_per_image(args: argparse.Namespace, out: Path, warm: bool = False,
                         prepare: OpFlops | None = None) -> float:
    """Model FLOPs of the method's edit per unit (original + edited image), counted over one batch: every
    UNet forward, JVP and VJP, the VAE and the text encoder included. `warm`: count a second call of the same
    batch, after the backbone has cached the prompts' text embeddings (the text encoder then costs nothing).
    `prepare`: an OpFlops that counts the one-off preparation for the run's items (0 for methods without one)."""
    batches, edit = bare_setup(args, out, prepare)
    if warm:
        edit(batches[0])
    with OpFlops() as counter:
        edit(batches[0])
    return counter.total / len(batches[0])


# Text-editing methods whose FLOPs `--flops-only` tabulates by default (issue 18: "their FLOPs in the benchmark"),
# with the options of configs/baselines_world.yaml that change the count (SEGA's 2 attribute concepts, DiffEdit's
# 10 mask maps at strength 0.5 and encode ratio 0.8, SDEdit's t0 0.6); P2P at its defaults (no local blend).
FLOP_METHODS: dict[str, list[str]] = {
    "sd": [], "sdedit": ["t0=0.6"], "sega": ["concepts=attribute"], "diffedit": ["n_masks=10", "encode_ratio=0.8"],
    "p2p": [],
}
# Options of the h-space methods as configs/quickstart.yaml runs them on faces-ddpm (`--flops-only
# asyrp,random-direction,hspace-pca,jacobian,supervised --model faces-ddpm --suite faces_hspace`): the faces
# oracle and CLIP as scorers, one Asyrp training image (its FLOPs per image scale linearly).
_ORACLE = ["scorer.kind=oracle", "scorer.options.world=faces"]
FLOP_OPTIONS: dict[str, list[str]] = {
    **FLOP_METHODS,
    "asyrp": ["clip.backend=transformers", "clip.model=checkpoints/faces-clip", "n_train_images=1",
              "strength_scale=relative"],
    "random-direction": ["strength_scale=relative"],
    "hspace-pca": ["n_samples=64", "n_components=6", "strength_scale=relative", *_ORACLE,
                   "calibration.n_samples=8", "calibration.strengths=[0.5]"],
    "jacobian": ["k=3", "directions_from=reference", "convergence.max_iters=8", "convergence.patience=2",
                 "strength_scale=relative", *_ORACLE, "calibration.n_samples=8", "calibration.strengths=[0.5]"],
    "supervised": ["n_samples=64", "n_examples=8", "strength_scale=relative", "scorer.kind=clip",
                   "scorer.options.backend=transformers", "scorer.options.model=checkpoints/faces-clip"],
}


def flops_table(args: argparse.Namespace, methods: list[str]) -> list[str]:
    """Markdown lines: model FLOPs per unit of each method on the same model, item and grid, and the ratio to sd."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-flops-"))
    rows = {}
    try:
        for method in methods:
            options = args.option if method == args.method else FLOP_OPTIONS.get(method, [])
            margs = argparse.Namespace(**{**vars(args), "method": method, "option": options, "units": args.batch_size})
            prepare = OpFlops()
            rows[method] = (edit_flops_per_image(margs, tmp, prepare=prepare), options, prepare.total)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows["sd"][0] if "sd" in rows else None
    lines = [f"### Model FLOPs per unit on {args.model}: {args.suite}/{args.item}, {args.steps} DDIM steps, CFG 7.5 on text models, "
             f"batch {args.batch_size}", "",
             f"date {datetime.now(timezone.utc).date()}; torch {torch.__version__}; torch's flop counter over one edit "
             "call (original + edited image: every UNet, JVP/VJP, VAE and text-encoder call); prepare = the one-off "
             "`prepare` for this item (directions, calibration, training), once per run, not per unit", "",
             "| method | options | GFLOP per unit | ratio to sd | prepare GFLOP |", "|---|---|---:|---:|---:|"]
    for method, (flops, options, prepared) in rows.items():
        ratio = f"{flops / base:.3f}" if base else "n/a"
        lines.append(f"| {method} | {', '.join(options) or 'defaults'} | {flops / 1e9:.4f} | {ratio} | "
                     f"{prepared / 1e9:.4f} |")
    return lines


def diffusers_pipeline(args: argparse.Namespace) -> float:
    """Seconds for a StableDiffusionPipeline built from the same components to make the same trajectories:
    per unit one image from the original prompt and one from the target prompt, as the SD baseline does."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from harness.models import load_backbone
    from harness.suites import load_suite
    from harness.worker import choose_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    b = load_backbone(args.model, device, choose_dtype("auto", device))
    pipe = StableDiffusionPipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet,
                                   scheduler=DDIMScheduler.from_config(b.scheduler.config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if args.compile:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs" if device == "cuda" else "default")
    item = load_suite(args.suite).item(args.item)
    g = torch.Generator(device).manual_seed(0)
    pipe([item.prompt] * args.batch_size, num_inference_steps=args.steps, guidance_scale=7.5, generator=g,
         output_type="np", height=b.resolution, width=b.resolution)  # warm-up (and compile)
    sync()
    start = time.perf_counter()
    for i in range(0, args.units, args.batch_size):
        n = min(args.batch_size, args.units - i)
        for prompt in (item.prompt, item.target_prompt):
            images = pipe([prompt] * n, num_inference_steps=args.steps, guidance_scale=7.5, generator=g,
                          output_type="np", height=b.resolution, width=b.resolution).images
            (torch.from_numpy(images) * 255).round().to(torch.uint8)
    sync()
    return time.perf_counter() - start


def harness_run(args: argparse.Namespace, kind: str, out: Path, run_id: str) -> float:
    """Seconds for the same units through an executor, end to end (worker start and model load included),
    minus the one-off prepare time, which the bare loop does not time either."""
    p = plan(run_config_from_dict(config(args, kind, out, run_id)))
    start = time.perf_counter()
    summary = execute(p, progress=False)
    elapsed = time.perf_counter() - start
    assert summary.failed == 0, f"{summary.failed} units failed"
    from harness.store import RunStore

    rows = RunStore(Path(summary.run_dir)).read_rows()
    return elapsed - float(rows["prepare_seconds"].max() or 0.0)


def metrics_throughput(n: int, resolution: int, batch: int = 16) -> dict[str, float]:
    """Images/s of the metrics stage's feature models on n random uint8 images (random weights: the real
    architectures' cost; the real weights cannot be downloaded here). Inception is torchvision's InceptionV3
    architecture at 299 px, since torch-fidelity's extractor only builds from its weights file."""
    import torch.nn.functional as F
    import torchvision

    from metrics.clip import OpenClipScorer
    from metrics.lpips_metric import LPIPSMetric

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, resolution, resolution), generator=g, dtype=torch.uint8)
    inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).to(device).eval()
    inception.fc = torch.nn.Identity()  # pool3 features, as FID uses
    clip = OpenClipScorer("ViT-B-32", None, random_weights=True, device=device)
    lpips = LPIPSMetric("alex", random_backbone=True, device=device)

    def inception_features(x: torch.Tensor) -> None:
        x = F.interpolate(x.to(device).float() / 127.5 - 1, size=(299, 299), mode="bilinear", align_corners=False)
        inception(x)

    jobs = {"Inception features (FID/KID)": inception_features, "CLIP image features": clip.encode_images,
            "LPIPS (pairs)": lambda x: lpips(x, x.flip(0))}
    out = {}
    with torch.no_grad():
        for name, fn in jobs.items():
            fn(images[:batch])  # warm-up
            sync()
            start = time.perf_counter()
            for i in range(0, n, batch):
                fn(images[i:i + batch])
            sync()
            out[name] = n / (time.perf_counter() - start)
    return out


def matmul_rate() -> float:
    """Measured dense matmul FLOP/s on this device (bf16 on CUDA, fp32 on CPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 8192 if device == "cuda" else 1024
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads per worker: 1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-sd")
    ap.add_argument("--method", default="sd")
    ap.add_argument("--option", action="append", default=[], help="method option key=value")
    ap.add_argument("--suite", default="hspace_paper")
    ap.add_argument("--item", default="smile")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--metrics-images", type=int, default=32, help="images for the metrics-stage timing (0: skip)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet in every path (executor.compile)")
    ap.add_argument("--write", type=Path, help="append the table to this markdown file")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray path (gpu.sh --dry-run: seconds, not minutes)")
    ap.add_argument("--flops-only", nargs="?", const=",".join(FLOP_METHODS), metavar="METHODS",
                    help="only tabulate model FLOPs per unit of these comma-separated methods (default: "
                         f"{','.join(FLOP_METHODS)}); no timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.flops_only:
        emit(flops_table(args, args.flops_only.split(",")), args.write)
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    # Each path runs N and 2N units: end-to-end images/s includes fixed costs (Ray start, model load);
    # the marginal rate N / (t(2N) - t(N)) is the steady state a long leaderboard run sees.
    paths = {"bare loop": lambda a, r: bare_loop(a, tmp),
             "in-process executor": lambda a, r: harness_run(a, "inprocess", tmp, f"inproc{a.units}-{r}")}
    if not args.no_ray:
        paths["ray, 1 worker"] = lambda a, r: harness_run(a, "ray", tmp, f"ray{a.units}-{r}")
    if args.method == "sd" and args.model in ("tiny-sd", "arch-sd21-base", "sd21-base"):  # latent SD layouts
        # The reference the SD baseline must match: diffusers' own pipeline, same components and batch.
        paths["diffusers StableDiffusionPipeline"] = lambda a, r: diffusers_pipeline(a)
    small, large = argparse.Namespace(**vars(args)), argparse.Namespace(**{**vars(args), "units": 2 * args.units})
    results: dict[str, dict[int, list[float]]] = {name: {args.units: [], 2 * args.units: []} for name in paths}
    from harness.executors.ray_executor import ensure_ray

    if not args.no_ray:
        ensure_ray(None)  # one Ray instance for all repeats, as a cluster joined with --address would be
    try:
        bare_loop(args, tmp)  # warm-up: imports, model build, kernels
        for r in range(args.repeats):
            for name, run in paths.items():
                for a in (small, large):
                    results[name][a.units].append(run(a, r))
        per_image = edit_flops_per_image(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rate = matmul_rate()
    def rates(name: str) -> tuple[float, float]:
        t1, t2 = (statistics.median(results[name][n]) for n in (args.units, 2 * args.units))
        return 2 * args.units / t2, (args.units / (t2 - t1) if t2 > t1 else float("nan"))

    base_e2e, base = rates("bare loop")
    lines = [
        f"### {args.method} on {args.model}: {args.units} and {2 * args.units} units, batch {args.batch_size}, "
        f"{args.steps} DDIM steps",
        "",
        f"device: {device_name()}; date {datetime.now(timezone.utc).date()}; torch {torch.__version__}; "
        f"median of {args.repeats} after warm-up; load average at start {os.getloadavg()[0]:.2f}; "
        "the Ray instance is started once before timing (as when joining a cluster); actor start and "
        "model load are inside the timed region",
        "",
        "| path | images/s end to end (2N units) | ratio | images/s marginal (steady state) | ratio |",
        "|---|---|---|---|---|",
    ]
    for name in paths:
        e2e, marginal = rates(name)
        m = "n/a (timing noise exceeds the marginal cost)" if marginal != marginal else f"{marginal:.3f}"
        mr = "n/a" if marginal != marginal else f"{marginal / base:.3f}"
        lines.append(f"| {name} | {e2e:.3f} | {e2e / base_e2e:.3f} | {m} | {mr} |")
    if per_image:
        achieved = per_image * base
        lines += ["", f"Model FLOPs per unit (original + edited image; every UNet, JVP/VJP, VAE and text-encoder "
                      f"call of the edit, torch's flop counter): {per_image / 1e12:.5f} TFLOP; achieved (bare loop): {achieved / 1e12:.5f} TFLOP/s = "
                      f"{100 * achieved / rate:.1f}% of this device's measured dense matmul rate "
                      f"({rate / 1e12:.3f} TFLOP/s)"]
    if args.metrics_images:
        from harness.models import load_backbone

        resolution = load_backbone(args.model, "cpu").resolution
        per_model = metrics_throughput(args.metrics_images, resolution)
        metric_s = sum(1 / v for v in per_model.values())  # seconds per image for all three
        lines += ["", f"Metrics stage on {args.metrics_images} random {resolution}px images (random weights, real "
                      "architectures; batch 16): " + "; ".join(f"{k} {v:.2f} images/s" for k, v in per_model.items())
                  + f". All three: {metric_s:.4f} s per image = {100 * metric_s * base_e2e:.1f}% of the bare loop's "
                    "generation time per image (the GPU target is <= 10%)."]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
