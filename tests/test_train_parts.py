"""The trainer's parts on their own: the phase schedule, the step loop, the artifacts' one format, and a
Trainer that has no global side effects until it runs."""

from __future__ import annotations

import torch

from repsr.arch.blocks import RepBN
from repsr.arch.phase import Phase, model_phase
from repsr.training import checkpoint as ckpt
from repsr.training.artifacts import checkpoint_state, verify_deployed
from repsr.training.builders import build_network
from repsr.training.distributed import Distributed
from repsr.training.loop import LossMeter, run_steps
from repsr.training.schedule import PhaseSchedule, lr_factor
from tests.helpers.train import make_trainer, tiny_config


def test_schedule_switch_iteration_and_phases():
    schedule = PhaseSchedule.from_config(tiny_config(**{"train.iterations": 10, "bn.switch_at": 0.75}))
    assert schedule.switch_at == 8 and schedule.initial == Phase.BATCH_STATS  # round(7.5) = 8
    assert [schedule.switch_due(Phase.BATCH_STATS, i) for i in (7, 8, 10)] == [False, True, True]
    assert not schedule.switch_due(Phase.MERGED, 9)
    assert schedule.after_switch == Phase.MERGED
    unmerged = PhaseSchedule.from_config(tiny_config(**{"bn.merged_training": False}))
    assert unmerged.after_switch == Phase.FROZEN_STATS
    # what older checkpoints recorded as bn_phase reads as the phase of the current config
    assert [schedule.parse(old) for old in ("batch", "frozen")] == [Phase.BATCH_STATS, Phase.MERGED]
    assert [unmerged.parse(new) for new in ("batch_stats", "merged")] == [
        Phase.BATCH_STATS,
        Phase.FROZEN_STATS,
    ]
    for settings in ({"bn.mode": "batch"}, {"bn.mode": "none"}, {"model.block": "ecb"}):
        never = PhaseSchedule.from_config(tiny_config(**settings))
        assert never.switch_at is None and not never.switch_due(never.initial, 10**6)
    no_bn = PhaseSchedule.from_config(tiny_config(**{"bn.mode": "none"}))
    assert no_bn.initial == Phase.MERGED and no_bn.parse("none") == Phase.MERGED


def test_schedule_apply_puts_the_model_in_its_phase():
    config = tiny_config(**{"bn.freeze_affine": True})
    schedule, model = PhaseSchedule.from_config(config), build_network(config)
    schedule.apply(model, Phase.MERGED)
    bns = [m for m in model.modules() if isinstance(m, RepBN)]
    assert model_phase(model) == Phase.MERGED and not any(bn.weight.requires_grad for bn in bns)
    schedule.apply(model, Phase.BATCH_STATS)
    assert model_phase(model) == Phase.BATCH_STATS and all(bn.weight.requires_grad for bn in bns)


