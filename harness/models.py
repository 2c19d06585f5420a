"""Model catalog and loading.

A model is named in configs/models.yaml (a Hugging Face id, a local directory or a tiny-model
factory), or given directly as a local diffusers directory. Real weights load through diffusers'
own `from_pretrained`, offline (HF_HUB_OFFLINE=1); tiny random models are built from configs with
a fixed seed, so every worker process builds byte-identical weights.
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from harness.config import CONFIG_DIR, REPO_ROOT
from harness.errors import ConfigError, MissingWeightsError
from harness.hashing import file_sha256, stable_hash
from harness.schema import from_dict

if TYPE_CHECKING:  # the real import is inside load_backbone: torch and diffusers load only when a model does
    from harness.diffusion.backbone import Backbone

MODELS_FILE = CONFIG_DIR / "models.yaml"


@dataclass(frozen=True)
class ModelSpec:
    family: str
    """"unconditional" (UNet2DModel) or "text" (UNet2DConditionModel + text encoder, with a VAE when latent)."""
    pretrained: str | None = None
    """Hugging Face id or local directory loaded with diffusers' from_pretrained."""
    factory: str | None = None
    """Name of a random-weight builder in harness.models.FACTORIES (tests, architecture presets)."""
    description: str = ""
    name: str = ""

    def validate(self, prefix: str) -> None:
        if self.family not in ("unconditional", "text"):
            raise ConfigError(f"{prefix}.family", self.family, ["unconditional", "text"])
        if (self.pretrained is None) == (self.factory is None):
            raise ConfigError(prefix, self.pretrained or self.factory, "exactly one of `pretrained` or `factory`")
        if self.factory is not None and self.factory not in FACTORIES:
            raise ConfigError(f"{prefix}.factory", self.factory, sorted(FACTORIES))


# ---------------------------------------------------------------------------------------------
# Tiny and architecture-preset factories (random weights, fixed seed)

def _seeded(build: Callable[[], Any], seed: int = 0) -> Any:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@functools.lru_cache(maxsize=1)
def clip_tokenizer_dir() -> str:
    """A transformers CLIPTokenizer built offline from the CLIP BPE merges that open_clip ships.

    Its ids match OpenAI CLIP's tokenizer (49,408 tokens), so tiny text encoders tokenize like SD's.
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(tempfile.mkdtemp(prefix="clip-tokenizer-"))
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(out)


def _clip_tokenizer(max_length: int = 77) -> Any:
    from transformers import CLIPTokenizer

    d = clip_tokenizer_dir()
    # model_max_length must be set explicitly, else the pipeline overflows computing max_length.
    return CLIPTokenizer(f"{d}/vocab.json", f"{d}/merges.txt", pad_token="!", model_max_length=max_length)


DDIM_DEFAULTS: dict[str, Any] = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001,
                                     beta_end=0.02, clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                                     timestep_spacing="leading")
"""The factories' DDIM scheduler (each overrides only its betas)."""


def _ddim(**overrides: Any) -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**{**DDIM_DEFAULTS, **overrides})


def tiny_unet() -> dict[str, Any]:
    from diffusers import UNet2DModel

    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=None,
    )
    return {"unet": unet, "scheduler": _ddim(), "resolution": 32}


def tiny_sd() -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    ))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": _clip_tokenizer(),
            "scheduler": _ddim(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), "resolution": 32}


def arch_sd21_base() -> dict[str, Any]:
    """Stable Diffusion 2.1-base's architecture with random weights: real cost, no download."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024, use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        hidden_act="gelu", vocab_size=49408, max_position_embeddings=77, projection_dim=512,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    ))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": _clip_tokenizer(),
            "scheduler": _ddim(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), "resolution": 512}


def arch_ddpm_256() -> dict[str, Any]:
    """google/ddpm-ema-celebahq-256's architecture with random weights."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(
        sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    )
    return {"unet": unet, "scheduler": _ddim(), "resolution": 256}


FACTORIES: dict[str, Callable[[], dict[str, Any]]] = {
    "tiny-unet": tiny_unet,
    "tiny-sd": tiny_sd,
    "arch-sd21-base": arch_sd21_base,
    "arch-ddpm-256": arch_ddpm_256,
}


# ---------------------------------------------------------------------------------------------
# Catalog

def model_catalog(path: Path = MODELS_FILE) -> dict[str, ModelSpec]:
    raw = yaml.safe_load(path.read_text()) or {}
    return {name: from_dict(ModelSpec, {**spec, "name": name}, prefix=f"models[{name}]") for name, spec in raw.items()}


def _detect_family(directory: Path) -> str:
    index = directory / "model_index.json"
    if index.is_file():
        return "text" if "text_encoder" in json.loads(index.read_text()) else "unconditional"
    cfg = directory / "unet" / "config.json"
    cfg = cfg if cfg.is_file() else directory / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == "UNet2DConditionModel":
        return "text"
    return "unconditional"


def resolve_model(name: str) -> ModelSpec:
    """A catalog name, or a local diffusers directory; anything else is a config error."""
    catalog = model_catalog()
    if name in catalog:
        return catalog[name]
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSpec(family=_detect_family(path), pretrained=str(path.resolve()), name=name)
    raise ConfigError("models", name, sorted(catalog),
                      "unknown model; add it to configs/models.yaml or pass a local diffusers directory")


