"""Training failure behaviour (issue 12): divergence, bad validation data, signals, full disks, strays.

Tiny runs (tests/test_train.py's synthetic data and config) keep each test to a few seconds.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from repsr.image.io import write_image
from repsr.training import Trainer, TrainingError
from repsr.training import checkpoint as ckpt
from repsr.util.errors import ConfigError, DataError, RepsrError
from tests.helpers.train import SyntheticPatches, make_trainer, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _all_finite(path: Path) -> bool:
    return ckpt.non_finite(torch.load(path, map_location="cpu", weights_only=True)) is None


# ---------------------------------------------------------------------------------------- divergence


def test_divergence_writes_only_finite_checkpoints_and_resume_continues_from_the_named_one(tmp_path):
    """lr 1e5 drives BN running variances to inf while the loss stays finite (as with the issue's
    `--set train.lr=1e4` on quick.yaml): before, every later checkpoint held inf and resume retrained."""
    config = tiny_config(
        **{
            "train.iterations": 40,
            "train.lr": 1e5,
            "train.warmup": 20,
            "bn.switch_at": 1.0,
            "checkpoint.every": 3,
            "checkpoint.keep": 10,
            "val.every": 10,
        }
    )
    with pytest.raises(TrainingError, match="diverge|non-finite") as caught:
        make_trainer(tmp_path, config).run()
    message = str(caught.value)
    folder = tmp_path / "run" / "checkpoints"
    saved = ckpt.list_checkpoints(folder)
    assert all(_all_finite(path) for _, path in saved)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    if saved:
        newest = saved[0][1]
        assert str(newest) in message and "--resume" in message
        resumed = make_trainer(tmp_path, config, resume=True)
        assert resumed.iteration == saved[0][0]
        resumed.close()
    else:
        assert "no usable checkpoint" in message
        with pytest.raises(ConfigError, match="earlier run"):
            make_trainer(tmp_path, config, resume=True)
        assert (tmp_path / "run" / "metrics.csv").read_text() == metrics


def test_a_non_finite_state_is_never_saved_and_resume_never_starts_over(tmp_path):
    config = tiny_config(**{"checkpoint.every": 2, "checkpoint.keep": 5})
    trainer = make_trainer(tmp_path, config)
    trainer.run(until=2)
    bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var.fill_(float("inf"))  # the loss stays finite: only the state is poisoned
    with pytest.raises(TrainingError, match="running_var") as caught:
        trainer.run(until=4)
    folder = tmp_path / "run" / "checkpoints"
    assert [i for i, _ in ckpt.list_checkpoints(folder)] == [2]
    assert str(folder / "ckpt_00000002.pt") in str(caught.value)
    # a poisoned file from an older version is skipped; with nothing usable, --resume refuses
    state = torch.load(folder / "ckpt_00000002.pt", weights_only=True)
    state["optimizer"]["state"][0]["exp_avg_sq"].fill_(float("nan"))
    torch.save(state, folder / "ckpt_00000002.pt")
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    with pytest.raises(ConfigError, match="unusable checkpoint.*not training from scratch"):
        make_trainer(tmp_path, config, resume=True)
    assert (tmp_path / "run" / "metrics.csv").read_text() == metrics


# ----------------------------------------------------------------------------------------- validation


def _with_val(out: Path, config, folder: Path) -> Trainer:
    return Trainer(
        config, data=SyntheticPatches(config.model.scale), val={"v": folder}, out=out, progress=False
    )


def test_bad_validation_images_are_skipped_at_the_start_and_all_bad_is_an_error(tmp_path, caplog):
    val = tmp_path / "val"
    write_image(val / "good.png", torch.rand(3, 32, 32))
    write_image(val / "tiny.png", torch.rand(3, 8, 8))
    (val / "empty.png").write_bytes(b"")
    config = tiny_config()
    caplog.set_level(logging.WARNING)
    trainer = _with_val(tmp_path / "run", config, val)
    assert [pair.name for pair in trainer.eval_sets["v"]] == ["good"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "empty.png" in warned and "tiny.png" in warned
    trainer.close()
    (val / "good.png").unlink()
    with pytest.raises(DataError, match="no usable validation images"):
        _with_val(tmp_path / "run2", config, val)


def test_a_failing_validation_keeps_that_iterations_checkpoint(tmp_path, monkeypatch):
    import repsr.training.step as step_module

    config = tiny_config(**{"val.every": 4, "checkpoint.every": 4})
    trainer = make_trainer(tmp_path, config)

    def broken(*args, **kwargs):
        raise RuntimeError("validation exploded")

    monkeypatch.setattr(step_module, "evaluate", broken)
    with pytest.raises(TrainingError, match="validation failed at iteration 4") as caught:
        trainer.run()
    path = tmp_path / "run" / "checkpoints" / "ckpt_00000004.pt"
    assert path.is_file() and str(path) in str(caught.value)


# ------------------------------------------------------------------------------------ signals, disks


def test_signal_handler_stops_after_the_step_and_a_second_signal_aborts(tmp_path):
    config = tiny_config(**{"train.iterations": 20, "checkpoint.every": 10})
    trainer = make_trainer(tmp_path, config)
    calls = []
    original = trainer.train_step

    def step(*batch):
        calls.append(len(calls))
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives during step 3
        return original(*batch)

    trainer.train_step = step
    from repsr.training import TrainingInterrupted

    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(TrainingInterrupted) as caught:
        trainer.run()
    assert caught.value.iteration == 3 and len(calls) == 3
    assert caught.value.checkpoint == tmp_path / "run" / "checkpoints" / "ckpt_00000003.pt"
    assert ckpt.read_checkpoint(caught.value.checkpoint)["iteration"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    # second signal: abort at once
    trainer = make_trainer(tmp_path, config, resume=True)
    calls.clear()

    def twice(*batch):
        calls.append(len(calls))
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return original(*batch)

    trainer.train_step = twice
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert len(calls) == 1


_TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from repsr.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    "workers,signum",
    [(0, signal.SIGINT), (1, signal.SIGINT), (1, signal.SIGTERM)],
    ids=["0-int", "1-int", "1-term"],
)
def test_ctrl_c_in_repsr_train_saves_and_prints_the_resume_command(tmp_path, workers, signum):
    """The signal goes to the whole process group, as Ctrl-C in a terminal or a machine's shutdown sends
    it: the data workers get it too and must leave the stop to the main process (before, a SIGTERM made
    the loader raise "DataLoader worker ... killed by signal" mid-step and no checkpoint was written)."""
    data = tmp_path / "hr"
    for i in range(2):
        write_image(data / f"{i}.png", torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(i)))
    config = tmp_path / "tiny.yaml"
    config.write_text(
        # steps long against loading (a worker's death then lands mid-step, as in real runs)
        "model: {block: repsr, scale: 2, num_blocks: 4, channels: 32}\n"
        f"data: {{patch_size: 16, workers: {workers}}}\n"
        "train: {iterations: 100000, batch_size: 8, threads: 1}\n"
        "val: {every: 0, sample: false}\n"
        "checkpoint: {every: 100000}\n"
        "log: {every: 1, tensorboard: false}\n"
    )
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [sys.executable, "-c", _TRAIN_SCRIPT, "train", str(config), "--data", str(data)]
    command += ["--out", str(out), "--no-progress"]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.csv").exists() or "\n5," not in (out / "metrics.csv").read_text():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        os.killpg(process.pid, signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    saved = ckpt.list_checkpoints(out / "checkpoints")
    assert len(saved) == 1
    iteration, path = saved[0]
    assert iteration >= 5 and str(path) in stderr
    resume = [line for line in stderr.splitlines() if line.startswith("resume with: ")]
    assert resume and resume[0].endswith("--resume") and f"--out {out}" in resume[0]
    assert (
        "interrupted" in (out / "train.log").read_text().lower()
        or signal.Signals(signum).name in (out / "train.log").read_text()
    )


def test_disk_full_during_a_checkpoint_names_the_file(tmp_path, monkeypatch):
    import repsr.util.atomic as atomic

    trainer = make_trainer(tmp_path, tiny_config(**{"checkpoint.every": 2}))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(RepsrError, match="disk full") as caught:
        trainer.run(until=2)
    assert "ckpt_00000002.pt" in str(caught.value) and "inline_container" not in str(caught.value)
    assert not list((tmp_path / "run" / "checkpoints").glob("*"))


def test_resume_removes_the_run_writers_stray_temp_files(tmp_path):
    config = tiny_config(**{"checkpoint.every": 2})
    make_trainer(tmp_path, config).run(until=2)
    run = tmp_path / "run"
    strays = [
        run / ".best.safetensors.x1y2.tmp",
        run / ".model.safetensors.abcd.tmp",
        run / ".final.pt.q.tmp",
    ]
    for stray in strays:
        stray.write_bytes(b"partial")
    (run / ".keep.me").write_text("not ours")
    resumed = make_trainer(tmp_path, config, resume=True)
    assert resumed.iteration == 2
    assert not any(stray.exists() for stray in strays) and (run / ".keep.me").exists()
    resumed.close()
