"""CLIP scoring: per-image CLIP score, its aggregate, and zero-shot attribute scores.

Conventions (torchmetrics CLIPScore; seed-003 Table I):
- per-image CLIP score = 100·cos(E_img, E_txt), *not* clamped;
- aggregate = max(mean, 0) (the clamp applies to the mean only);
- s_a(I) = softmax(logit_scale·[cos(I, pos_a), cos(I, neg_a)])[0], logit_scale 100 by default.

Models come from local files only: open_clip (model name + local checkpoint, or a local model-config
json), a transformers CLIPModel directory, or a model registered in code with `register_clip_model`
(the hook for the project's own small CLIP).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from harness.errors import ConfigError, MissingWeightsError
from harness.registry import Registry
from metrics._common import check_uint8_images, resolve_device, sha256_file, sha256_json, sha256_state_dict
from metrics._stage import StageContext, StageOutput, cached_values, mean_aggregates, per_image_frame
from metrics.provenance import Provenance
from metrics.registry import MetricSpec, register_metrics

# Seed 003 Table I prompts [paper]: attribute -> (positive, negative).
TABLE_I_PROMPTS: dict[str, tuple[str, str]] = {
    "smile": ("A smiling person", "A person"),
    "glasses": ("A person wearing glasses", "A person"),
    "hat": ("A person wearing a hat", "A person"),
    "gender": ("A man", "A woman"),
    "age": ("An old person", "A young person"),
}


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def clip_score_from_features(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Per-pair 100·cos(image_i, text_i), unclamped; inputs need not be normalised."""
    return 100.0 * (_l2(image_features.double()) * _l2(text_features.double())).sum(dim=-1)


def aggregate_clip_score(scores: torch.Tensor | Sequence[float]) -> float:
    """max(mean, 0): torchmetrics' CLIPScore.compute() convention."""
    return max(float(np.mean(np.asarray(scores, dtype=np.float64))), 0.0)