def test_lr_factor_warmup_and_cosine_end():
    config = tiny_config(**{"train.iterations": 100, "train.warmup": 10, "train.scheduler": "cosine"})
    assert [lr_factor(config, s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(config, 55) < lr_factor(config, 10) and lr_factor(config, 10) == 1.0
    assert abs(lr_factor(config, 100) - config.train.min_lr / config.train.lr) < 1e-12


def test_run_steps_and_loss_meter():
    calls, meter = [], LossMeter(torch.device("cpu"))

    def step(batch):
        calls.append(("step", batch))
        return torch.tensor(float(batch))

    def after(iteration, loss):
        calls.append(("after", iteration))
        meter.add(loss)

    end = run_steps(
        3, 6, iter([10, 20, 30, 40]), step, before=lambda i: calls.append(("before", i)), after=after
    )
    assert end == 6 and calls[:3] == [("before", 3), ("step", 10), ("after", 4)] and len(calls) == 9
    assert meter.mean(Distributed()) == 20.0 and meter.count == 0
    meter.add(torch.tensor(float("nan")))
    assert meter.any_bad(Distributed())


def test_final_and_periodic_checkpoints_share_one_format(tmp_path):
    config = tiny_config()
    model = build_network(config)
    common = {"iteration": 8, "phase": Phase.MERGED, "config": config.to_dict(), "history": []}
    final = checkpoint_state(model, **common, best=None, seconds=1.0, weights="ema", dtype=torch.float32)
    periodic = checkpoint_state(
        model, **common, best=None, seconds=1.0, optimizer=torch.optim.Adam(model.parameters())
    )
    assert final.keys() == periodic.keys() and final["format"] == periodic["format"] == ckpt.CHECKPOINT_FORMAT
    assert final["optimizer"] is None and final["phase"] == "merged" and type(final["phase"]) is str
    path = tmp_path / "final.pt"
    torch.save(final, path)
    assert ckpt.read_checkpoint(path)["weights"] == "ema"
    from repsr.arch.network import reparameterize_model

    assert verify_deployed(model, reparameterize_model(model)) < 1e-4


def test_constructing_a_trainer_has_no_global_side_effects(tmp_path):
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    config = tiny_config(**{"train.threads": max(1, threads - 1) if threads > 1 else 2})
    first = make_trainer(tmp_path, config)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert not (tmp_path / "run").exists()  # no config.yaml, no logs before run()
    second = make_trainer(tmp_path, config, name="again")
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the initial weights still follow the seed
    first.close()
    second.close()


def test_a_checkpoint_of_the_old_bn_phase_vocabulary_resumes(tmp_path):
    """Written before `phase` replaced `bn_phase` (batch/frozen/none): it resumes in the phase it meant."""
    import shutil
    from pathlib import Path

    from repsr.training.config import TrainConfig

    old = Path(__file__).parent / "fixtures" / "old_format" / "ckpt_00000004.pt"
    saved = torch.load(old, weights_only=True)
    assert saved["bn_phase"] == "frozen" and "phase" not in saved
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(old, tmp_path / "run" / "checkpoints" / old.name)
    config = TrainConfig.from_dict(saved["config"]).with_overrides(["train.iterations=6"])
    trainer = make_trainer(tmp_path, config, resume=True)
    assert trainer.iteration == 4 and trainer.phase == Phase.MERGED
    assert model_phase(trainer.model) == Phase.MERGED
    result = trainer.run()
    assert [row.get("phase") for row in result.history] == ["batch", "frozen", "merged"]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("iteration,loss,lr,phase,seconds")
    assert torch.load(result.checkpoint_path, weights_only=True)["phase"] == "merged"


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_a_replanned_run_is_the_run_planned_that_long_from_the_start(tmp_path):
    """A run planned for 10 iterations and replanned to 16 after 5 (before its switch at 5 of 10 would
    matter: the switch moves to 8 of 16) ends exactly as a 16-iteration run: the same patches, the same
    LR, the same switch. The LR is constant so that the first 5 steps agree by construction."""
    settings = {"bn.switch_at": 0.5, "train.scheduler": "constant", "val.every": 0, "checkpoint.every": 100}
    whole = make_trainer(tmp_path, tiny_config(**settings, **{"train.iterations": 16}), name="whole")
    whole.run()
    short = make_trainer(tmp_path, tiny_config(**settings, **{"train.iterations": 10}), name="short")
    assert short.run(until=4) is None
    short.replan(16)
    assert short.total == 16 and short.switch_at == 8 and short.config.train.iterations == 16
    short.run()
    mine, planned = _weights(short), _weights(whole)
    assert mine.keys() == planned.keys() and all(torch.equal(mine[k], planned[k]) for k in mine)
    assert (tmp_path / "short" / "config.yaml").read_text() == (
        tmp_path / "whole" / "config.yaml"
    ).read_text()


def test_replan_puts_the_next_step_on_the_new_lr_curve_and_a_past_switch_happens_at_once(tmp_path):
    config = tiny_config(**{"train.iterations": 20, "bn.switch_at": 0.5, "val.every": 0})
    trainer = make_trainer(tmp_path, config)
    assert trainer.run(until=6) is None
    trainer.replan(8)  # the switch (0.5 of 8 = 4) is already past: due before the next step
    new_lr = config.train.lr * lr_factor(trainer.config, 6)
    assert new_lr < config.train.lr * lr_factor(config, 6)  # a shorter cosine: lower at the same step
    assert [g["lr"] for g in trainer.state.optimizer.param_groups] == [new_lr]
    assert trainer.phase == Phase.BATCH_STATS
    result = trainer.run()
    assert result is not None and trainer.iteration == 8 and trainer.phase == Phase.MERGED
    try:
        trainer.replan(8)
    except Exception as error:  # noqa: BLE001 - the one-line error
        assert "8 iterations, but 8 are done" in str(error)
    else:
        raise AssertionError("replanning to the iterations done must be refused")
