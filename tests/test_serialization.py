"""save_model/load_model round trips, the SRVGGNetCompact layout, and refusal of bad files."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import repsr
from repsr.util.errors import ModelFileError

from .helpers import randomize


class CompactReference(nn.Module):
    """An independent copy of Real-ESRGAN's SRVGGNetCompact (PReLU), as third-party tools define it."""

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4):
        super().__init__()
        self.upscale = upscale
        self.body = nn.ModuleList(
            [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)]
        )
        for _ in range(num_conv):
            self.body.append(nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.body.append(nn.PReLU(num_parameters=num_feat))
        self.body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x):
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


def _trained_pair(block="repsr", scale=3, in_channels=3):
    model = randomize(
        repsr.build_model(block, scale=scale, num_blocks=3, channels=8, in_channels=in_channels)
    )
    return model.eval(), repsr.reparameterize_model(model)


@pytest.mark.parametrize("form", ["train", "plain"])
def test_round_trip_rebuilds_the_right_module(tmp_path, form):
    model, plain = _trained_pair()
    source = model if form == "train" else plain
    path = tmp_path / "m.safetensors"
    repsr.save_model(source, path)
    loaded = repsr.load_model(path)
    assert type(loaded) is type(source) and loaded.spec == source.spec
    x = torch.rand(1, 3, 10, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_plain_file_loads_unchanged_in_the_compact_reference(tmp_path):
    model, plain = _trained_pair(scale=4)
    path = tmp_path / "plain.safetensors"
    repsr.save_model(plain, path)
    reference = CompactReference(num_feat=8, num_conv=3, upscale=4)
    reference.load_state_dict(load_file(path))  # strict: same keys, same shapes
    x = torch.rand(2, 3, 9, 8)
    with torch.no_grad():
        assert (reference(x) - model(x)).abs().max() < 1e-5


def test_loads_compact_pth_files_and_infers_the_spec(tmp_path):
    reference = randomize(CompactReference(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=2, upscale=2))
    path = tmp_path / "realesr.pth"
    torch.save({"params_ema": reference.state_dict()}, path)
    loaded = repsr.load_model(path)
    assert isinstance(loaded, repsr.PlainSR)
    assert (loaded.spec.scale, loaded.spec.in_channels, loaded.spec.channels, loaded.spec.num_blocks) == (
        2,
        1,
        8,
        2,
    )
    x = torch.rand(1, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_loads_training_checkpoints(tmp_path):
    model, _ = _trained_pair("acb")
    path = tmp_path / "ckpt.pt"
    torch.save({"spec": model.spec.to_dict(), "model": model.state_dict(), "iteration": 7}, path)
    loaded = repsr.load_model(path)
    assert isinstance(loaded, repsr.RepNet) and loaded.spec == model.spec


def _expect_refusal(path, pattern):
    with pytest.raises(ModelFileError, match=pattern) as info:
        repsr.load_model(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_refuses_missing_empty_and_garbage_files(tmp_path):
    _expect_refusal(tmp_path / "absent.safetensors", "no such file")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _expect_refusal(tmp_path / "empty.safetensors", "empty")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01not a model at all" * 10)
    _expect_refusal(tmp_path / "junk.safetensors", "not a readable safetensors")
    (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04 garbage")
    _expect_refusal(tmp_path / "junk.pth", "not a loadable")


class Payload:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


def test_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"body.0.weight": Payload()}, path)
    _expect_refusal(path, "not a loadable weights-only")


def _tensors_and_metadata(path):
    """A safetensors file's tensors and header metadata, to write a doctored copy of it."""
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    return load_file(path), metadata


def test_refuses_mismatched_tensors(tmp_path):
    _, plain = _trained_pair()
    repsr.save_model(plain, tmp_path / "good.safetensors")

    state, metadata = _tensors_and_metadata(tmp_path / "good.safetensors")

    def write(name, tensors):
        save_file(tensors, tmp_path / name, metadata=metadata)
        return tmp_path / name

    _expect_refusal(
        write("missing.safetensors", {k: v for k, v in state.items() if k != "body.2.bias"}),
        "missing key.*body.2.bias",
    )
    _expect_refusal(write("extra.safetensors", {**state, "body.99.weight": torch.zeros(1)}), "unexpected key")
    _expect_refusal(
        write("shape.safetensors", {**state, "body.0.weight": torch.zeros(8, 3, 5, 5)}),
        "body.0.weight has shape",
    )
    nan = state["body.1.weight"].clone()
    nan[0] = float("nan")
    _expect_refusal(write("nan.safetensors", {**state, "body.1.weight": nan}), "non-finite")
    save_file(state, tmp_path / "meta.safetensors", metadata={**metadata, "scale": "four"})
    _expect_refusal(tmp_path / "meta.safetensors", "metadata")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    _, plain = _trained_pair()
    repsr.save_model(plain, tmp_path / "m.safetensors")
    repsr.save_model(plain, tmp_path / "m.safetensors")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_pickle_or_text_as_pth_does_not_quote_torchs_unsafe_advice(tmp_path):
    from repsr.models.files import load_model

    torch.save({"x": Path("not a tensor")}, tmp_path / "pickle.pth")
    (tmp_path / "text.pth").write_text("hello, this is not a model\n")
    for name in ("pickle.pth", "text.pth"):
        with pytest.raises(ModelFileError) as caught:
            load_model(tmp_path / name)
        message = str(caught.value)
        assert name in message and "\n" not in message
        assert "weights_only set to False" not in message and "Re-running" not in message
    with pytest.raises(ModelFileError, match="not a plain state dict"):
        load_model(tmp_path / "pickle.pth")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("channels", "1000000000", "malformed model spec|has shape"),
        ("channels", "20000", "has shape"),  # 14 GB of weights if it were built before the check
        ("num_blocks", "1000000000", "declares 1000000000 blocks"),
        ("num_blocks", "100000", "declares 100000 blocks"),
        ("num_blocks", "-1", "num_blocks must be >= 0"),
        ("scale", "0", "scale must be one of"),
        ("scale", "1000", "scale must be one of"),
    ],
)
def test_absurd_sizes_in_the_metadata_are_refused_before_any_allocation(tmp_path, key, value, match):
    """Issue 28: the spec was built before it was compared with the tensors, so a header declaring 10^9
    blocks spent minutes (and 20000 channels gigabytes) before the refusal."""
    import time

    _, plain = _trained_pair()
    repsr.save_model(plain, tmp_path / "good.safetensors")
    with safe_open(str(tmp_path / "good.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(tmp_path / "good.safetensors"), tmp_path / "m.safetensors", {**metadata, key: value})
    start = time.monotonic()
    _expect_refusal(tmp_path / "m.safetensors", match)
    assert time.monotonic() - start < 2.0


def test_a_checkpoint_declaring_more_than_it_holds_is_refused_quickly(tmp_path):
    import time

    model, _ = _trained_pair()
    spec = {**model.spec.to_dict(), "num_blocks": 10**8}
    torch.save({"spec": spec, "model": model.state_dict()}, tmp_path / "c.pt")
    start = time.monotonic()
    _expect_refusal(tmp_path / "c.pt", "declares 100000000 blocks")
    assert time.monotonic() - start < 2.0


def test_a_plain_pickle_is_refused_in_one_line_without_torchs_warnings(tmp_path, capsys):
    """Issue 28: a protocol-4 pickle (not from torch.save) added two lines of torch's UserWarning."""
    import pickle
    import warnings

    from repsr.cli import main

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"body.0.weight": Path("x")}, protocol=4))
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    image.write_bytes(_png_bytes())
    args = ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-m", str(tmp_path / "evil.pth")]
    with warnings.catch_warnings(record=True) as shown:  # pytest would hide them from capsys
        warnings.simplefilter("always")
        assert main(args) == 2
    assert not shown, [str(w.message)[:80] for w in shown]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evil.pth" in err and "Warning" not in err


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_infinite_block_options_are_a_malformed_spec(tmp_path):
    """Issue 28: `"expand": Infinity` in a training-form file's options escaped as an OverflowError."""
    model, _ = _trained_pair()
    repsr.save_model(model, tmp_path / "t.safetensors")
    state, metadata = _tensors_and_metadata(tmp_path / "t.safetensors")
    save_file(state, tmp_path / "inf.safetensors", {**metadata, "options": '{"expand": Infinity}'})
    _expect_refusal(tmp_path / "inf.safetensors", "malformed model spec")
