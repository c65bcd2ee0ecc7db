"""The batch queue: one job at a time, each a call of `upscale_files`, as `repsr upscale` makes it.

A job makes its runner with `make_upscaler`, as the CLI does (an `AutoDenoise` for a general model
left at denoise auto, else an `Upscaler` of the model at the strength asked for), plans every
output with `plan_outputs` (a collision, an output that would replace an input, or an existing file
without "overwrite" refuses the whole job before any work, as the CLI does) and runs `upscale_files`
with hooks that record each file's progress and outcome. So a job writes, verifies and reports exactly
what `repsr upscale INPUTS -o OUTPUT -m MODEL [--denoise S]` would.

Progress is counted in LR pixels (an image's width x height, a video's times its frames), which makes
the total fraction and the time left fair between a small photograph and a long video.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repsr.inference.denoise import make_upscaler
from repsr.inference.files import plan_outputs, upscale_files
from repsr.inference.video import describe
from repsr.models.auto_denoise import DenoiseChoice
from repsr.util.errors import ConfigError, RepsrError, first_line


@dataclass
class JobRequest:
    """What to run: inputs (files and folders, as on the CLI), the output folder and the settings."""

    inputs: list[Path]
    output: Path
    model: str
    denoise: float | None = None
    fmt: str | None = None
    overwrite: bool = False
    video: dict = field(default_factory=dict)  # codec, crf, preset


@dataclass
class FileState:
    """One planned output and how far it is."""

    source: Path
    target: Path
    video: bool
    units: int = 1  # LR pixels (x frames for a video)
    frames_total: int = 0
    frames_done: int = 0
    status: str = "queued"  # queued, running, written, failed, cancelled
    reason: str = ""
    detail: str = ""  # the CLI's line: a written video's, or what denoise auto chose for an image

    def done_units(self) -> float:
        if self.status in ("written", "failed", "cancelled"):
            return float(self.units)
        if self.video and self.frames_total:
            return self.units * min(self.frames_done / self.frames_total, 1.0)
        return 0.0


def _units(source: Path, video: bool) -> tuple[int, int]:
    """(LR pixels to upscale, frames) of a file, from its header; (1, 0) when it cannot be read."""
    try:
        if video:
            from repsr.apps.app.library import video_info

            width, height, frames = video_info(source)
            return max(width * height * max(frames, 1), 1), frames
        from PIL import Image

        with Image.open(source) as image:
            return max(image.width * image.height, 1), 0
    except Exception:  # the run reports this file's problem; progress just weighs it as 1
        return 1, 0


class Job:
    """A queued, running or finished batch: its files' states, the outcome and the time it took."""

    def __init__(self, request: JobRequest) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.request = request
        self.status = "queued"  # queued, running, done, failed, refused, cancelled
        self.message = ""
        self.model_line = ""  # the model and precision, as the CLI prints them
        self.files: list[FileState] = []
        self.missing: list[tuple[Path, str]] = []
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.cancel = threading.Event()
        self._lock = threading.Lock()

    def _file(self, source: Path) -> FileState | None:
        key = source.resolve()
        return next((f for f in self.files if f.source.resolve() == key), None)

    def written(self) -> list[FileState]:
        """The files this job wrote, in order."""
        return [f for f in self.files if f.status == "written"]

    def to_json(self) -> dict[str, Any]:
        """The job as the page polls it: files, totals, fraction done and time left."""
        with self._lock:
            total = sum(f.units for f in self.files) or 1
            done = sum(f.done_units() for f in self.files)
            fraction = done / total if self.files else (1.0 if self.finished else 0.0)
            now = self.finished or time.time()
            elapsed = now - self.started if self.started else 0.0
            eta = None
            if self.status == "running" and 0.0 < fraction < 1.0 and elapsed > 0.5:
                eta = elapsed * (1.0 - fraction) / fraction
            output = self.request.output
            files = []
            for index, f in enumerate(self.files):
                try:
                    shown = str(f.target.relative_to(output))
                except ValueError:
                    shown = f.target.name
                if shown == ".":  # an output named like a video is that one video file (as -o OUT.mp4)
                    shown = f.target.name
                files.append(
                    {
                        "index": index,
                        "source": f.source.name,
                        "target": shown,
                        "video": f.video,
                        "status": f.status,
                        "reason": f.reason,
                        "detail": f.detail,
                        "frames_done": f.frames_done,
                        "frames_total": f.frames_total,
                    }
                )
            return {
                "id": self.id,
                "status": self.status,
                "message": self.message,
                "model": self.request.model,
                "denoise": self.request.denoise,
                "model_line": self.model_line,
                "output": str(output),
                "files": files,
                "missing": [{"path": str(p), "reason": r} for p, r in self.missing],
                "done": sum(f.status != "queued" and f.status != "running" for f in self.files),
                "total": len(self.files),
                "fraction": fraction,
                "elapsed": elapsed,
                "eta": eta,
            }

    # --------------------------------------------------------------- hooks called by upscale_files

    def on_start(self, planned: Any) -> None:
        with self._lock:
            state = self._file(planned.source)
            if state is not None:
                state.status = "running"

    def on_done(self, source: Path, target: Path) -> None:
        with self._lock:
            state = self._file(source)
            if state is not None:
                state.status = "written"
                state.frames_done = state.frames_total

    def on_denoise(self, source: Path, choice: DenoiseChoice) -> None:
        with self._lock:
            state = self._file(source)
            if state is not None:
                state.detail = choice.describe()

    def on_failed(self, source: Path, reason: str) -> None:
        with self._lock:
            state = self._file(source)
            if state is None:  # an input that matched nothing: not a planned file
                self.missing.append((source, reason))
            else:
                state.status, state.reason = "failed", reason

    def on_frames(self, count: int) -> None:
        with self._lock:
            running = next((f for f in self.files if f.status == "running" and f.video), None)
            if running is not None:
                running.frames_done += count

    # ------------------------------------------------------------------------------------ running

    def run(self, upscaler_options: dict[str, Any]) -> None:
        """Plan, load, upscale; every problem ends as this job's status and message, never raised."""
        request = self.request
        self.started = time.time()
        self.status = "running"
        try:
            # every planned file, listed even where existing outputs refuse the job (upscale_files
            # plans again with the job's own `overwrite` and refuses it, as the CLI does)
            planned, _ = plan_outputs(request.inputs, request.output, fmt=request.fmt, overwrite=True)
            _check_inside(planned, request.output)
            with self._lock:
                for job in planned:
                    units, frames = _units(job.source, job.video)
                    self.files.append(FileState(job.source, job.target, job.video, units, frames))
            if self.cancel.is_set():
                raise _CancelledBeforeStart
            upscaler = make_upscaler(request.model, request.denoise, **upscaler_options)
            self.model_line = f"{request.model}: precision {upscaler.precision}: {upscaler.precision_reason}"
            report = upscale_files(
                upscaler,
                request.inputs,
                request.output,
                fmt=request.fmt,
                progress=False,
                overwrite=request.overwrite,
                video=request.video,
                on_start=self.on_start,
                on_done=self.on_done,
                on_failed=self.on_failed,
                on_frames=self.on_frames,
                on_denoise=self.on_denoise,
                cancel=self.cancel,
            )
        except _CancelledBeforeStart:
            self._finish("cancelled", "cancelled before it started")
            return
        except ConfigError as error:  # plan_outputs' refusals: nothing was written
            self._finish("refused", str(error))
            return
        except RepsrError as error:
            self._finish("failed", str(error))
            return
        except Exception as error:  # a bug must not take the queue down: say it on the page
            self._finish("failed", f"internal error: {type(error).__name__}: {first_line(error)}")
            return
        with self._lock:
            for video in report.videos:
                state = self._file(video.source)
                if state is not None:
                    state.detail = describe(video)
            for source in report.cancelled:
                state = self._file(source)
                if state is not None and state.status not in ("written", "failed"):
                    state.status = "cancelled"
        images = sum(1 for f in self.files if f.status == "written" and not f.video)
        videos = sum(1 for f in self.files if f.status == "written" and f.video)
        failed = sum(1 for f in self.files if f.status == "failed") + len(self.missing)
        # as the CLI says it: the image count unless only videos were written (each has its own line)
        counts = ([f"{images} image(s)"] if images or not videos else []) + (
            [f"{videos} video(s)"] if videos else []
        )
        message = f"{' and '.join(counts)} written to {request.output}"
        if failed:
            message += f"; {failed} input(s) failed"
        if report.cancelled:
            self._finish("cancelled", message + f"; cancelled ({len(report.cancelled)} not finished)")
        else:
            self._finish("failed" if failed else "done", message)

    def _finish(self, status: str, message: str) -> None:
        with self._lock:
            self.status, self.message = status, message
            for state in self.files:
                if status == "refused":  # nothing ran: every planned file is refused with the job
                    state.status = "refused"
                elif state.status in ("queued", "running"):
                    state.status = "cancelled"
            self.finished = time.time()


