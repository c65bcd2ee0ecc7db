"""Every block merges exactly; BN modes behave; merged-form training equals branch training."""

import pytest
import torch

import repsr
from repsr.arch.blocks import RepBN
from repsr.arch.network import set_bn_mode, set_merged_training

from .helpers import randomize

# (block, options): every block, every BN mode it has, both BN placements of the RepSR block.
VARIANTS = [
    ("plain", {}),
    ("repsr", {"bn_mode": "batch"}),
    ("repsr", {"bn_mode": "frozen"}),
    ("repsr", {"bn_mode": "none"}),
    ("repsr", {"bn_mode": "batch", "squeeze_bn": True}),
    ("repsr", {"bn_mode": "none", "squeeze_bn": True}),
    ("repsr", {"paths": 1, "expand": 1, "identity": False}),
    ("repsr", {"rep_head_tail": True}),
    ("repvgg", {"bn_mode": "batch"}),
    ("repvgg", {"bn_mode": "none", "rep_head_tail": True}),
    ("acb", {"bn_mode": "batch"}),
    ("acb", {"bn_mode": "none"}),
    ("dbb", {"bn_mode": "batch"}),
    ("dbb", {"bn_mode": "none"}),
    ("dbb", {"rep_head_tail": True}),
    ("ecb", {}),
    ("ecb", {"identity": True, "rep_head_tail": True}),
]
IDS = [f"{b}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for b, o in VARIANTS]


def _max_merge_error(block, options, scale, in_channels, dtype):
    model = (
        randomize(
            repsr.build_model(
                block, scale=scale, num_blocks=2, channels=6, in_channels=in_channels, **options
            )
        )
        .to(dtype)
        .eval()
    )
    x = torch.rand(
        2, in_channels, 11, 9, dtype=dtype, generator=torch.Generator().manual_seed(0)
    )  # odd: borders
    plain = repsr.reparameterize_model(model)
    with torch.no_grad():
        return (model(x) - plain(x)).abs().max().item()


@pytest.mark.parametrize("block,options", VARIANTS, ids=IDS)
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_merge_is_exact(block, options, scale, in_channels):
    assert _max_merge_error(block, options, scale, in_channels, torch.float64) <= 1e-10
    assert _max_merge_error(block, options, scale, in_channels, torch.float32) <= 1e-5


def test_randomized_bn_statistics_matter():
    """Guard against the trivial pass: the BN statistics must change the output the merge has to match."""
    model = randomize(repsr.build_model("repsr", scale=2, num_blocks=2, channels=6)).eval()
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        before = model(x)
        for module in model.modules():
            if isinstance(module, RepBN):
                module.reset_running_stats()
        assert (model(x) - before).abs().max() > 1e-2


def test_reparameterize_leaves_the_model_untouched():
    model = randomize(repsr.build_model("dbb", scale=2, num_blocks=2, channels=6)).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = repsr.reparameterize_model(model)
    assert model.training and not plain.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert isinstance(plain, repsr.PlainSR) and plain.spec == model.spec


def test_frozen_bn_survives_train_and_batch_mode_updates_statistics():
    model = randomize(repsr.build_model("repsr", scale=2, num_blocks=1, channels=4))
    bn = model.blocks[0].expand_bn
    x = torch.rand(4, 3, 8, 8)
    model.train()
    before = bn.running_mean.clone()
    model(x)
    assert not torch.equal(before, bn.running_mean), "batch mode must update running statistics"

    assert set_bn_mode(model, "frozen") == 1
    model.train()  # plain PyTorch would put BN back on batch statistics here
    frozen_mean = bn.running_mean.clone()
    out_train = model(x)
    assert torch.equal(frozen_mean, bn.running_mean)
    assert bn.mode == "frozen"
    assert torch.allclose(out_train, model.eval()(x))
    # the mode is part of the state dict, so a checkpoint restores it
    copy = repsr.build_model("repsr", scale=2, num_blocks=1, channels=4)
    copy.load_state_dict(model.state_dict())
    assert copy.blocks[0].expand_bn.mode == "frozen"


def test_none_mode_has_no_bn():
    for block in ("repsr", "repvgg", "acb", "dbb"):
        model = repsr.build_model(block, scale=2, num_blocks=2, channels=4, bn_mode="none")
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), block


def test_ecb_masks_are_buffers_not_parameters():
    model = repsr.build_model("ecb", scale=2, num_blocks=1, channels=4)
    names = [n for n, _ in model.named_parameters()]
    assert not any("mask" in n for n in names)
    assert any(n.endswith("mask") for n, _ in model.named_buffers())


LINEAR_VARIANTS = [(v, i) for v, i in zip(VARIANTS, IDS, strict=True) if v[1].get("bn_mode") != "batch"]


@pytest.mark.parametrize(
    "block,options", [v for v, _ in LINEAR_VARIANTS], ids=[i for _, i in LINEAR_VARIANTS]
)
def test_merged_training_matches_branches_in_outputs_and_gradients(block, options):
    model = randomize(repsr.build_model(block, scale=2, num_blocks=2, channels=5, **options)).double()
    set_bn_mode(model, "frozen")
    model.train()
    x = torch.rand(2, 3, 9, 10, dtype=torch.float64)

    def run():
        model.zero_grad()
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_branches, grads_branches = run()
    set_merged_training(model, True)
    out_merged, grads_merged = run()
    assert (out_branches - out_merged).abs().max() <= 1e-10
    assert grads_branches.keys() == grads_merged.keys()
    for name, grad in grads_branches.items():
        assert torch.allclose(grad, grads_merged[name], atol=1e-9, rtol=1e-7), name


def test_merged_training_refuses_batch_statistics():
    model = repsr.build_model("repsr", scale=2, num_blocks=1, channels=4)
    with pytest.raises(ValueError, match="frozen"):
        set_merged_training(model, True)


def test_bad_options_are_config_errors():
    with pytest.raises(repsr.RepsrError, match="unknown block"):
        repsr.build_model("nope", scale=2, num_blocks=1, channels=4)
    with pytest.raises(repsr.RepsrError, match="scale"):
        repsr.build_model("repsr", scale=5, num_blocks=1, channels=4)
    with pytest.raises(repsr.RepsrError, match="does not take"):
        repsr.build_model("ecb", scale=2, num_blocks=1, channels=4, bn_mode="batch")
    with pytest.raises(repsr.RepsrError, match="bn_mode"):
        repsr.build_model("repsr", scale=2, num_blocks=1, channels=4, bn_mode="sometimes")