def zero_shot_attribute_score(image_features: torch.Tensor, pos_features: torch.Tensor,
                              neg_features: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """softmax(logit_scale·[cos(I,pos), cos(I,neg)])[0] per image; pos/neg are single (d,) vectors."""
    img = _l2(image_features.double())
    logits = logit_scale * torch.stack([img @ _l2(pos_features.double()), img @ _l2(neg_features.double())], -1)
    return torch.softmax(logits, dim=-1)[..., 0]


class CLIPScorer(ABC):
    """A CLIP-like model behind one interface; also usable as an ImageEncoder FID backbone."""

    name: str
    embed_dim: int
    weights_sha256: str
    resize: str
    implementation: str
    library_version: str
    device: torch.device

    @abstractmethod
    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> raw image embeddings (N, d)."""

    @abstractmethod
    def _text_features(self, texts: list[str]) -> torch.Tensor:
        """Texts -> raw text embeddings (N, d)."""

    max_text_tokens: int | None = None
    """Context length of the text tower: longer texts are truncated to it (CLIP: 77); None when unknown."""

    def text_token_count(self, text: str) -> int | None:
        """Tokens of `text` with the start and end tokens, before any truncation; None when unknown."""
        return None

    def truncation_notes(self, texts: Sequence[str]) -> list[str]:
        """Per text: "" or a note that the text tower saw only its first max_text_tokens tokens."""
        notes = []
        for t in texts:
            limit = self.max_text_tokens
            n = self.text_token_count(t) if limit else None
            notes.append(f"text truncated to {limit} of its {n} tokens"
                         if n is not None and limit is not None and n > limit else "")
        return notes

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        check_uint8_images(images)
        f = self._image_features(images).float().cpu()
        return _l2(f) if normalize else f

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> L2-normalised (N, d) on the CPU."""
        return self.image_embeddings(images, normalize=True)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> L2-normalised (N, d) on the CPU."""
        return _l2(self._text_features(list(texts)).float().cpu())

    def clip_scores(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Per-pair 100·cos(image_i, text_i), float64 (N,)."""
        if len(texts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(texts)} texts")
        return clip_score_from_features(self.encode_images(images), self.encode_texts(texts))


class ZeroShotAttributeScorer:
    """Callable image batch -> {attribute: s_a (N,)}; the scorer shape disentanglement.py expects."""

    def __init__(self, scorer: CLIPScorer, prompts: Mapping[str, tuple[str, str]], logit_scale: float = 100.0):
        self.prompts, self.logit_scale, self.scorer = dict(prompts), logit_scale, scorer
        attrs = list(self.prompts)
        feats = scorer.encode_texts([p for a in attrs for p in self.prompts[a]])  # (2A, d): pos, neg, pos, ...
        self._text = {a: (feats[2 * i], feats[2 * i + 1]) for i, a in enumerate(attrs)}

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        img = self.scorer.encode_images(images)
        return {a: zero_shot_attribute_score(img, pos, neg, self.logit_scale) for a, (pos, neg) in self._text.items()}


class CallableCLIPScorer(CLIPScorer):
    """Wraps two functions (uint8 images -> features, texts -> features): for embedded/project models."""

    def __init__(self, name: str, image_fn: Callable[[torch.Tensor], torch.Tensor],
                 text_fn: Callable[[list[str]], torch.Tensor], embed_dim: int, weights_sha256: str,
                 resize: str, implementation: str = "embedded", library_version: str = "") -> None:
        self.name, self.embed_dim, self.weights_sha256, self.resize = name, embed_dim, weights_sha256, resize
        self.implementation, self.library_version = implementation, library_version
        self._image_fn, self._text_fn, self.device = image_fn, text_fn, torch.device("cpu")

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self._image_fn(images)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return self._text_fn(texts)


class OpenClipScorer(CLIPScorer):
    """open_clip model; images go through open_clip's own (PIL) eval preprocessing."""

    def __init__(self, model: str, pretrained: str | None, model_config: str | None = None,
                 random_weights: bool = False, device: str = "cpu", seed: int = 0) -> None:
        import open_clip

        if model_config is not None:
            if not Path(model_config).is_file():
                raise ConfigError("metrics.clip.model_config", model_config,
                                  remedy="point it at an open_clip model json")
            if Path(model_config).stem != model:
                raise ConfigError("metrics.clip.model", model, [Path(model_config).stem],
                                  "open_clip names a model-config json by its file stem")
            open_clip.add_model_config(model_config)
        if model not in open_clip.list_models():
            raise ConfigError("metrics.clip.model", model, remedy="use a name from open_clip.list_models() "
                              "or give metrics.clip.model_config")
        if random_weights:
            pretrained = None
        elif pretrained is None or not Path(pretrained).is_file():
            raise MissingWeightsError(f"open_clip {model} weights", str(pretrained or "<unset>"),
                                      "metrics.clip.pretrained", "set it to a local checkpoint file (hub tags "
                                      "such as 'openai' download and are refused offline)")
        self.device = resolve_device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained)
        self.model = self.model.to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        self.max_text_tokens = int(getattr(self.tokenizer, "context_length", 0)) or None
        self.name, self.embed_dim = model, int(open_clip.get_model_config(model)["embed_dim"])
        self.weights_sha256 = sha256_file(pretrained) if pretrained else sha256_state_dict(self.model)
        steps = [repr(t) for t in getattr(self.preprocess, "transforms", [])
                 if "Resize" in repr(t) or "Crop" in repr(t)]
        self.resize = "open_clip eval: " + " + ".join(steps) + (" (RANDOM WEIGHTS)" if random_weights else "")
        self.implementation, self.library_version = "open_clip", version("open_clip_torch")

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        pils = [Image.fromarray(im.permute(1, 2, 0).cpu().numpy()) for im in images]
        pixels = torch.stack([self.preprocess(p) for p in pils]).to(self.device)
        return self.model.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def text_token_count(self, text: str) -> int | None:
        encode = getattr(self.tokenizer, "encode", None)  # SimpleTokenizer: BPE ids without start/end tokens
        return len(encode(text)) + 2 if encode is not None else None


def tensor_feat_clip_class() -> Any:
    """transformers CLIPModel whose get_*_features return Tensors (transformers 5 returns ModelOutputs).

    Also the adapter torchmetrics' CLIPScore needs under transformers 5 (environment-notes §5).
    """
    from transformers import CLIPModel

    class TensorFeatCLIP(CLIPModel):
        def get_image_features(self, *a: Any, **k: Any) -> torch.Tensor:
            o = super().get_image_features(*a, **k)
            return o if torch.is_tensor(o) else o.pooler_output

        def get_text_features(self, *a: Any, **k: Any) -> torch.Tensor:
            o = super().get_text_features(*a, **k)
            return o if torch.is_tensor(o) else o.pooler_output

    return TensorFeatCLIP


