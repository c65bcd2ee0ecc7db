"""Process-wide settings that the library never changes by itself: only entry points call these.

`repsr` (the CLI) and the benchmark scripts call `use_passive_omp_wait()` before torch is imported;
programs that use repsr as a library may call it first thing too, or set the variable themselves.
"""

from __future__ import annotations

import os
import sys

OMP_WAIT_POLICY = "PASSIVE"


def use_passive_omp_wait() -> bool:
    """Make idle OpenMP threads sleep instead of spin, unless the environment already chose a policy.

    Spinning idle threads take the cores the working ones need when a CPU is shared, or has as few
    cores as the machines this toolkit targets: measured 2-6x slower inference of small networks (M4C16
    x4 at 320x180 on 2 shared cores: channels-last 25-37 ms passive, 97-160 ms spinning). OpenMP reads
    the variable once, when torch loads it: returns False (and the setting has no effect in this
    process) if torch is already imported.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    return "torch" not in sys.modules
