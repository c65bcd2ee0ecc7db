"""What `precision="auto"` runs against every candidate it weighs, on full frames, idle and busy.

For each case (shipped model, LR frame size) the decider probes (`repsr.inference.backends.decide`,
its cache cleared), then the chosen module and every candidate's module are timed on the full frame in
alternation (medians of `--rounds` rounds, 2 threads by default). With `--busy`, a second process keeps
one core busy with float work for the whole case, probe included: the load the issue measured under.
Printed per case: the choice and its reason, each candidate's median, and auto's median over the
fastest candidate's (1.00x: auto ran the fastest path).

Run: ``python benchmarks/bench_auto.py [--threads 2] [--rounds 7] [--busy]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repsr.util.runtime import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()

import torch  # noqa: E402

from repsr import load_model  # noqa: E402
from repsr.inference import backends  # noqa: E402
from repsr.util.hardware import cpu_capabilities  # noqa: E402

CASES = (("repsr-m4c16-x2", 960, 540), ("repsr-m4c16-x4", 320, 180))


def _spin(stop) -> None:  # noqa: ANN001  (a multiprocessing Event)
    x = 1.0001
    while not stop.is_set():
        for _ in range(100_000):
            x = x * 1.0000001 + 1e-9


def time_alternating(calls: dict[str, object], rounds: int) -> dict[str, float]:
    for call in calls.values():
        call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            begin = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - begin)
    return {name: statistics.median(values) for name, values in seconds.items()}


def run_case(name: str, width: int, height: int, rounds: int) -> str:
    device = torch.device("cpu")
    plain = load_model(name)
    backends._PROBES.clear()
    started = time.perf_counter()
    chosen = backends.decide(plain, device, "auto")
    probe_s = time.perf_counter() - started
    from repsr.data.samples import verification_image

    x = verification_image(3, (height, width))  # a photograph: int8's outlier path depends on content

    def caller(module, backend):  # noqa: ANN001, ANN202
        inp = backends.prepare_input(x, backend)

        def call() -> object:
            with torch.inference_mode():
                return module(inp)

        return call

    calls = {"auto": caller(chosen.module, chosen.backend)}
    for candidate in backends.candidates(device):
        module = backends.REGISTRY[candidate.backend].build(plain, device, candidate.precision)
        calls[str(candidate)] = caller(module, candidate.backend)
    medians = time_alternating(calls, rounds)
    fastest = min((k for k in medians if k != "auto"), key=medians.__getitem__)
    lines = [
        f"{name} {width}x{height}: auto -> {chosen.backend} {chosen.precision} (probe {probe_s:.2f} s)",
        f"  reason: {chosen.reason}",
    ]
    for key, value in sorted(medians.items(), key=lambda item: item[1]):
        lines.append(f"  {key:<22} {value * 1e3:8.1f} ms  {1 / value:6.1f} frames/s")
    lines.append(f"  auto / fastest candidate ({fastest}): {medians['auto'] / medians[fastest]:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--busy", action="store_true", help="keep another core busy throughout")
    args = parser.parse_args(argv if argv is not None else [])
    torch.set_num_threads(args.threads)
    print(f"# {cpu_capabilities().describe()}, {args.threads} threads, medians of {args.rounds} rounds")
    for busy in [True] if args.busy else [False, True]:
        stop = multiprocessing.Event()
        spinner = multiprocessing.Process(target=_spin, args=(stop,), daemon=True) if busy else None
        if spinner:
            spinner.start()
        try:
            print(f"## {'another core busy' if busy else 'idle'}")
            for case in CASES:
                print(run_case(*case, args.rounds))
        finally:
            if spinner:
                stop.set()
                spinner.join()


if __name__ == "__main__":
    main(sys.argv[1:])
