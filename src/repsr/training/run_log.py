"""Where a run's numbers go: the history list, `metrics.csv`, TensorBoard and the `train.log` file.

Only rank 0 creates one with `enabled=True`; other ranks get a `RunLog` that records nothing.
The history (a list of dicts, one per iteration where something was measured) travels in checkpoints,
so a resumed run rewrites `metrics.csv` from it and continues without gaps or duplicate rows.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("repsr.training")

BASE_COLUMNS = ("iteration", "loss", "lr", "phase", "seconds")


class RunLog:
    """Collects records per iteration and writes each finished row to CSV and TensorBoard."""

    def __init__(
        self,
        run_dir: Path | None,
        metric_columns: list[str],
        *,
        tensorboard: bool,
        term_columns: list[str] | None = None,
        history: list[dict[str, Any]] | None = None,
        start_iteration: int = 0,
    ) -> None:
        self.history: list[dict[str, Any]] = [
            _upgrade(h) for h in (history or []) if h["iteration"] <= start_iteration
        ]
        self.columns = [*BASE_COLUMNS, *(term_columns or []), *metric_columns]
        self.enabled = run_dir is not None
        self._pending: dict[str, Any] | None = None
        self._csv_file = None
        self._csv: csv.DictWriter | None = None
        self._tb = None
        self._file_handler: logging.Handler | None = None
        if run_dir is None:
            return
        self._file_handler = logging.FileHandler(run_dir / "train.log")
        self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(self._file_handler)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        self._csv_file = open(run_dir / "metrics.csv", "w", newline="")  # closed in close()
        self._csv = csv.DictWriter(self._csv_file, fieldnames=self.columns, extrasaction="ignore")
        self._csv.writeheader()
        for row in self.history:
            self._csv.writerow(row)
        self._csv_file.flush()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_iteration + 1)

    def report(
        self,
        iteration: int,
        total: int,
        *,
        loss: float,
        lr: float,
        phase: str,
        seconds: float,
        bar: Any = None,
        terms: dict[str, float] | None = None,
    ) -> None:
        """Record the loss row of `iteration` (and each loss term's mean, `terms`), show it on the
        progress `bar` and log it (rank 0)."""
        self.record(iteration, loss=loss, lr=lr, phase=phase, seconds=round(seconds, 3), **(terms or {}))
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", phase=phase)
        if self.enabled:
            parts = "".join(f" {name} {value:.5f}" for name, value in (terms or {}).items())
            log.info("iter %d/%d loss %.5f lr %.3e phase %s%s", iteration, total, loss, lr, phase, parts)

    def record(self, iteration: int, **values: Any) -> None:
        """Add values for `iteration` (merged with others recorded for the same iteration)."""
        if self._pending is not None and self._pending["iteration"] != iteration:
            self.flush()
        if self._pending is None:
            self._pending = {"iteration": iteration}
        self._pending.update(values)

    def flush(self) -> None:
        """Finish the pending row: history, CSV row, TensorBoard scalars."""
        row, self._pending = self._pending, None
        if row is None:
            return
        self.history.append(row)
        if self._csv is not None:
            self._csv.writerow(row)
            self._csv_file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "iteration" and isinstance(value, float) and math.isfinite(value):
                    self._tb.add_scalar(key if "/" in key else f"train/{key}", value, row["iteration"])
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file_handler is not None:
            log.removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None


def _upgrade(row: dict[str, Any]) -> dict[str, Any]:
    """A history row of an older run: its `bn_phase` column is now `phase`."""
    return {("phase" if key == "bn_phase" else key): value for key, value in row.items()}
