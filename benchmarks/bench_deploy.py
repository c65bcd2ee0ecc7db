"""Deploy-side benchmarks: `repsr bench` on the standard sizes, the 60%-of-peak target, thread settings.

Run: ``python benchmarks/bench_deploy.py`` (or through ``benchmarks/run.py``). All figures of one section
come from one process; on a shared machine compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repsr.util.runtime import use_passive_omp_wait  # noqa: E402

# Idle OpenMP threads sleep instead of spinning: on a shared CPU spinning costs 3-6x on small convs (see
# repsr.util.runtime). Only effective when this file is the program (torch not imported yet).
use_passive_omp_wait()

import torch  # noqa: E402

from repsr.apps.benchmark import benchmark, format_report, standard_models  # noqa: E402

TARGET_FRACTION = 0.60  # the plain M4C16 x4 on a 320x180 input, fastest backend, on CPU
TARGET_MODEL = "repsr-M4C16-x4"


def main(budget_s: float = 3.0) -> None:
    """Print the bench table for M4C16/M10C32/M16C64 x4, then the target line and a thread sweep."""
    report = benchmark(standard_models(), size=(320, 180), device="auto", budget_s=budget_s)
    print(format_report(report))
    best = report.fastest_plain(TARGET_MODEL)
    if best is not None and best.peak_fraction is not None:
        verdict = "met" if best.peak_fraction >= TARGET_FRACTION else "NOT met"
        print(
            f"target: {TARGET_MODEL} plain, fastest backend {best.backend}: "
            f"{100 * best.peak_fraction:.0f}% of peak (goal {100 * TARGET_FRACTION:.0f}%) -> {verdict}; "
            f"repsr upscale uses channels-last"
        )
    if report.device != "cpu":
        return
    print("\nthreads sweep (M4C16 x4 plain, 320x180; each line its own peak probe at that thread count)")
    m4c16 = standard_models()[:1]
    for threads in sorted({1, torch.get_num_threads()}):
        sweep = benchmark(
            m4c16,
            size=(320, 180),
            device="cpu",
            threads=threads,
            backends=("eager", "channels-last", "onnxruntime"),
            budget_s=budget_s,
            train_form=False,
        )
        cells = ", ".join(
            f"{row.backend} {row.latency_ms:.1f} ms ({100 * row.peak_fraction:.0f}%)"
            for row in sweep.rows
            if row.latency_ms is not None
        )
        print(f"  {threads} thread(s): peak {sweep.peak_gflops:.0f} GFLOP/s; {cells}")


if __name__ == "__main__":
    main()
