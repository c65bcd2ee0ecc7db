"""The timers: one way to time a call, and one way to time two calls alternately.

`time_runs` times one function; `time_interleaved` alternates two, so both see the same machine load
(a shared machine's load changes from second to second). `repsr bench` uses them (a peak probe beside each
row; `repsr.inference.backends.probe` alternates its N candidates the same way); `synchronizer(device)`
waits for a CUDA device's queue before a clock is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["synchronizer", "time_interleaved", "time_runs"]


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_runs(
    fn: Callable[[], Any],
    *,
    device: torch.device | None = None,
    warmup: int = 2,
    min_runs: int = 5,
    max_runs: int = 50,
    budget_s: float = 3.0,
) -> list[float]:
    """Seconds per call of `fn` after `warmup` calls: at least `min_runs`, more while within `budget_s`."""
    sync = synchronizer(device or torch.device("cpu"))
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - started < budget_s):
        begin = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - begin)
    return times


def time_interleaved(
    fn: Callable[[], Any],
    probe: Callable[[], Any],
    *,
    device: torch.device | None = None,
    warmup: int = 2,
    min_runs: int = 5,
    max_runs: int = 50,
    budget_s: float = 3.0,
) -> tuple[list[float], list[float]]:
    """Like `time_runs`, alternating each timed call of `fn` with one of `probe`.

    On a shared machine the load changes from second to second; a peak measured at another moment
    than the workload can be off by a factor of two either way. Interleaved, both see the same load.
    """
    sync = synchronizer(device or torch.device("cpu"))
    for _ in range(warmup):
        fn()
        probe()
    sync()
    fn_times: list[float] = []
    probe_times: list[float] = []
    started = time.perf_counter()
    while len(fn_times) < max_runs and (len(fn_times) < min_runs or time.perf_counter() - started < budget_s):
        for call, times in ((fn, fn_times), (probe, probe_times)):
            begin = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - begin)
    return fn_times, probe_times
