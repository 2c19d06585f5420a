"""Real images in: explicit conversion of any size and mode to the model's square RGB input."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Transform = Literal["center-crop", "resize"]


class UnreadableImage(ValueError):
    pass


def load_image(path: str | Path, resolution: int, transform: Transform = "center-crop") -> tuple[torch.Tensor, str]:
    """(image float (3, R, R) in [0, 1], sha256 of the file bytes).

    center-crop: scale the shorter side to R (bicubic), then crop the centre; resize: scale both sides
    to R, ignoring the aspect ratio. Any mode is converted to RGB (alpha composited on white).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        data = path.read_bytes()
        with Image.open(path) as opened:
            opened.load()
            img: Image.Image = opened
            if img.mode in ("RGBA", "LA", "P"):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UnreadableImage(f"unreadable image {path}: {type(exc).__name__}: {exc}") from exc
    if transform == "resize":
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    else:
        w, h = img.size
        scale = resolution / min(w, h)
        img = img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0, hashlib.sha256(data).hexdigest()