def _local_dir(spec: ModelSpec) -> Path:
    if spec.pretrained is None:  # a factory model (validate() allows exactly one of the two)
        raise ValueError(f"model {spec.name!r} is built by a factory and has no pretrained directory")
    path = Path(spec.pretrained).expanduser()
    if not path.is_absolute() and (REPO_ROOT / path).is_dir():
        return REPO_ROOT / path  # catalog paths such as checkpoints/world-ddpm are relative to the repository
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.pretrained, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, offline errors, bad repo ids
        raise MissingWeightsError(
            f"model {spec.name!r} ({spec.pretrained})",
            os.environ.get("HF_HOME", "~/.cache/huggingface"),
            f"models (or configs/models.yaml: {spec.name}.pretrained)",
            "download it where there is internet (`huggingface-cli download "
            f"{spec.pretrained}`) and copy the cache here, or point the model at a local directory",
        ) from exc


def _sub(directory: Path, name: str) -> dict[str, Any]:
    return {"subfolder": name} if (directory / name).is_dir() else {}


def _load_pretrained(spec: ModelSpec) -> dict[str, Any]:
    from diffusers import DDIMScheduler

    directory = _local_dir(spec)
    kw = {"local_files_only": True}
    scheduler = DDIMScheduler.from_pretrained(directory, **kw, **_sub(directory, "scheduler"))
    # The h-space paper's code forces clip_sample off for the CelebA-HQ DDPM; DDIM needs no clipping here.
    scheduler = DDIMScheduler.from_config(scheduler.config, clip_sample=False)
    if spec.family == "text":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        unet = UNet2DConditionModel.from_pretrained(directory, subfolder="unet", **kw)
        # Latent models have a VAE; pixel-space text-conditional models (the embedded world's) do not.
        vae = AutoencoderKL.from_pretrained(directory, subfolder="vae", **kw) if (directory / "vae").is_dir() else None
        parts = {
            "unet": unet, "vae": vae,
            "text_encoder": CLIPTextModel.from_pretrained(directory, subfolder="text_encoder", **kw),
            "tokenizer": CLIPTokenizer.from_pretrained(directory, subfolder="tokenizer", **kw),
        }
        factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        size = unet.config.sample_size
        parts["resolution"] = (size if isinstance(size, int) else size[0]) * factor
    else:
        from diffusers import UNet2DModel

        unet = UNet2DModel.from_pretrained(directory, **kw, **_sub(directory, "unet"))
        size = unet.config.sample_size
        parts = {"unet": unet, "resolution": size if isinstance(size, int) else size[0]}
    parts["scheduler"] = scheduler
    return parts


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def model_fingerprint(spec: ModelSpec) -> str:
    """Identifies the weights without loading them: factory name, or a checkpoint's configs and the
    sha256 of its weight files (retrained weights keep their configs; hashes are cached per path,
    size and mtime, so a process hashes each file once)."""
    if spec.factory:
        return stable_hash("factory", spec.family, spec.factory)
    try:
        directory = _local_dir(spec)
    except MissingWeightsError:
        return stable_hash("missing", spec.pretrained)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    configs = [(str(p.relative_to(directory)), p.read_text()) for p in files if p.suffix == ".json"]
    weights = [(str(p.relative_to(directory)), file_sha256(p)) for p in files if p.suffix in WEIGHT_SUFFIXES]
    return stable_hash("pretrained", spec.family, spec.pretrained, configs, weights)


def max_sampling_steps(spec: ModelSpec) -> int | None:
    """The most DDIM steps the model's scheduler can index, from its config (nothing is loaded, not even
    diffusers); None when the model is not available (loading it reports that).

    diffusers' "leading" spacing puts the first timestep at (n - 1) * (T // n) + steps_offset, which must stay
    below the T training timesteps: 1000 with steps_offset 1 allow 999 steps, not 1000. "linspace" and
    "trailing" stay below T for any n <= T."""
    if spec.factory:
        cfg = DDIM_DEFAULTS  # every factory samples on this grid; only their betas differ
    else:
        try:
            directory = _local_dir(spec)
        except MissingWeightsError:
            return None
        path = directory / "scheduler" / "scheduler_config.json"
        path = path if path.is_file() else directory / "scheduler_config.json"
        if not path.is_file():
            return None
        cfg = json.loads(path.read_text())
    total, offset = int(cfg.get("num_train_timesteps", 1000)), int(cfg.get("steps_offset", 0))
    if cfg.get("timestep_spacing", "leading") != "leading":
        return total
    return next((n for n in range(total, 0, -1) if (n - 1) * (total // n) + offset < total), None)


def load_backbone(name: str, device: str | None = None, dtype: Any = None) -> "Backbone":
    """Load a model by catalog name or directory onto `device` (default: CUDA when available)."""
    import torch

    from harness.diffusion.backbone import Backbone

    spec = resolve_model(name)
    from harness.diffusion.sampler import check_prediction_type

    parts = _seeded(FACTORIES[spec.factory]) if spec.factory else _load_pretrained(spec)
    check_prediction_type(parts["scheduler"], name)  # refused at load, before any work, not mid-trajectory
    backbone = Backbone(name=name, family=spec.family, fingerprint=model_fingerprint(spec), **parts).eval()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # fp32 is the checkpoints' dtype: casting to it again only triggers diffusers' keep-in-fp32 warning.
    return backbone.to(device, None if dtype in (None, torch.float32) else dtype)
