"""Denoise strength: weight blending of two models, its checks, the CLI flag, and export of a blend."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import repsr
from repsr.cli import main
from repsr.image.io import read_image, write_image
from repsr.models.blend import blend_models, load_blended
from repsr.util.errors import ConfigError, ModelFileError


def _shifted(model: torch.nn.Module, amount: float) -> torch.nn.Module:
    """A copy of `model` with every weight moved by `amount` (a stand-in for a fine-tuned partner)."""
    other = repsr.load_model("repsr-m4c16-x2")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(amount * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return other


@pytest.fixture
def ends() -> tuple[torch.nn.Module, torch.nn.Module]:
    detail = repsr.load_model("repsr-m4c16-x2")
    return detail, _shifted(detail, 0.02)


def test_blend_ends_are_the_two_models_and_the_middle_their_mean(ends) -> None:
    detail, denoise = ends
    for strength, expected in ((0.0, detail.state_dict()), (1.0, denoise.state_dict())):
        blended = blend_models(detail, denoise, strength).state_dict()
        assert all(torch.equal(blended[k], expected[k]) for k in expected)
    half = blend_models(detail, denoise, 0.5).state_dict()
    for key, value in detail.state_dict().items():
        torch.testing.assert_close(half[key], (value + denoise.state_dict()[key]) / 2)
    assert half.keys() == detail.state_dict().keys()


def test_output_moves_monotonically_between_the_ends(ends) -> None:
    detail, denoise = ends
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = denoise(x)
        distances = [
            float((blend_models(detail, denoise, s)(x) - target).abs().mean()) for s in (0, 0.25, 0.5, 1)
        ]
    assert distances == sorted(distances, reverse=True) and distances[-1] == 0


def test_bad_strengths_and_mismatched_models_are_refused(ends) -> None:
    detail, denoise = ends
    for strength in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="--denoise"):
            blend_models(detail, denoise, strength)
    with pytest.raises(ModelFileError, match="cannot blend"):
        blend_models(detail, repsr.load_model("repsr-m4c16-x4"), 0.5)
    with pytest.raises(ConfigError, match="no registered detail partner"):
        load_blended("repsr-m4c16-x2", 0.5)


def test_a_blend_exports_to_onnx_and_reloads(ends, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from repsr.deploy.onnx import export_onnx

    blended = blend_models(*ends, 0.3)
    repsr.save_model(blended, tmp_path / "blend.safetensors")
    reloaded = repsr.load_model(tmp_path / "blend.safetensors")
    assert all(
        torch.equal(a, b)
        for a, b in zip(reloaded.state_dict().values(), blended.state_dict().values(), strict=True)
    )
    export_onnx(reloaded, tmp_path / "blend.onnx", dynamic=True, size=(32, 32))
    assert (tmp_path / "blend.onnx").stat().st_size > 0


def test_cli_denoise_blends_with_the_named_partner(ends, tmp_path, capsys) -> None:
    detail, denoise = ends
    repsr.save_model(denoise, tmp_path / "denoise.safetensors")
    image = torch.round(torch.rand(3, 12, 10, generator=torch.Generator().manual_seed(1)) * 255) / 255
    write_image(tmp_path / "in" / "a.png", image)
    out = {}
    for strength in ("0", "1"):
        args = ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / f"out{strength}"), "--no-progress"]
        args += ["-m", str(tmp_path / "denoise.safetensors"), "--denoise", strength]
        assert main([*args, "--denoise-from", "repsr-m4c16-x2", "--precision", "fp32"]) == 0
        out[strength] = read_image(tmp_path / f"out{strength}" / "a.png").rgb
    assert "denoise strength 0" in capsys.readouterr().out
    with torch.no_grad():
        expected = {"0": detail(image[None])[0], "1": denoise(image[None])[0]}
    for strength, result in out.items():
        assert (result - expected[strength].clamp(0, 1)).abs().max() <= 1 / 255 + 1e-6
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--denoise", "2"]) != 0


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--denoise", "nan"], "--denoise: the strength must be between 0 and 1, got nan"),
        (["--denoise=-inf"], "--denoise: the strength must be between 0 and 1"),
        (["--denoise", "1.5", "-m", "repsr-general-m4c16-x2"], "--denoise: the strength must be between"),
        (["--denoise", "0.5", "--denoise-from", "repsr-m4c16-x4"], "scale 4 vs 2"),
        (["--denoise", "0.5", "--denoise-from", "{y}"], "in_channels 1 vs 3"),
        (["--denoise", "0.5", "--denoise-from", "{pickle}"], "pickle.pth: not a loadable weights-only"),
        (["--denoise", "0.5", "--denoise-from", "{text}"], "text.txt: not a model file"),
        (["--denoise", "0.5", "--denoise-from", "{onnx}"], "m.onnx is an ONNX file, and blending mixes"),
    ],
)
def test_cli_bad_blends_are_one_line_before_any_output(ends, tmp_path, capsys, flags, match) -> None:
    """Issue 28: the strength was announced ("denoise strength nan: ... blended") before it was checked,
    and partners of another size were refused without saying what differed."""
    import re

    detail, denoise = ends
    repsr.save_model(denoise, tmp_path / "denoise.safetensors")
    repsr.save_model(
        repsr.build_model("repsr", scale=2, num_blocks=4, channels=16, in_channels=1),
        tmp_path / "y.safetensors",
    )
    torch.save({"body.0.weight": Path("not a tensor")}, tmp_path / "pickle.pth")
    (tmp_path / "text.txt").write_text("not a model\n")
    write_image(tmp_path / "in" / "a.png", torch.rand(3, 8, 8))
    names = {
        "y": tmp_path / "y.safetensors",
        "pickle": tmp_path / "pickle.pth",
        "text": tmp_path / "text.txt",
        "onnx": tmp_path / "m.onnx",  # refused by name, before it is read: it need not exist
    }
    flags = [f.format(**names) for f in flags]
    if "-m" not in flags:
        flags += ["-m", str(tmp_path / "denoise.safetensors")]
    capsys.readouterr()
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress", *flags]) == 2
    captured = capsys.readouterr()
    assert re.search(re.escape(match), captured.err) and "Traceback" not in captured.err
    assert "blended" not in captured.out and not (tmp_path / "out").exists()