class HFClipScorer(CLIPScorer):
    """transformers CLIPModel + CLIPProcessor from a local directory (torchmetrics' preprocessing path)."""

    def __init__(self, model_dir: str, random_weights: bool = False, device: str = "cpu", seed: int = 0) -> None:
        from transformers import CLIPConfig, CLIPProcessor

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise MissingWeightsError(f"transformers CLIP model {model_dir}", str(path), "metrics.clip.model",
                                      "set it to a local directory written by save_pretrained")
        cls = tensor_feat_clip_class()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(CLIPConfig.from_pretrained(path)) if random_weights else \
                cls.from_pretrained(path, local_files_only=True)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
        self.weights_sha256 = sha256_state_dict(self.model) if random_weights or not files else \
            sha256_json([(p.name, sha256_file(p)) for p in files])
        ip = self.processor.image_processor
        self.resize = (f"{type(ip).__name__}: resize {dict(ip.size)} resample={ip.resample} + "
                       f"center_crop {dict(ip.crop_size)}" + (" (RANDOM WEIGHTS)" if random_weights else ""))
        self.name, self.embed_dim = path.name, int(self.model.config.projection_dim)
        self.max_len = int(self.model.config.text_config.max_position_embeddings)
        self.max_text_tokens = self.max_len
        self.implementation, self.library_version = "transformers", version("transformers")

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=[im.cpu() for im in images], return_tensors="pt")["pixel_values"]
        return self.model.get_image_features(pixel_values=pixels.to(self.device))

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        tok = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_len)
        return self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                            attention_mask=tok["attention_mask"].to(self.device))

    def text_token_count(self, text: str) -> int | None:
        return len(self.processor.tokenizer(text, truncation=False)["input_ids"])


_CLIP_MODELS: Registry[Callable[..., CLIPScorer]] = Registry("CLIP model", "metrics.clip.model")


def register_clip_model(name: str) -> Callable[[Callable[..., CLIPScorer]], Callable[..., CLIPScorer]]:
    """Register `factory(device=..., seed=...) -> CLIPScorer` for `backend: registered, model: name`."""
    return _CLIP_MODELS.register(name)


CLIP_BACKENDS = ("open_clip", "transformers", "registered")


def load_clip_scorer(backend: str, model: str, pretrained: str | None = None, model_config: str | None = None,
                     random_weights: bool = False, device: str = "cpu", seed: int = 0) -> CLIPScorer:
    """Build a CLIPScorer from config values (metrics.clip.*); never downloads."""
    if backend == "open_clip":
        return OpenClipScorer(model, pretrained, model_config, random_weights, device, seed)
    if backend == "transformers":
        return HFClipScorer(model, random_weights, device, seed)
    if backend == "registered":
        return _CLIP_MODELS.get(model)(device=device, seed=seed)
    raise ConfigError("metrics.clip.backend", backend, CLIP_BACKENDS)


# -- the metrics-stage step ----------------------------------------------------------------------------

def _text_for(done: Any) -> list[str]:
    """CLIP text: the target prompt, or the prompt when the target is empty."""
    return [t if isinstance(t, str) and t.strip() else p for t, p in zip(done["target_prompt"], done["prompt"])]


@register_metrics("clip_score", MetricSpec("clip_score", "per_image", "max", clamp_mean=True), order=10)
def clip_score_stage(ctx: StageContext) -> StageOutput:
    """Per-image 100·cos(edit, text); a text longer than the text tower's context is noted in the row's warning."""
    if ctx.scorer is None or not ctx.config.clip.enabled or not len(ctx.done):
        return StageOutput()
    done, store, scorer = ctx.done, ctx.store, ctx.scorer
    texts, rels = _text_for(done), list(done["edited_path"])
    keys = [sha256_json([store.sha(r), t]) for r, t in zip(rels, texts)]
    shapes = [store.info(r)[1] for r in rels]

    def compute(b: list[int]) -> dict[str, np.ndarray]:
        return {"clip_score": scorer.clip_scores(store.load_batch([rels[i] for i in b]), [texts[i] for i in b]).numpy()}

    prov = Provenance.of("clip_score", scorer)
    values = cached_values(done, ["clip_score"], prov, keys, shapes, compute, ctx.config.clip.batch_size, ctx.cache)
    per = per_image_frame(done, values, prov)
    notes = scorer.truncation_notes(texts)
    per["warning"] = notes
    for u, note in zip(done["unit_key"], notes):
        if note:  # the value stands (torchmetrics truncates too), but the group's aggregate says so
            ctx.note("clip_score", u, f"clip_score: unit {u}: {note}")
    return StageOutput(per, [mean_aggregates(per, "clip_score", ctx, clamp=True)])
