"""Train the embedded world CLIP: a small transformers CLIPModel on (render, caption) pairs of the train split.

    python -m harness.world.train_clip --out checkpoints/world-clip --minutes 12 --threads 1

Saves a transformers directory (CLIPModel in safetensors + CLIPProcessor: tokenizer and image processor) that
loads with `CLIPModel.from_pretrained(out, local_files_only=True)` and metrics.clip's HFClipScorer, plus
loss.csv, eval.csv (zero-shot accuracy at every save) and metrics.json (the final zero-shot evaluation).

Model: ViT on 32x32 with 4x4 patches; text transformer with the real CLIP BPE vocabulary (49,408 tokens,
harness.models._clip_tokenizer) and 77 positions, so its last hidden state conditions the text-to-image
model exactly as Stable Diffusion's text encoder does. The text width is kept at 32 because the token
embedding (49,408 x width fp32) dominates the size of every checkpoint that carries the text encoder.

Training data is generated online, in counterfactual groups (--group-size 4: a scene and variants that each
change one factor), so that a batch holds hard negatives for shape and position, not only for colour. Half
the captions are full (`caption(scene)`); the other half name a random subset of the factors ("a red shape",
"a circle on a blue background", "a small shape, top left"), which is what makes attribute prompts work
zero-shot. Since several images of a batch can fit a partial caption, the contrastive loss uses the true
match matrix (computed from the factors) as soft targets. Two aids for a short CPU budget: the vision
position embeddings start from 2-D sine-cosine codes (--pos-init-scale), and linear factor classifiers
shared by both embeddings add a cross-entropy term (--aux-weight; the heads are not saved).

Zero-shot evaluation: held-out renders, 100 x cosine logits against one prompt per value,
the world's `zero_shot_prompts` (shapes: "a circle", "a red shape", ...; faces: "a photo of a smiling person", ...).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.world._training import add_run_args, apply_run_args
from harness.world.registry import World, get_world, world_names

# OpenAI CLIP's normalisation (what CLIPImageProcessor applies by default).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

def build_clip(vision_width: int = 96, vision_layers: int = 3, vision_heads: int = 3, text_width: int = 32,
               text_layers: int = 3, text_heads: int = 1, projection_dim: int = 64):
    from transformers import CLIPConfig, CLIPModel

    # Heads of >= 32 dims: small heads hit a slow CPU attention backward (environment-notes §6).
    config = CLIPConfig(
        text_config=dict(
            hidden_size=text_width, intermediate_size=4 * text_width, num_hidden_layers=text_layers,
            num_attention_heads=text_heads, vocab_size=49408, max_position_embeddings=77,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=0, hidden_act="quick_gelu",
        ),
        vision_config=dict(
            image_size=32, patch_size=4, num_channels=3, hidden_size=vision_width,
            intermediate_size=4 * vision_width, num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads, hidden_act="quick_gelu",
        ),
        projection_dim=projection_dim,
    )
    return CLIPModel(config)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim) 2-D sine-cosine position codes, row-major like the patch sequence (MAE style)."""
    y, x = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                          indexing="ij")
    q = dim // 4
    omega = 1.0 / 100.0 ** (torch.arange(q, dtype=torch.float32) / q)
    x, y = x.flatten()[:, None] * omega, y.flatten()[:, None] * omega
    out = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    return F.pad(out, (0, dim - out.shape[1]))


def init_position_embeddings(model, scale: float = 0.5) -> None:
    """Start the vision position embeddings from 2-D sine-cosine codes comparable to the patch embeddings
    (std ~0.26 on renders) instead of N(0, 0.02): with the small random init a short run never learns
    where the object is (position stayed at chance, 1/9, over 1,400 steps), since the renders' patches
    carry no other position cue. They stay trainable."""
    emb = model.vision_model.embeddings
    grid = emb.image_size // emb.patch_size
    with torch.no_grad():
        emb.position_embedding.weight[1:] = scale * sincos_2d(emb.embed_dim, grid)
        emb.position_embedding.weight[0] = 0.0


