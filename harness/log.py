"""The harness's own messages: the `harness` logger, and quiet third-party libraries.

A run's terminal should show the harness's progress and real warnings, each once. Every Ray worker
loads models, and the libraries' per-load chatter (transformers' "Loading weights" bars, diffusers'
"should be kept in float32" notice when a model is cast, torch's `torch.jit.script` deprecation
FutureWarning raised inside third-party loaders) would come back from every worker, burying the
progress bar; none of it is about the run. Library errors still show.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

NAME = "harness"
FORMAT = "[harness] %(message)s"


def get_logger(name: str = "") -> logging.Logger:
    """The `harness` logger, or its child `harness.<name>`."""
    return logging.getLogger(f"{NAME}.{name}" if name else NAME)


class _TqdmHandler(logging.Handler):
    """Writes to the current sys.stderr through tqdm, so a message never tears the driver's progress bar
    (and a replaced stderr, as under pytest's capture, is followed)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise into the run
            self.handleError(record)


class _LibraryNoise(logging.Filter):
    """Drops diffusers' keep-in-float32 notice: the harness casts on purpose (fp16 on CUDA), and the notice
    otherwise repeats once per model per worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32" not in record.getMessage()


def setup(verbose: bool = False) -> None:
    """Configure this process (driver or worker): harness messages to stderr, library noise off. Idempotent."""
    logger = get_logger()
    if not any(getattr(h, "_harness", False) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._harness = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # not again through the root logger (Ray installs one in workers)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    quiet_libraries()


def quiet_libraries() -> None:
    """Idempotent and cheap: never imports a library (a CLI call must not pay for transformers' import); call it
    again once diffusers is loaded."""
    # Read by huggingface_hub when transformers is imported: its per-model "Loading weights" bars.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.(script|script_method|interface)` is deprecated",
                            category=FutureWarning)
    if "transformers" in sys.modules:  # imported before the variable was set
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        for handler in diffusers_logging.get_logger("diffusers").handlers:  # child loggers propagate to these
            if not any(isinstance(f, _LibraryNoise) for f in handler.filters):
                handler.addFilter(_LibraryNoise())
