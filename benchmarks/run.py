"""`make bench`: every benchmark of the project in one run, so their ratios share one machine state."""

from __future__ import annotations

import importlib
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repsr.runtime import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()  # as the `repsr` CLI does; must precede torch

import torch  # noqa: E402

SECTIONS = ("bench_data", "bench_train", "bench_deploy", "bench_precision")


def main() -> None:
    print(f"# repsr benchmarks  {time.strftime('%Y-%m-%d %H:%M')}")
    cpu = platform.processor() or platform.machine()
    print(f"# {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    for name in SECTIONS:
        print(f"\n## {name}")
        importlib.import_module(name).main()


if __name__ == "__main__":
    main()
