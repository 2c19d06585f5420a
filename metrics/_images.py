"""Reading the PNGs a run wrote: content hashes, header-only shapes, decoding in equal-shape batches."""
from __future__ import annotations

import io
from itertools import groupby
from pathlib import Path
from typing import Hashable, Sequence

import torch
from PIL import Image

from metrics._common import decode_png_uint8, sha256_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageStore:
    """Images under `root`, read from disk only (never in-memory floats), memoising hash and shape."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._info: dict[str, tuple[str, tuple[int, int]]] = {}
        self._checked: set[str] = set()

    def _path(self, rel: str) -> Path:
        return self.root / rel

    def info(self, rel: str) -> tuple[str, tuple[int, int]]:
        """(sha256 of the file bytes, (H, W)); the size comes from the header, nothing is decoded."""
        if rel not in self._info:
            path = self._path(rel)
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            data = path.read_bytes()
            with Image.open(path) as im:
                w, h = im.size
            self._info[rel] = (sha256_bytes(data), (h, w))
        return self._info[rel]

    def sha(self, rel: str) -> str:
        return self.info(rel)[0]

    def check(self, rel: str) -> tuple[int, int]:
        """(H, W) of an image the metrics can decode; raises (missing, truncated, corrupt, not RGB) otherwise.

        PIL's verify() reads every chunk and its CRC without decompressing: cheap, so every image is
        checked before any metric runs. It is stricter than decoding (a PNG missing only its end chunk
        decodes fine), so a file it rejects is decoded before being called bad.
        """
        if rel not in self._checked:
            _, shape = self.info(rel)
            data = self._path(rel).read_bytes()
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.verify()
                    mode = im.mode
                if mode != "RGB":
                    raise ValueError(f"expected an 8-bit RGB image, got PIL mode {mode!r}")
            except (OSError, SyntaxError):
                decode_png_uint8(data, str(self._path(rel)))
            self._checked.add(rel)
            return shape
        return self.info(rel)[1]

    def load_batch(self, rels: Sequence[str]) -> torch.Tensor:
        """uint8 (N, 3, H, W); all images in one batch must have the same size."""
        return torch.stack([decode_png_uint8(self._path(r).read_bytes(), str(self._path(r))) for r in rels])


def shape_batches(indices: Sequence[int], shapes: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """Chunks of at most batch_size indices whose images share a shape, keeping the given order within a shape."""
    order = sorted(indices, key=lambda i: (str(shapes[i]), i))
    out: list[list[int]] = []
    for _, grp in groupby(order, key=lambda i: str(shapes[i])):
        items = list(grp)
        out += [items[k:k + batch_size] for k in range(0, len(items), batch_size)]
    return out


def list_reference_images(folder: Path) -> list[str]:
    """Image files under `folder` (recursive), as sorted relative paths."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"reference folder not found: {folder}")
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
