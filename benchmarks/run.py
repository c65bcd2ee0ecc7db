"""`make bench`: every benchmark of the project in one run, so their ratios share one machine state."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repsr.util.runtime import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()  # as the `repsr` CLI does; must precede torch

import torch  # noqa: E402

from repsr.util.hardware import cpu_capabilities  # noqa: E402

SECTIONS = (
    "bench_data",
    "bench_train",
    "bench_deploy",
    "bench_auto",
    "bench_variants",
    "bench_models",
    "bench_precision",
    "bench_video",
)
NEEDS = {"bench_video": ("av", "pip install 'repsr[video]'")}  # optional extras a section needs


def main() -> None:
    print(f"# repsr benchmarks  {time.strftime('%Y-%m-%d %H:%M')}")
    cpu = cpu_capabilities().describe()  # the CPU's model name (as lscpu gives it) and its units
    print(f"# {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    for name in SECTIONS:
        print(f"\n## {name}")
        module, install = NEEDS.get(name, (None, ""))
        if module and importlib.util.find_spec(module) is None:
            print(f"skipped: needs {module} ({install})")
            continue
        importlib.import_module(name).main()


if __name__ == "__main__":
    main()
