"""Stopping a run cleanly: SIGINT/SIGTERM ask it to stop after the current step; a second one aborts.

`StopSignals` is a context manager that installs the handlers (main thread only: signals go there) and
restores the previous ones on exit; `requested` holds the first signal's number, or None.

A signal sent to the whole run (Ctrl-C reaches the terminal's process group, `pkill -f` matches the data
workers' command line too, a machine shutting down signals every process) must not kill the data
workers first: PyTorch's loader then raises in the middle of a step and no checkpoint is written.
`worker_stop_rule` (the loader's `worker_init_fn`) gives the workers the same rule as the run: the first
SIGINT/SIGTERM is left to the main process, which finishes the step, saves and shuts the workers down;
a second one ends the worker at once (a stuck worker still ends: PyTorch terminates it, and Python
again at exit).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch

from repsr.training.distributed import Distributed

__all__ = ["StopSignals", "worker_stop_rule"]

log = logging.getLogger("repsr.training")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Record a stop request on the first SIGINT/SIGTERM; raise KeyboardInterrupt on the second."""

    def __init__(self, next_iteration: Callable[[], int]) -> None:
        self.requested: int | None = None
        self._next_iteration = next_iteration  # for the log line: the step being finished
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self.requested = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
            for signum in SIGNALS:
                signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore()

    def agreed(self, dist: Distributed, iteration: int, every: int) -> bool:
        """Whether a signal asked this run (any process of it) to stop after the current step; with
        several processes they agree on it every `every` iterations (the log interval)."""
        asked = self.requested is not None
        if not dist.enabled:
            return asked
        if iteration % every:
            return False
        flag = torch.tensor(float(asked), device=dist.device)
        return bool(dist.all_reduce_sum(flag) > 0)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            self._restore()
            raise KeyboardInterrupt
        self.requested = signum
        log.warning(
            "%s: finishing iteration %d, then saving a checkpoint (press Ctrl-C again to abort at once)",
            signal.Signals(signum).name,
            self._next_iteration(),
        )


_worker_signals_seen = 0


def _worker_handle(signum: int, frame: Any) -> None:
    global _worker_signals_seen
    _worker_signals_seen += 1
    if _worker_signals_seen >= 2:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def worker_stop_rule(worker_id: int) -> None:
    """In a data worker: ignore the first SIGINT/SIGTERM (the main process stops the run cleanly and
    then the workers), die on a second one."""
    for signum in SIGNALS:
        signal.signal(signum, _worker_handle)
