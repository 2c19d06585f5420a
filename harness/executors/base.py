from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

OnDone = Callable[[Any, Any], None]
OnFailed = Callable[[Any, str], None]
"""Called with (job, reason) when a job cannot complete (timeout, worker died repeatedly)."""


class Executor(Protocol):
    """Runs worker jobs ("prepare" or "run_batch") and calls on_done(job, result) as each finishes."""

    description: str

    def map(self, kind: str, jobs: Sequence[Any], on_done: OnDone, on_failed: OnFailed | None = None) -> None: ...

    def close(self) -> None: ...
