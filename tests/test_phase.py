"""Typed state: the phase function, RepBN's frozen state (no graph break), the EMA's mode, typed specs,
files written before these changes, and `reparameterize_model` on any module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import repsr
from repsr.arch.blocks import BLOCKS, BNMode, RepBlock, RepBN, RepSRBlock
from repsr.arch.network import ModelSpec
from repsr.arch.phase import Phase, model_phase, set_phase
from repsr.training.ema import ModelEMA

from .helpers import ACROSS_PATHS, randomize

OLD = Path(__file__).parent / "fixtures" / "old_format"  # written by the code before issue 13 (552d7c3)


def _tiny(**options) -> repsr.RepNet:
    return randomize(repsr.build_model("repsr", scale=2, num_blocks=2, channels=4, **options))


def _flags(model) -> tuple[set, set, set, set]:
    bns = [m for m in model.modules() if isinstance(m, RepBN)]
    blocks = [m for m in model.modules() if isinstance(m, RepBlock)]
    return (
        {bn.frozen for bn in bns},
        {block.merged_training for block in blocks},
        {bn.momentum for bn in bns},
        {p.requires_grad for bn in bns for p in (bn.weight, bn.bias)},
    )


@pytest.mark.parametrize(
    "phase,frozen,merged",
    [(Phase.BATCH_STATS, False, False), (Phase.FROZEN_STATS, True, False), (Phase.MERGED, True, True)],
)
def test_each_phase_sets_exactly_its_flags(phase, frozen, merged):
    model = _tiny(rep_head_tail=True)
    for start in Phase:  # from every phase, to `phase`
        set_phase(model, start)
        model.train()
        assert set_phase(model, phase) is model
        assert _flags(model) == ({frozen}, {merged}, {0.1}, {True})
        assert model.training  # the phase leaves train()/eval() alone
        assert model_phase(model) == phase
    assert _flags(set_phase(model, phase, track_statistics=False, train_affine=False))[2:] == ({0.0}, {False})


def test_train_and_eval_do_not_undo_the_phase():
    model = _tiny()
    set_phase(model, Phase.MERGED)
    model.train()
    model.eval()
    model.train()
    assert model_phase(model) == Phase.MERGED and _flags(model)[:2] == ({True}, {True})


def test_merged_phase_needs_no_batch_statistics_and_batch_probe_leaves_statistics():
    model = _tiny()
    x = torch.rand(2, 3, 6, 6)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    set_phase(model, Phase.BATCH_STATS, track_statistics=False).train()(x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    set_phase(model, Phase.BATCH_STATS).train()(x)
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())


def test_ema_follows_the_bn_mode_both_ways():
    model = _tiny()
    ema = ModelEMA(model, decay=0.9)
    set_phase(model, Phase.MERGED)
    ema.update(model)
    assert all(m.mode == BNMode.FROZEN for m in ema.module.modules() if isinstance(m, RepBN))
    set_phase(model, Phase.BATCH_STATS)
    ema.copy_buffers(model)
    assert all(m.mode == BNMode.BATCH for m in ema.module.modules() if isinstance(m, RepBN))
    set_phase(model, Phase.FROZEN_STATS)
    restored = ModelEMA(_tiny(), decay=0.9)
    restored.load_state_dict(ModelEMA(model, decay=0.9).state_dict())
    assert all(m.frozen for m in restored.module.modules() if isinstance(m, RepBN))


def test_frozen_state_is_extra_state_not_a_buffer():
    model = _tiny()
    set_phase(model, Phase.FROZEN_STATS)
    assert not any(name.endswith("frozen") for name, _ in model.named_buffers())
    state = model.state_dict()
    assert bool(state["blocks.0.expand_bn._extra_state"])
    copy = repsr.build_model("repsr", scale=2, num_blocks=2, channels=4)
    copy.load_state_dict(state)
    assert model_phase(copy) == Phase.FROZEN_STATS


def _compile_check(model, x) -> None:
    torch._dynamo.reset()
    torch.compile(model, fullgraph=True, backend="eager")(x)  # dynamo raises at a graph break


def test_compile_has_no_graph_break_in_batch_and_frozen_statistics():
    if not hasattr(torch, "compile") or not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this platform")
    model = _tiny(rep_head_tail=True)
    x = torch.rand(2, 3, 8, 8)
    _compile_check(set_phase(model, Phase.BATCH_STATS).train(), x)  # phase 1: mini-batch statistics
    _compile_check(set_phase(model, Phase.FROZEN_STATS).train(), x)
    _compile_check(set_phase(model, Phase.MERGED).train(), x)
    torch._dynamo.reset()


def test_specs_are_typed_hashable_and_read_old_dicts():
    spec = repsr.build_model("repsr", scale=4, num_blocks=4, channels=16, bn_mode="batch").spec
    assert spec.options == RepSRBlock.Options(bn_mode=BNMode.BATCH) and not spec.rep_head_tail
    assert len({spec, ModelSpec.from_dict(spec.to_dict())}) == 1
    old = {"block": "repsr", "scale": 4, "num_blocks": 4, "channels": 16, "in_channels": 3}
    assert ModelSpec.from_dict({**old, "options": {"bn_mode": "batch"}}) == spec
    legacy = ModelSpec.from_dict({**old, "options": {"expand": 1, "rep_head_tail": True}})
    assert legacy.rep_head_tail and legacy.options.expand == 1
    assert ModelSpec.from_metadata(legacy.to_metadata()) == legacy
    assert ModelSpec("ecb", 2, 1, 4, options={"bn_mode": "none"}).options == BLOCKS["ecb"].Options()
    assert [name for name, block in BLOCKS.items() if block.has_bn] == ["repsr", "repvgg", "acb", "dbb"]


def test_files_written_before_typed_state_still_load():
    """`final.pt`, `model.safetensors` and a checkpoint of the old code (RepBN `frozen` as a buffer)."""
    trained, plain = repsr.load_model(OLD / "final.pt"), repsr.load_model(OLD / "model.safetensors")
    assert isinstance(trained, repsr.RepNet) and isinstance(plain, repsr.PlainSR)
    assert trained.spec == plain.spec and trained.spec.options.bn_mode == BNMode.BATCH
    assert model_phase(trained) == Phase.FROZEN_STATS  # the old `frozen` buffers were true
    io = torch.load(OLD / "io.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(io["x"]), io["y"], rtol=0, atol=ACROSS_PATHS)  # made elsewhere
        torch.testing.assert_close(trained(io["x"]), io["y"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            repsr.reparameterize_model(trained)(io["x"]), io["y"], rtol=1e-5, atol=1e-5
        )
    state = torch.load(OLD / "ckpt_00000004.pt", weights_only=True)
    assert ModelSpec.from_dict(state["spec"]) == trained.spec
    model = repsr.build_model(trained.spec.block, scale=4, num_blocks=2, channels=4, bn_mode="batch")
    model.load_state_dict(state["model"])
    ema = ModelEMA(model, decay=0.9)
    ema.load_state_dict(state["ema"])
    assert model_phase(model) == model_phase(ema.module) == Phase.FROZEN_STATS


def test_reparameterize_any_module():
    net = _tiny().eval()
    wrapper = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ModuleList([net.blocks[0]]))
    fused = repsr.reparameterize_model(wrapper)
    assert isinstance(fused[1][0], torch.nn.Conv2d) and isinstance(wrapper[1][0], RepBlock)
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fused[1][0](fused[0](x)), net.blocks[0].eval()(wrapper[0](x)))
    assert isinstance(repsr.reparameterize_model(net.blocks[1]), torch.nn.Conv2d)
    assert isinstance(repsr.reparameterize_model(net), repsr.PlainSR)
    with pytest.raises(repsr.RepsrError, match="torch.nn.Module"):
        repsr.reparameterize_model("model.safetensors")  # type: ignore[arg-type]
