"""Errors the CLI turns into one clear line and exit status 2."""
from __future__ import annotations

from typing import Any, Iterable


class HarnessError(Exception):
    """Base class for errors a user can fix; the CLI prints them without a traceback."""

    exit_code = 2


class ConfigError(HarnessError):
    """A bad configuration value: names the key, the value, what is allowed and how to fix it."""

    def __init__(self, key: str, value: Any, allowed: str | Iterable[str] | None = None, remedy: str = "") -> None:
        self.key, self.value, self.remedy = key, value, remedy
        if allowed is not None and not isinstance(allowed, str):
            allowed = ", ".join(sorted(str(a) for a in allowed))
        self.allowed = allowed
        parts = [f"config error: {key}={value!r}"]
        if allowed:
            parts.append(f"allowed: {allowed}")
        if remedy:
            parts.append(remedy)
        super().__init__("; ".join(parts))


class MissingWeightsError(HarnessError):
    """Model or metric weights are not available offline."""

    def __init__(self, what: str, where: str, key: str, remedy: str) -> None:
        self.what, self.where, self.key = what, where, key
        super().__init__(f"missing weights: {what} (looked in {where}); set {key} — {remedy}")
