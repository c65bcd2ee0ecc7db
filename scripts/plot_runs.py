"""Plot the held-out validation curves of several `repsr train` runs into one PNG (a maintainer's tool).

python scripts/plot_runs.py OUT.png [--from ITERATION] LABEL=RUN_DIR [LABEL=RUN_DIR ...]

`--from` leaves out the validations before that iteration (the late differences are small).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from ship_model import read_curve  # noqa: E402


def main() -> None:
    out, *runs = sys.argv[1:]
    start = 0
    if runs[:1] == ["--from"]:
        start, runs = int(runs[1]), runs[2:]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    for spec in runs:
        label, _, run_dir = spec.partition("=")
        curve = [(it, psnr) for it, psnr in read_curve(Path(run_dir)) if it >= start]
        axis.plot([it for it, _ in curve], [psnr for _, psnr in curve], marker=".", label=label)
    axis.set_xlabel("iteration")
    axis.set_ylabel("held-out Y-PSNR (dB)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out)


if __name__ == "__main__":
    main()
