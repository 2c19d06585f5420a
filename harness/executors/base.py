from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

OnDone = Callable[[Any, Any], None]


class Executor(Protocol):
    """Runs worker jobs ("prepare" or "run_batch") and calls on_done(job, result) as each finishes."""

    description: str

    def map(self, kind: str, jobs: Sequence[Any], on_done: OnDone) -> None: ...

    def close(self) -> None: ...