def _check_inside(planned: list[Any], output: Path) -> None:
    """`ConfigError` (the job is refused, nothing written) when an output would land outside `output`
    through a link inside it (a sub-folder of the results that links elsewhere): the page writes only
    into the output folder it names."""
    root = output.resolve()
    for job in planned:
        where = job.target.resolve()  # links followed, the missing rest of the path kept
        if where != root and root not in where.parents:
            raise ConfigError(
                f"{job.target}: a link inside {output} leads to {where.parent}, outside the output folder; "
                "remove the link or choose another output folder"
            )


class _CancelledBeforeStart(Exception):
    pass


class JobQueue:
    """Jobs run one at a time, in the order they were submitted, on one worker thread."""

    def __init__(self, upscaler_options: dict[str, Any]) -> None:
        self.upscaler_options = upscaler_options
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()  # a queued job is started or cancelled, never both
        self._worker = threading.Thread(target=self._work, name="repsr-app-jobs", daemon=True)
        self._worker.start()

    def submit(self, request: JobRequest) -> Job:
        job = Job(request)
        self.jobs[job.id] = job
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ConfigError(f"{job_id}: no such job")
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job (it never starts) or a running one (its current file stops, nothing
        half-written is left)."""
        job = self.get(job_id)
        with self._lock:
            job.cancel.set()
            if job.started is None:  # still in the queue: said now (it stayed "queued" until its turn came)
                job.started = time.time()
                job._finish("cancelled", "cancelled before it started")
        return job

    def busy(self) -> bool:
        return any(job.status in ("queued", "running") for job in self.jobs.values())

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.cancel.is_set():  # cancelled while queued (`cancel` said so already, `close` not)
                    if job.finished is None:
                        job.started = time.time()
                        job._finish("cancelled", "cancelled before it started")
                    continue
                job.started = time.time()  # taken: a cancel from now on stops it as it runs
            job.run(self.upscaler_options)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every job and stop the worker (waits up to `timeout` for the running file to stop)."""
        for job in self.jobs.values():
            job.cancel.set()
        self._queue.put(None)
        self._worker.join(timeout)