def build_processor():
    from transformers import CLIPImageProcessor, CLIPProcessor

    from harness.models import _clip_tokenizer

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=_clip_tokenizer(77))


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) -> normalised (N, 3, 32, 32), what CLIPImageProcessor gives for 32 px input."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------- captions

def _world(world: World | str | None) -> World:
    return world if isinstance(world, World) else get_world(world or "shapes")


def scene_attrs(scene, world: World | str | None = None) -> dict[str, str]:
    """The scene's label for every caption group of its world (shapes: position = 'x/y')."""
    w = _world(world)
    return {g: w.group_label(scene.factors(), g) for g in w.groups}


def counterfactual_batch(n: int, seed: int, group_size: int = 4, world: World | str | None = None) -> list:
    """`n` train-split scenes in groups of `group_size`: a random scene, then variants of it that each change
    one random caption group (new jitter too). Colour alone tells most random scenes apart, so without such
    hard negatives shape, position and the small face parts are learnt slowly."""
    w = _world(world)
    groups = list(w.groups)
    rng = np.random.default_rng(seed)
    bases = w.sample(-(-n // group_size), seed, "train")
    train = set(w.split_combinations("train"))
    out: list = []
    for base in bases:
        out.append(base)
        for _ in range(group_size - 1):
            for _attempt in range(20):
                group = groups[rng.integers(len(groups))]
                labels = w.group_labels(group)
                f = w.with_group(base.factors(), group, labels[rng.integers(len(labels))])
                key = tuple(f[k] for k in w.factor_names)
                if key != base.key() and key in train:
                    break
            else:
                key = base.key()
            out.append(w.make_scene(key, rng))
    return out[:n]


def make_captions(scenes: Sequence, rng: np.random.Generator, partial_prob: float = 0.5,
                  world: World | str | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """A caption per scene (full, or naming a random non-empty subset of groups) and the groups it names."""
    w = _world(world)
    texts, named = [], []
    keys = list(w.groups)
    for scene in scenes:
        attrs = scene_attrs(scene, w)
        if rng.random() < partial_prob:
            keep = rng.random(len(keys)) < 0.5
            if not keep.any():
                keep[rng.integers(len(keys))] = True
            sub = {k: attrs[k] for k, m in zip(keys, keep) if m}
            texts.append(w.partial_caption(sub))
            named.append(sub)
        else:
            texts.append(w.caption(scene))
            named.append(attrs)
    return texts, named


def _attr_codes(attrs: dict[str, str], w: World) -> list[int]:
    """Index of each named group's label, -1 where the caption leaves it open."""
    return [w.group_labels(k).index(attrs[k]) if k in attrs else -1 for k in w.groups]


def match_matrix(named: Sequence[dict[str, str]], scenes: Sequence, world: World | str | None = None) -> torch.Tensor:
    """M[i, j] = 1 when scene j has every group label caption i names (float, (T, N))."""
    w = _world(world)
    k = len(w.groups)
    cap = np.array([_attr_codes(sub, w) for sub in named]).reshape(len(named), k)
    img = np.array([_attr_codes(scene_attrs(s, w), w) for s in scenes]).reshape(len(scenes), k)
    ok = (cap[:, None, :] < 0) | (cap[:, None, :] == img[None, :, :])
    return torch.from_numpy(ok.all(axis=2).astype(np.float32))


def soft_clip_loss(text_emb: torch.Tensor, image_emb: torch.Tensor, scale: torch.Tensor,
                   match: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with the match matrix as soft targets (= standard CLIP loss when match is I)."""
    logits = scale * F.normalize(text_emb, dim=-1) @ F.normalize(image_emb, dim=-1).T  # (T, N)
    t2i = -(match / match.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    i2t = -(match.T / match.T.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (t2i + i2t) / 2


class AuxHeads(torch.nn.Module):
    """Training aid, not saved: linear classifiers of every factor, shared by the image and text embeddings.

    They make each factor linearly readable from both embeddings along the same directions, which the
    contrastive loss alone learns slowly for the spatial factors (shape, position) in a short CPU budget.
    """

    def __init__(self, dim: int, world: World | str | None = None):
        super().__init__()
        w = _world(world)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(w.group_labels(k))) for k in w.groups)

    def loss(self, emb: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over groups; codes (B, groups) hold -1 where a caption leaves the group open."""
        emb = F.normalize(emb, dim=-1)
        losses = [F.cross_entropy(head(emb) * 10.0, codes[:, i], ignore_index=-1)
                  for i, head in enumerate(self.heads) if (codes[:, i] >= 0).any()]
        return torch.stack(losses).mean()


# ----------------------------------------------------------------------------- features and evaluation

@torch.no_grad()
def text_features(model, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    tok = tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
    out = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    return out if torch.is_tensor(out) else out.pooler_output


@torch.no_grad()
def image_features(model, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Projected CLIP image embeddings (unnormalised) of uint8 (N, 32, 32, 3) images."""
    feats = []
    for i in range(0, len(images), batch_size):
        out = model.get_image_features(pixel_values=pixel_values(images[i:i + batch_size]))
        feats.append(out if torch.is_tensor(out) else out.pooler_output)
    return torch.cat(feats)


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, images: np.ndarray, scenes: Sequence,
                       prompts: Mapping[str, Mapping[str, str]] | None = None,
                       world: World | str | None = None) -> dict[str, float]:
    """Per caption group: share of images whose highest-cosine prompt names the true label."""
    w = _world(world)
    prompts = w.zero_shot_prompts if prompts is None else prompts
    was_training = model.training
    model.eval()
    img = F.normalize(image_features(model, images), dim=-1)
    acc = {}
    for group, table in prompts.items():
        values = list(table)
        txt = F.normalize(text_features(model, tokenizer, [table[v] for v in values]), dim=-1)
        pred = (100.0 * img @ txt.T).argmax(1).tolist()
        acc[group] = float(np.mean([values[p] == w.group_label(s.factors(), group) for p, s in zip(pred, scenes)]))
    model.train(was_training)
    return acc


def heldout_eval_set(n: int, seed: int = 12345, world: World | str | None = None) -> tuple[list, np.ndarray]:
    w = _world(world)
    scenes = w.sample(n, seed, "heldout")
    return scenes, w.render_batch(scenes, w.resolution)


# ----------------------------------------------------------------------------- training

def save(out: Path, model, processor) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def main(argv: list[str] | None = None):
    """Train, save and evaluate; returns the trained CLIPModel."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", choices=world_names(), default="shapes", help="which procedural world to learn")
    p.add_argument("--out", type=Path, default=None,
                   help="default checkpoints/world-clip (shapes), checkpoints/<world>-clip otherwise")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--minutes", type=float, default=12.0, help="wall-clock budget (the lr follows a cosine over it)")
    p.add_argument("--group-size", type=int, default=4,
                   help="scenes per counterfactual group (1 = independent scenes)")
    p.add_argument("--pos-init-scale", type=float, default=0.5,
                   help="2-D sine-cosine init of the vision position embeddings (0: transformers' N(0, 0.02))")
    p.add_argument("--aux-weight", type=float, default=1.0,
                   help="weight of the factor-classification aid on both embeddings (0: plain CLIP loss)")
    p.add_argument("--partial-prob", type=float, default=0.5, help="share of captions naming only some factors")
    p.add_argument("--vision-width", type=int, default=96)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--vision-heads", type=int, default=3)
    p.add_argument("--text-width", type=int, default=32)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--text-heads", type=int, default=1)
    p.add_argument("--projection-dim", type=int, default=64)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--eval-samples", type=int, default=1000, help="held-out renders for the zero-shot eval")
    add_run_args(p)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path("checkpoints/world-clip" if args.world == "shapes" else f"checkpoints/{args.world}-clip")
    apply_run_args(args)
    world = get_world(args.world)
    model = build_clip(args.vision_width, args.vision_layers, args.vision_heads, args.text_width,
                       args.text_layers, args.text_heads, args.projection_dim)
    if args.pos_init_scale:
        init_position_embeddings(model, args.pos_init_scale)
    processor = build_processor()
    tokenizer = processor.tokenizer
    model.train()
    aux = AuxHeads(args.projection_dim, world)
    params = list(model.named_parameters()) + list(aux.named_parameters())
    decay = [q for n, q in params if q.ndim >= 2 and "embedding" not in n]
    no_decay = [q for n, q in params if not (q.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    eval_scenes, eval_images = heldout_eval_set(args.eval_samples, world=world)
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "loss.csv", "w", newline="")
    writer = csv.writer(log)
    writer.writerow(["step", "loss", "clip_loss", "aux_loss", "logit_scale", "seconds"])
    evals = open(args.out / "eval.csv", "w", newline="")
    eval_writer = csv.writer(evals)
    eval_writer.writerow(["step", "seconds", *world.zero_shot_prompts])
    rng = np.random.default_rng(args.seed)
    budget = args.minutes * 60
    start = time.time()
    step = 0

    def evaluate() -> dict[str, float]:
        acc = zero_shot_accuracy(model, tokenizer, eval_images, eval_scenes, world=world)
        eval_writer.writerow([step, f"{time.time() - start:.1f}", *(f"{acc[k]:.4f}" for k in world.zero_shot_prompts)])
        evals.flush()
        print(f"step {step} zero-shot " + " ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
        return acc

    while step < args.max_steps and time.time() - start < budget:
        scenes = counterfactual_batch(args.batch_size, args.seed * 1_000_003 + step, args.group_size, world)
        texts, named = make_captions(scenes, rng, args.partial_prob, world)
        tok = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                    pixel_values=pixel_values(world.render_batch(scenes, world.resolution)))
        scale = model.logit_scale.exp().clamp(max=100.0)
        clip_loss = soft_clip_loss(out.text_embeds, out.image_embeds, scale, match_matrix(named, scenes, world))
        aux_loss = torch.zeros(())
        if args.aux_weight:
            image_codes = torch.tensor([_attr_codes(scene_attrs(sc, world), world) for sc in scenes])
            text_codes = torch.tensor([_attr_codes(sub, world) for sub in named])
            aux_loss = (aux.loss(out.image_embeds, image_codes) + aux.loss(out.text_embeds, text_codes)) / 2
        loss = clip_loss + args.aux_weight * aux_loss
        frac = min(1.0, (time.time() - start) / budget)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for _, q in params], 1.0)
        opt.step()
        step += 1
        writer.writerow([step, f"{loss.item():.5f}", f"{clip_loss.item():.5f}", f"{aux_loss.item():.5f}",
                         f"{scale.item():.2f}", f"{time.time() - start:.1f}"])
        if step % 25 == 0:
            log.flush()
            print(f"step {step} loss {loss.item():.4f} (clip {clip_loss.item():.4f} aux {aux_loss.item():.4f}) "
                  f"scale {scale.item():.1f} lr {lr:.2e} "
                  f"{time.time() - start:.0f}s", flush=True)
        if step % args.save_every == 0:
            save(args.out, model, processor)
            evaluate()
    seconds = time.time() - start
    save(args.out, model, processor)
    acc = evaluate()
    log.close()
    evals.close()
    metrics = {
        "steps": step, "seconds": round(seconds, 1), "batch_size": args.batch_size,
        "zero_shot_accuracy": acc, "eval_split": "heldout", "eval_samples": args.eval_samples,
        "world": world.name, "prompts": world.zero_shot_prompts, "logit_scale_eval": 100.0,
        "parameters": sum(q.numel() for q in model.parameters()), "args": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"done: {step} steps in {seconds:.0f}s -> {args.out}; zero-shot "
          + " ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
    return model


if __name__ == "__main__":
    main()
