"""What a training run does when something goes wrong (docs/faults.md lists every case).

* Exit codes of `python -m laser_jax.train` (`EXIT_*`, and 128 + signal number).
* `StopSignals`: SIGTERM / SIGINT are recorded instead of killing the process, so the
  trainer finishes its step, checkpoints and exits; a second signal exits at once.
* `NonFiniteLossError` and the message naming the step, the loss terms and the batch's
  records; `DiskFullError` for a full disk, recognised anywhere in an exception chain.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable, Dict, Iterable, Optional

import numpy as np

from laser_jax.storage import is_disk_full  # noqa: F401  (part of this module's interface)

log = logging.getLogger("laser_jax")

EXIT_OK = 0
EXIT_CRASH = 1       # an unexpected error: Python prints the traceback
EXIT_BAD_INPUT = 2   # invalid config, data or model directory; nothing was trained
EXIT_NONFINITE = 3   # a non-finite loss/gradient with train.nonfinite=stop (or NaN parameters)
EXIT_DISK_FULL = 4   # no space left to write checkpoints / metrics

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code_for_signal(signum: int) -> int:
    """The shell's convention for "stopped by signal N": 128 + N (SIGTERM 143, SIGINT 130)."""
    return 128 + int(signum)


class NonFiniteLossError(RuntimeError):
    """A step produced a non-finite loss or gradient (train.nonfinite=stop)."""


class DiskFullError(RuntimeError):
    """A write failed because the disk (or quota) is full."""


# ---------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------
class StopSignals:
    """Turn SIGTERM / SIGINT into a stop request (`signum`) the training loop polls.

    The first signal is only recorded (and logged); a second one restores the default
    handler and re-delivers itself, so an impatient user or scheduler can still kill the
    run at once (the previous checkpoint stays intact, as after kill -9). Handlers can only
    be installed from the main thread; elsewhere `install` does nothing.
    """

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> "StopSignals":
        if not self.installed and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning("received signal %d: finishing the current step, saving a checkpoint and stopping "
                        "(send it again to exit at once)", signum)
            return
        log.warning("received signal %d again: exiting now without saving", signum)
        self.uninstall()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def agreed_stop(own: Optional[int], step: int, every: int, process_count: int,
                allgather: Callable[[np.ndarray], np.ndarray]) -> Optional[int]:
    """The stop decision every process of a multi-process run takes at the same step.

    A scheduler may signal only some hosts; a host that stopped alone would hang the others
    in their next collective. So hosts compare their signals (an all-gather, only every
    `every` steps, where the loop syncs with the device anyway) and all stop together on
    the first one seen anywhere. A single process just uses its own signal.

    Args:
      own: this process's signal number, or None.
      step: steps done so far by this run; the all-gather happens when `step % every == 0`.
      every: steps between comparisons (train.log_every).
      process_count: number of processes.
      allgather: [value] -> values of every process (multihost_utils.process_allgather).

    Returns:
      The signal to stop on, or None to go on.
    """
    if process_count == 1:
        return own
    if step % every:
        return None
    signals = np.asarray(allgather(np.asarray(own or 0, np.int32))).reshape(-1)
    raised = [int(s) for s in signals if s]
    return raised[0] if raised else None


# ---------------------------------------------------------------------------------------
# Non-finite steps
# ---------------------------------------------------------------------------------------
def nonfinite_message(step: int, metrics: dict, records: np.ndarray,
                      locate: Optional[Callable[[int], str]] = None, limit: int = 16) -> str:
    """"non-finite loss or gradient at step N: loss=nan, ...; batch records [..] (file: line ..)".

    Args:
      step: the 1-based step.
      metrics: the step's metrics on the host (floats).
      records: the batch's record indices (this host's share).
      locate: record index -> "file: line N", when the source knows it.
      limit: how many records to list.
    """
    terms = ", ".join(f"{k}={float(v):.4g}" for k, v in metrics.items() if k.startswith("loss"))
    indices = [int(i) for i in np.asarray(records).reshape(-1)]
    shown = indices[:limit]
    where = "; ".join(locate(i) for i in shown) if locate else ""
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    grads = metrics.get("l2_grads")
    return (f"non-finite loss or gradient at step {step}: {terms}"
            + (f", l2_grads={float(grads):.4g}" if grads is not None else "")
            + f"; batch records {shown}{more}" + (f" ({where})" if where else ""))


# ---------------------------------------------------------------------------------------
# Full disk
# ---------------------------------------------------------------------------------------
def disk_full_error(directory: str, what: str, keep_note: str = "") -> DiskFullError:
    """The message for a full disk: what could not be written, where, and what to do."""
    return DiskFullError(f"disk full: could not write {what} to {directory} (no space left on device). "
                         f"{keep_note}Free space (or move --workdir to a larger disk) and rerun the same "
                         "command to resume.")
