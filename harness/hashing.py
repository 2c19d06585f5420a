"""Stable hashes: the same inputs give the same key on every machine, process and Python version."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(*parts: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:length]


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from a hash, never from a global RNG stream (results must not depend on work split)."""
    return int(hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:15], 16)
