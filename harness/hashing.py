"""Stable hashes: the same inputs give the same key on every machine, process and Python version."""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from typing import Any


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(*parts: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:length]


STABLE_SEED_BITS = 60
"""stable_seed's width: every seed it returns is < 2**STABLE_SEED_BITS (methods._calibration draws above it)."""


def stable_seed(*parts: Any) -> int:
    """A 60-bit seed from a hash, never from a global RNG stream (results must not depend on work split)."""
    return int(hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:STABLE_SEED_BITS // 4], 16)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes ("missing:<path>" when absent); cached per path, size and mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return f"missing:{os.fspath(path)}"
    return _file_sha256(os.fspath(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
