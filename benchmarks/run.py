"""`make bench`: every benchmark of the project in one run, so their ratios share one machine state."""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import repsr` does; must precede torch

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

SECTIONS = ("bench_data", "bench_train", "bench_deploy")


def main() -> None:
    print(f"# repsr benchmarks  {time.strftime('%Y-%m-%d %H:%M')}")
    cpu = platform.processor() or platform.machine()
    print(f"# {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    for name in SECTIONS:
        print(f"\n## {name}")
        importlib.import_module(name).main()


if __name__ == "__main__":
    main()
