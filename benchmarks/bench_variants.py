"""Every build of the fused kernel this CPU runs, side by side: one instruction set per row.

`auto` weighs only the best variant per precision (`repsr.kernels.runnable_variants()[0]` for each); a
CPU with several (a Xeon with AVX512-VNNI also runs the AVX-VNNI and AVX2 builds) can force the others,
which is how the AVX-VNNI and AVX2 int8 paths are measured on a machine that has more. Per case (shipped
model, LR frame of a photograph): each variant and precision, and torch fp32 channels-last, timed in
alternation (medians of `--rounds`), and each output's largest distance from the fused fp32 output of
the best variant, in 8-bit levels. int8 calibrates on its default crops, as `repsr upscale` does.

Run: ``python benchmarks/bench_variants.py [--threads 2] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repsr.util.runtime import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()

import torch  # noqa: E402
from bench_auto import CASES, time_alternating  # noqa: E402

from repsr import load_model  # noqa: E402
from repsr.data.samples import verification_image  # noqa: E402
from repsr.kernels import FusedPlainSR, KernelUnavailable, runnable_variants  # noqa: E402
from repsr.util.hardware import cpu_capabilities  # noqa: E402


def run_case(name: str, width: int, height: int, rounds: int, threads: int) -> str:
    plain = load_model(name).eval()
    x = verification_image(3, (height, width))  # a photograph: int8 outliers depend on content
    torch_model = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    modules: dict[str, torch.nn.Module] = {"torch fp32 channels-last": torch_model}
    for variant in runnable_variants():
        for precision in variant.precisions:
            modules[f"fused {variant.name} {precision}"] = FusedPlainSR(
                plain, precision, variant=variant.name, threads=threads
            )

    def caller(module: torch.nn.Module):  # noqa: ANN202
        inp = x.contiguous(memory_format=torch.channels_last) if module is torch_model else x

        def call() -> torch.Tensor:
            with torch.inference_mode():
                return module(inp)

        return call

    calls = {key: caller(module) for key, module in modules.items()}
    medians = time_alternating(calls, rounds)
    reference_key = f"fused {runnable_variants()[0].name} fp32"
    reference = calls[reference_key]().clamp(0, 1) * 255
    torch_ms = medians["torch fp32 channels-last"]
    lines = [f"{name} {width}x{height} (levels: max |output - {reference_key}|, 8-bit)"]
    for key, value in sorted(medians.items(), key=lambda item: item[1]):
        levels = (calls[key]().clamp(0, 1) * 255 - reference).abs().max().item()
        lines.append(
            f"  {key:<30} {value * 1e3:8.1f} ms  {1 / value:6.1f} frames/s  {torch_ms / value:5.2f}x torch"
            f"  {levels:6.2f} levels"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv if argv is not None else [])
    torch.set_num_threads(args.threads)
    print(f"# {cpu_capabilities().describe()}, {args.threads} threads, medians of {args.rounds} rounds")
    print(f"# variants this CPU runs, best first: {', '.join(v.name for v in runnable_variants())}")
    try:
        for case in CASES:
            print(run_case(*case, args.rounds, args.threads))
    except KernelUnavailable as error:
        print(f"skipped: the fused kernel does not run here ({error})")


if __name__ == "__main__":
    main(sys.argv[1:])
