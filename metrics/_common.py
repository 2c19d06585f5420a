"""Small helpers shared by the metric modules: content hashes, PNG reading, device choice."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_state_dict(module: torch.nn.Module) -> str:
    """Hash of parameter and buffer names, dtypes, shapes and values: identifies random weights too."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # view as bytes so bfloat16 and friends hash without a numpy dtype
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def decode_png_uint8(data: bytes, where: str = "<bytes>") -> torch.Tensor:
    """PNG/JPEG bytes -> uint8 (3, H, W). Refuses non-RGB modes instead of converting silently."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode != "RGB":
            raise ValueError(f"{where}: expected an 8-bit RGB image, got PIL mode {im.mode!r}")
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when torch sees it (never from Ray's CUDA_VISIBLE_DEVICES alone)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_uint8_images(x: torch.Tensor) -> None:
    if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        dtype = x.dtype if torch.is_tensor(x) else "-"
        raise ValueError(f"expected uint8 images of shape (N, 3, H, W), got {dtype} {shape}")
