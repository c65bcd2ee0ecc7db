"""Every shipped model on a photograph-sized job: the seconds for a 12-megapixel output, as `repsr upscale`
runs it (`Upscaler`, precision `auto`, tiling `auto`), with the path `auto` chose.

The LR side is the output's (4000x3000) divided by the model's scale: 1000x750 for x4, 2000x1500 for x2.
The input is a photograph (int8's outlier path depends on content). Models are timed in interleaved rounds
(medians of `--rounds`), after one warm-up call each, which also runs `auto`'s probe.

Run: ``python benchmarks/bench_models.py [--threads 2] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repsr.util.runtime import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()

import torch  # noqa: E402

from repsr import load_model  # noqa: E402
from repsr.data.samples import verification_image  # noqa: E402
from repsr.inference import Upscaler  # noqa: E402
from repsr.models.pretrained import shipped  # noqa: E402
from repsr.util.hardware import cpu_capabilities  # noqa: E402

OUTPUT = (3000, 4000)  # 12 megapixels, height x width


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv if argv is not None else [])
    torch.set_num_threads(args.threads)
    print(f"# {cpu_capabilities().describe()}, {args.threads} threads, medians of {args.rounds} rounds")
    jobs = {}
    for entry in shipped():
        scale = entry.scale
        lr = verification_image(3, (OUTPUT[0] // scale, OUTPUT[1] // scale))
        upscaler = Upscaler(load_model(entry.name), device="cpu", precision="auto")
        with torch.inference_mode():
            upscaler(lr)  # warm-up: auto's probe and the kernel's build
        jobs[entry.name] = (upscaler, lr)
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.rounds):
        for name, (upscaler, lr) in jobs.items():
            begin = time.perf_counter()
            with torch.inference_mode():
                upscaler(lr)
            seconds[name].append(time.perf_counter() - begin)
    for name, (upscaler, lr) in jobs.items():
        size = f"{lr.shape[-1]}x{lr.shape[-2]}"
        print(
            f"  {name:<26} LR {size:>9}  {statistics.median(seconds[name]):6.2f} s  "
            f"({upscaler.precision_reason})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
