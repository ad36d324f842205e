"""Less log noise from libraries on inference commands, keeping the warnings that matter.

`install_log_filters()` (run when `laser_jax.inference` is imported, before transformers
and jax are) drops exactly two messages:
  - transformers' "PyTorch was not found. Models won't be available ..." (laser_jax needs
    only its tokenizers and configs);
  - jax's "Unable to initialize backend 'tpu': ..." below ERROR (jax probing for a TPU on
    a machine without one).
`quiet_loading()` raises the absl logger (which Orbax logs through) to WARNING while a
checkpoint is restored, hiding Orbax's ten or so INFO lines per load; warnings and errors
still show, and so do laser_jax's own (the "laser_jax" logger, e.g. a skipped damaged
checkpoint).
"""
from __future__ import annotations

import contextlib
import logging

_DROPPED = {
    "transformers": ("PyTorch was not found",),
    "jax._src.xla_bridge": ("Unable to initialize backend 'tpu'",),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not message.startswith(self.prefixes)


def install_log_filters() -> None:
    """Install the filters (once; idempotent)."""
    for name, prefixes in _DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))


@contextlib.contextmanager
def quiet_loading():
    """Orbax's INFO lines hidden for the duration (the absl logger at WARNING at least)."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    if absl_logger.getEffectiveLevel() < logging.WARNING:
        absl_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        absl_logger.setLevel(level)
