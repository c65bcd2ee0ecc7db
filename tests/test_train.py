"""The trainer: learning, the BN switch, merged phase 2, exact resume, atomic checkpoints, bad losses.

Runs are tiny (a 2-block, 8-channel x2 network on 12x12 patches of synthetic images) so the file stays
within a few seconds per test on a small CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repsr.arch.blocks import RepBlock, RepBN
from repsr.arch.phase import Phase
from repsr.data.samples import sample_images
from repsr.image.io import read_image, write_image
from repsr.training import Trainer, TrainingError, load_config
from repsr.training import checkpoint as ckpt
from repsr.training.bn_switch import precise_statistics
from repsr.training.distributed import Distributed
from repsr.training.ema import ModelEMA
from tests.helpers.train import make_trainer, synthetic_val, tiny_config


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    trainer = make_trainer(tmp_path, tiny_config(**{"train.iterations": 100, "train.scheduler": "constant"}))
    batch = (torch.stack(t) for t in zip(*(trainer.train_set[k] for k in range(4)), strict=True))
    lr_patch, hr_patch = (trainer.step.to_device(t) for t in batch)
    trainer.start()  # what run() does first: the config's thread count (1 for these tiny ops)
    trainer.model.train()
    losses = [float(trainer.train_step(lr_patch, hr_patch)) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]


def test_amp_runs_the_forward_in_bf16_and_keeps_the_state_in_float32(tmp_path):
    """bf16 autocast on CPU: the convs see bf16, while weights, gradients, the loss and the BN statistics
    stay float32 (so the optimizer and the BN switch work in full precision)."""
    trainer = make_trainer(tmp_path, tiny_config(**{"train.amp": True}))
    batch = (torch.stack(t) for t in zip(*(trainer.train_set[k] for k in range(4)), strict=True))
    lr_patch, hr_patch = (trainer.step.to_device(t) for t in batch)
    trainer.start()
    trainer.model.train()
    seen: list[torch.dtype] = []
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    loss = trainer.train_step(lr_patch, hr_patch)
    handle.remove()
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in trainer.model.parameters())
    bns = [m for m in trainer.model.modules() if isinstance(m, RepBN)]
    assert bns and all(bn.running_mean.dtype == torch.float32 for bn in bns)
    trainer.close()


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_follows_the_device_and_is_recorded(tmp_path, monkeypatch, native):
    from repsr.training import trainer as trainer_module
    from repsr.util.hardware import Capabilities

    units = "AVX512-BF16" if native else ""
    found = Capabilities("cpu", "Test CPU", units, fp16=False, int8_units="", source="test")
    monkeypatch.setattr(trainer_module, "device_capabilities", lambda device: found)
    config = tiny_config(**{"train.amp": "auto"})
    assert config.train.amp is None  # "auto" in YAML or --set
    trainer = make_trainer(tmp_path, config)
    assert trainer.config.train.amp is native  # what config.yaml and the checkpoints record
    trainer.close()
    exact = make_trainer(tmp_path, config, name="float64", dtype=torch.float64)
    assert exact.config.train.amp is False  # a float64 run exists to be exact
    exact.close()


def test_switch_happens_at_the_configured_iteration(tmp_path):
    trainer = make_trainer(tmp_path, tiny_config(**{"bn.switch_at": 0.75}))  # after iteration 6 of 8
    bns = [m for m in trainer.model.modules() if isinstance(m, RepBN)]
    blocks = [m for m in trainer.model.modules() if isinstance(m, RepBlock)]
    assert bns and blocks
    assert trainer.run(until=6) is None
    assert trainer.phase == Phase.BATCH_STATS
    assert all(bn.mode == "batch" for bn in bns)
    assert not any(block.merged_training for block in blocks)
    running_before = bns[0].running_var.clone()
    trainer.run(until=7)
    assert trainer.phase == Phase.MERGED
    assert all(bn.mode == "frozen" for bn in bns)
    assert all(block.merged_training for block in blocks)
    assert not torch.equal(running_before, bns[0].running_var)  # precise statistics replaced them
    frozen_stats = bns[0].running_var.clone()
    result = trainer.run()
    assert torch.equal(frozen_stats, bns[0].running_var)  # frozen: no longer updated
    phases = {row["iteration"]: row["phase"] for row in result.history if "phase" in row}
    assert phases == {2: "batch_stats", 4: "batch_stats", 6: "batch_stats", 8: "merged"}


def test_precise_statistics_are_the_population_statistics():
    """Mean and variance over all batches together (law of total variance), not averaged per batch."""
    torch.manual_seed(0)
    bn = RepBN(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), bn)
    with torch.no_grad():
        model[0].weight.copy_(
            torch.eye(3)[:, :, None, None] * torch.tensor([1.0, 2.0, 3.0])[:, None, None, None]
        )
    batches = [torch.rand(2, 3, 5, 5) * (i + 1) + i for i in range(3)]  # very different batch statistics
    report = precise_statistics(model, batches, Distributed())
    with torch.no_grad():
        inputs = torch.cat([model[0](x) for x in batches]).double()
    flat = inputs.transpose(0, 1).flatten(1)
    assert report.batches == 3
    torch.testing.assert_close(bn.running_mean.double(), flat.mean(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), flat.var(1), rtol=1e-6, atol=1e-6)
    naive = torch.stack([x.transpose(0, 1).flatten(1).var(1) for x in inputs.split(2)]).mean(0)
    assert (naive < 0.5 * flat.var(1)).all()  # averaging per-batch variances drops the spread of the means


def test_merged_phase_two_equals_branch_phase_two_in_float64(tmp_path):
    finals = {}
    for merged in (True, False):
        settings = {"bn.merged_training": merged, "val.every": 0, "model.rep_head_tail": True}
        config = tiny_config(**settings, **{"train.channels_last": False})  # no fast float64 CL convs
        trainer = make_trainer(tmp_path, config, name=f"merged-{merged}", dtype=torch.float64)
        trainer.run(until=7)
        blocks = [m for m in trainer.model.modules() if isinstance(m, RepBlock)]
        assert len(blocks) == 4 and all(b.merged_training == merged for b in blocks)
        finals[merged] = trainer.run().model.state_dict()
    assert finals[True].keys() == finals[False].keys()
    for key, value in finals[True].items():
        torch.testing.assert_close(value, finals[False][key], rtol=1e-9, atol=1e-11, msg=key)


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_resume_gives_the_same_weights_as_one_run(tmp_path, amp):
    """Killed before the switch and again after it: twice resumed, the run ends exactly as the whole one."""
    config = tiny_config(
        **{"train.iterations": 10, "bn.switch_at": 0.6, "ema.enabled": True, "ema.decay": 0.9},
        **{"train.amp": amp},
    )
    whole = make_trainer(tmp_path, config, name="whole").run()

    first = make_trainer(tmp_path, config, name="split")
    assert first.run(until=5) is None  # "killed" after iteration 5; last checkpoint at 4
    first.close()
    assert [i for i, _ in ckpt.list_checkpoints(tmp_path / "split" / "checkpoints")] == [4]
    second = make_trainer(tmp_path, config, name="split", resume=True)
    assert second.iteration == 4 and second.phase == Phase.BATCH_STATS
    assert second.run(until=9) is None  # switched after 6, killed after 9; last checkpoint at 8
    second.close()
    third = make_trainer(tmp_path, config, name="split", resume=True)
    assert third.iteration == 8 and third.phase == Phase.MERGED
    result = third.run()

    assert states_equal(result.model.state_dict(), whole.model.state_dict())  # the EMA, delivered
    assert states_equal(third.model.state_dict(), make_state(whole))
    assert [row.get("loss") for row in result.history] == [row.get("loss") for row in whole.history]
    assert torch.equal(result.plain.body[0].weight, whole.plain.body[0].weight)


def test_resume_is_exact_with_degradations_and_channel_shuffle(tmp_path):
    """Real-world LR made on the fly: a killed and resumed run ends exactly as the whole one."""
    folder = tmp_path / "hr"
    for path in sample_images()["train"][:2]:
        write_image(folder / f"{path.stem}.png", read_image(path).rgb[:, 100:196, 120:216])
    config = tiny_config(
        **{"train.iterations": 6, "bn.switch_at": 0.5, "degradation.preset": "general"},
        **{"data.channel_shuffle": True, "data.cache_dir": str(tmp_path / "cache")},
    )

    def trainer(name: str, **kwargs) -> Trainer:
        val = {"synth": synthetic_val(2)}
        return Trainer(config, data=folder, val=val, out=tmp_path / name, progress=False, **kwargs)

    whole = trainer("whole").run()
    first = trainer("split")
    assert first.run(until=5) is None  # last checkpoint at 4
    first.close()
    resumed = trainer("split", resume=True)
    assert resumed.iteration == 4
    result = resumed.run()
    assert states_equal(result.model.state_dict(), whole.model.state_dict())
    assert [row.get("loss") for row in result.history] == [row.get("loss") for row in whole.history]


def make_state(result) -> dict:
    """The raw (non-EMA) weights of a finished run, read back from its last checkpoint."""
    _, state = ckpt.newest_valid_checkpoint(result.run_dir / "checkpoints")
    return state["model"]


def test_resume_refuses_a_different_model(tmp_path):
    config = tiny_config()
    partial = make_trainer(tmp_path, config)
    partial.run(until=4)
    partial.close()
    with pytest.raises(Exception, match="resume"):
        make_trainer(tmp_path, config.with_overrides(["model.channels=6"]), resume=True)
    with pytest.raises(Exception, match="--resume"):
        make_trainer(tmp_path, config)  # same folder without --resume


def test_crash_while_checkpointing_keeps_the_previous_one(tmp_path, monkeypatch):
    config = tiny_config(**{"checkpoint.every": 2, "checkpoint.keep": 5})
    trainer = make_trainer(tmp_path, config)
    trainer.run(until=2)
    folder = tmp_path / "run" / "checkpoints"
    real_save = torch.save

    def crash_midway(state, path):
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 half a zip")  # partial bytes reach the temp file ...
        raise KeyboardInterrupt  # ... and the process dies before the rename

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(until=4)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in folder.iterdir()] == ["ckpt_00000002.pt"]  # no partial file, no temp file
    # a hard kill (no cleanup) leaves a temp file; a corrupt newer file may exist on a broken disk
    (folder / ".ckpt_00000004.pt.abc.tmp").write_bytes(b"partial")
    (folder / "ckpt_00000006.pt").write_bytes(b"PK\x03\x04 truncated")
    resumed = make_trainer(tmp_path, config, resume=True)
    assert resumed.iteration == 2
    assert not (folder / ".ckpt_00000004.pt.abc.tmp").exists()
    resumed.run()
    assert torch.load(folder / "ckpt_00000008.pt", weights_only=True)["iteration"] == 8


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(**{"checkpoint.every": 2})
    trainer = make_trainer(tmp_path, config)
    trainer.run(until=2)
    with torch.no_grad():
        trainer.model.head.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="non-finite in iterations 3-4"):
        trainer.run()
    folder = tmp_path / "run" / "checkpoints"
    assert [i for i, _ in ckpt.list_checkpoints(folder)] == [2]
    assert ckpt.read_checkpoint(folder / "ckpt_00000002.pt")["iteration"] == 2


def test_ema_averages_weights_and_bn_buffers():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), RepBN(2))
    ema = ModelEMA(model, decay=0.75)
    with torch.no_grad():
        model[0].weight.add_(4.0)
        model[1].running_mean.fill_(8.0)
        model[1].set_mode("frozen")
    old_weight = ema.module[0].weight.clone()
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, 0.75 * old_weight + 0.25 * model[0].weight)
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((2,), 2.0))
    assert ema.module[1].mode == "frozen"  # boolean buffers are copied


def _write_images(folder, count: int, size: int, seed: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(folder / f"img{i}.png")


def test_cli_end_to_end_with_real_images_and_sample_validation(tmp_path, capsys):
    """`repsr train` on a folder of PNGs: artifacts, formats, the deployed model equal to the trained one."""
    import repsr
    from repsr.arch.network import PlainSR, RepNet
    from repsr.cli import main

    _write_images(tmp_path / "hr", 3, 40, seed=0)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {scale: 2, num_blocks: 1, channels: 4}\n"
        f"data: {{patch_size: 8, workers: 0, cache_dir: {tmp_path / 'cache'}}}\n"
        "train: {iterations: 4, batch_size: 2, threads: 1}\n"
        "bn: {switch_at: 0.5, precise_batches: 1}\n"
        "device: cpu\n"
    )
    out = tmp_path / "run"
    args = ["train", str(config), "--data", str(tmp_path / "hr"), "--out", str(out), "--no-progress"]
    assert main([*args, "--set", "log.every=2"]) == 0
    assert str(out / "model.safetensors") in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {
        "config.yaml",
        "metrics.csv",
        "train.log",
        "final.pt",
        "model.safetensors",
        "best.safetensors",
    } <= names
    assert any((out / "tensorboard").iterdir())
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header == "iteration,loss,lr,phase,seconds,sample/psnr,sample/ssim"  # sample val by default
    resolved = load_config(out / "config.yaml")
    assert resolved.data.root == str(tmp_path / "hr") and resolved.log.every == 2

    trained, plain = repsr.load_model(out / "final.pt"), repsr.load_model(out / "model.safetensors")
    assert isinstance(trained, RepNet) and isinstance(plain, PlainSR)
    last = sorted((out / "checkpoints").iterdir())[-1]
    state = torch.load(last, weights_only=True)
    assert state["iteration"] == 4 and state["phase"] == "merged" and state["spec"]["block"] == "repsr"
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), trained(x), rtol=1e-4, atol=1e-4)

    # --resume of a finished run only re-delivers; a fresh start in the same folder is refused
    assert main([*args, "--resume"]) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("block,mode", [("ecb", "switch"), ("repsr", "none")])
def test_networks_without_bn_train_merged_from_the_start(tmp_path, block, mode):
    trainer = make_trainer(tmp_path, tiny_config(**{"model.block": block, "bn.mode": mode}))
    assert trainer.phase == Phase.MERGED and trainer.switch_at is None
    assert all(m.merged_training for m in trainer.model.modules() if isinstance(m, RepBlock))
    trainer.close()


def test_switch_at_the_very_end_still_delivers_population_statistics(tmp_path):
    result = make_trainer(tmp_path, tiny_config(**{"bn.switch_at": 1.0})).run()
    bns = [m for m in result.model.modules() if isinstance(m, RepBN)]
    assert bns and all(bn.mode == "frozen" for bn in bns)
    assert torch.load(result.checkpoint_path, weights_only=True)["phase"] == "merged"


def test_freeze_affine_stops_gamma_beta_after_the_switch(tmp_path):
    trainer = make_trainer(tmp_path, tiny_config(**{"bn.freeze_affine": True}))
    trainer.run(until=5)  # switched after 4
    bn = next(m for m in trainer.model.modules() if isinstance(m, RepBN))
    gamma, conv = bn.weight.detach().clone(), trainer.model.head.weight.detach().clone()
    result = trainer.run()
    assert not bn.weight.requires_grad and torch.equal(bn.weight, gamma)
    assert not torch.equal(result.model.head.weight, conv)  # the convolutions still train
