"""The quickstart and the studies, run tiny: they must produce real, consistent outputs."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import repsr
from repsr.apps import demo, studies
from repsr.cli import COMMANDS, main
from repsr.training import TrainConfig

TINY = (
    "train.iterations=8",
    "train.batch_size=4",
    "data.patch_size=16",
    "bn.precise_batches=2",
    "val.every=4",
    "log.every=2",
    "checkpoint.every=8",
)


def test_every_registered_command_exists():
    import importlib.util

    missing = [name for name, module in COMMANDS.items() if importlib.util.find_spec(module) is None]
    assert not missing


@pytest.mark.slow
def test_demo_writes_model_pictures_and_report(tmp_path, monkeypatch):
    monkeypatch.setattr(
        demo,
        "demo_config",
        lambda minutes: TrainConfig().with_overrides([*demo.DEMO_SETTINGS, *TINY, "device=cpu"]),
    )
    monkeypatch.setattr(demo, "MIN_ITERATIONS", 4)
    result = demo.run_demo(minutes=1e-4, out=tmp_path / "demo", progress=False)  # over at once: 8 -> 4
    assert result.iterations == 4 and len(result.replans) == 1
    assert result.merge_error < 1e-4
    plain = repsr.load_model(result.model_path)
    assert isinstance(plain, repsr.PlainSR) and plain.spec.scale == 4
    report = result.report_path.read_text()
    assert f"{result.psnr:.2f}" in report and f"{result.bicubic_psnr:.2f}" in report
    assert "re-planned from 8 to 4 iterations" in report and "trained for\n4 iterations" in report
    assert 20 < result.bicubic_psnr < 45  # the sample photographs at x4
    width, height = Image.open(result.comparison_path).size
    assert width > 4 * height / 2  # four panels side by side
    assert Image.open(result.curves_path).size[0] > 0


def test_a_demo_model_below_bicubic_is_never_presented_as_the_result():
    common = {"run_dir": Path("r"), "model_path": Path("m"), "report_path": Path("p"), "merge_error": 0.0}
    common |= {"comparison_path": Path("c"), "curves_path": Path("k"), "minutes": 5.0}
    good = demo.DemoResult(psnr=25.3, bicubic_psnr=24.1, planned_s_per_it=0.1, actual_s_per_it=0.1, **common)
    assert good.beats_bicubic and good.verdict().startswith("RepSR 25.30 dB vs bicubic 24.10 dB (+1.20 dB)")
    slow = demo.DemoResult(psnr=23.4, bicubic_psnr=24.1, planned_s_per_it=0.1, actual_s_per_it=0.25, **common)
    assert not slow.beats_bicubic
    verdict = slow.verdict()
    assert "NOT better than bicubic" in verdict and "-0.70 dB" in verdict and "2.5x slower" in verdict
    assert "repsr demo --minutes 10" in verdict


def test_the_demo_command_exits_1_and_says_why_when_its_model_loses_to_bicubic(monkeypatch, capsys):
    from repsr.cli import main

    result = demo.DemoResult(
        run_dir=Path("runs/demo"),
        model_path=Path("m"),
        report_path=Path("p"),
        comparison_path=Path("c"),
        curves_path=Path("k"),
        psnr=23.0,
        bicubic_psnr=24.0,
        merge_error=0.0,
        planned_s_per_it=0.1,
        actual_s_per_it=0.3,
    )
    monkeypatch.setattr(demo, "run_demo", lambda **_: result)
    assert main(["demo", "--minutes", "1", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "NOT better than bicubic" in captured.err and captured.err.count("\n") == 1
    assert "deployed model" not in captured.out


def test_demo_config_fits_the_budget(monkeypatch):
    monkeypatch.setattr(demo, "seconds_per_iteration", lambda config: 0.1)
    config = demo.demo_config(minutes=2)
    assert config.train.iterations == int(2 * 60 * demo.TRAIN_SHARE / 0.1)
    assert config.model.block == "repsr" and config.bn.mode == "switch"


class SlowingClock:
    """A clock that training steps advance: 1 s each until `slow_after` steps, then `slow` s each."""

    def __init__(self, slow_after: int, slow: float) -> None:
        self.now, self.steps, self.slow_after, self.slow = 0.0, 0, slow_after, slow

    def __call__(self) -> float:
        return self.now

    def step(self) -> None:
        self.steps += 1
        self.now += 1.0 if self.steps <= self.slow_after else self.slow


@pytest.mark.parametrize(
    "slow,floor,planned", [(3.0, 1, 8), (3.0, 12, 12), (0.25, 1, 52)], ids=["slower", "floor", "faster"]
)
def test_the_demo_re_measures_its_pace_and_re_plans_its_length(tmp_path, monkeypatch, slow, floor, planned):
    """16 iterations planned for a 16 s budget; after 4 steps each step takes `slow` s instead of 1: the
    run re-plans to what fits (never below the floor), and ends with that many iterations."""
    from repsr.training.trainer import Trainer

    clock = SlowingClock(slow_after=4, slow=slow)
    train_step = Trainer.train_step

    def timed_step(self, lr_patch, hr_patch):
        clock.step()
        return train_step(self, lr_patch, hr_patch)

    monkeypatch.setattr(Trainer, "train_step", timed_step)
    monkeypatch.setattr(demo, "MIN_ITERATIONS", floor)
    tiny = [*TINY, "train.iterations=16", "val.every=0", "checkpoint.every=100", "device=cpu"]
    config = TrainConfig().with_overrides([*demo.DEMO_SETTINGS, *tiny])
    result, replans = demo.train_within(config, tmp_path / "run", deadline=16.0, progress=False, clock=clock)
    assert result.extra["config"].train.iterations == planned == clock.steps
    assert len(replans) == 1 and f"from 16 to {planned} iterations" in replans[0]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_fitted_iterations_never_go_below_the_floor_or_the_steps_done():
    assert demo.fitted_iterations(100.0, 0.1) == 1000
    assert demo.fitted_iterations(1.0, 0.1) == demo.MIN_ITERATIONS
    assert demo.fitted_iterations(1.0, 0.1, done=900) == 910
    assert demo.fitted_iterations(-5.0, 0.1, done=900) == 901


def test_batch_statistics_output_differs_from_population_statistics():
    model = repsr.build_model("repsr", scale=2, num_blocks=2, channels=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, repsr.arch.blocks.RepBN):
                module.running_mean.uniform_(-1, 1)
    lr = torch.rand(3, 12, 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    own = studies.batch_statistics_output(model, lr)
    with torch.no_grad():
        population = model.eval()(lr[None])[0]
    assert (own - population).abs().max() > 1e-3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the model must not change"


@pytest.mark.slow
def test_bn_study_runs_and_reports(tmp_path):
    report = studies.run_study(
        "bn",
        only=["none", "switch"],
        iterations=6,
        seeds=1,
        out=tmp_path,
        progress=False,
        overrides=["train.batch_size=4", "data.patch_size=16", "bn.precise_batches=2"],
    )
    text = report.read_text()
    records = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in records] == ["none", "switch"]  # `batch` left out by `only`
    for record in records:
        assert f"{record['psnr']['sample']:.2f}" in text
    assert "bn_gap" not in records[0]["extra"] and records[1]["extra"]["bn_gap"]["crop"]
    assert (tmp_path / "results.png").is_file()
    assert "Worst image" in text


def test_unknown_study_and_bad_budget_are_one_line_errors(capsys):
    assert main(["study", "blocks", "--iterations", "0"]) == 2
    assert "--iterations must be at least 1" in capsys.readouterr().err
    with pytest.raises(repsr.RepsrError, match="unknown study"):
        studies.run_study("nope")
    with pytest.raises(repsr.RepsrError, match="has no variant 'resnet'.*plain, repvgg"):
        studies.run_study("blocks", only=["resnet"])
