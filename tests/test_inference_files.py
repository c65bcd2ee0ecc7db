"""Upscaling files: huge images within bounded memory, every image kind tiled as untiled, the file
pipeline equal to the float one, refused inputs, the one tile rule, a training form run merged."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repsr import build_model
from repsr.arch.network import PlainSR
from repsr.cli import build_parser
from repsr.image.io import read_pixels, write_image
from repsr.inference import Upscaler, upscale_files
from repsr.util.errors import ConfigError, RepsrError
from tests.helpers import randomize, tiny_plain

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ huge images

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from repsr import build_model, reparameterize_model
    from repsr.inference import Upscaler, upscale_files

    work, budget, backend = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    model = reparameterize_model(build_model("repsr", scale=4, num_blocks=1, channels=4).eval())
    tile = 128 if backend == "eager" else "auto"  # the fused kernel: windows sized from free memory
    upscaler = Upscaler(model, device="cpu", tile=tile, backend=backend)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(work / "warm.png")
    upscale_files(upscaler, [work / "warm.png"], work / "warm", progress=False)  # load every library

    def vm_size() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    limit = vm_size() + budget
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    report = upscale_files(upscaler, [work / "in"], work / "out", progress=False)
    for path in report.written:
        print("written", path.name)
    for path, reason in report.failed:
        print("failed", path.name, "|", reason.replace(chr(10), " "))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "fused"])
def test_huge_image_fails_alone_and_memory_is_bounded_by_the_integer_output(tmp_path, backend):
    """400x400 at x4: the integer output is 7.7 MB; a float32 output (31 MB) plus its float64 rounding
    copies (61 MB each) do not fit in 100 MB above the warmed-up process. The 2000x2000 image's output
    (192 MB) cannot fit at all: one line for it, the others written. The fused kernel (tile auto) too:
    its allocator failure is that image's failure, not the batch's."""
    if backend == "fused":
        from repsr.kernels import availability

        if availability() is not None:
            pytest.skip(f"fused kernel: {availability()}")
    src = tmp_path / "in"
    src.mkdir()
    yy, xx = np.mgrid[0:400, 0:400]
    smooth = np.stack([(xx * 255) // 399, (yy * 255) // 399, ((xx + yy) * 255) // 798], -1).astype(np.uint8)
    Image.fromarray(smooth).save(src / "a_big.png")
    Image.fromarray(np.zeros((2000, 2000, 3), np.uint8)).save(src / "b_huge.png", compress_level=1)
    Image.fromarray(smooth[:30, :30]).save(src / "c_small.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path), str(100 * 2**20), backend],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "written a_big.png" in lines and "written c_small.png" in lines, done.stdout
    failed = [line for line in lines if line.startswith("failed")]
    assert len(failed) == 1 and "b_huge.png" in failed[0] and "memory" in failed[0], done.stdout
    big = read_pixels(tmp_path / "out" / "a_big.png")
    assert big.array.shape == (1600, 1600, 3) and big.bit_depth == 8


@pytest.mark.parametrize("kind", ["rgba", "gray_alpha", "rgb16", "gray16", "y_model"])
def test_tiled_files_equal_untiled_for_every_image_kind(tmp_path, kind):
    rng = np.random.default_rng(3)
    model = tiny_plain(scale=2, in_channels=1 if kind == "y_model" else 3)
    if kind in ("rgba", "y_model"):
        Image.fromarray(rng.integers(0, 256, (37, 70, 4), dtype=np.uint8), mode="RGBA").save(
            tmp_path / "x.png"
        )
    elif kind == "gray_alpha":
        Image.fromarray(rng.integers(0, 256, (37, 70, 2), dtype=np.uint8), mode="LA").save(tmp_path / "x.png")
    else:
        channels = 3 if kind == "rgb16" else 1
        write_image(
            tmp_path / "x.png",
            torch.rand(channels, 37, 70, generator=torch.Generator().manual_seed(1)),
            bit_depth=16,
            gray=channels == 1,
        )
    outputs = []
    for tile in (None, 16):
        upscaler = Upscaler(model, device="cpu", tile=tile)
        report = upscale_files(upscaler, [tmp_path / "x.png"], tmp_path / f"out{tile}", progress=False)
        assert not report.failed
        outputs.append(read_pixels(report.written[0]))
    source = read_pixels(tmp_path / "x.png")
    assert outputs[0].array.shape == (74, 140, source.array.shape[2])
    assert outputs[0].bit_depth == outputs[1].bit_depth == source.bit_depth
    if kind in ("rgba", "gray_alpha"):
        assert np.array_equal(outputs[0].array, outputs[1].array)
    else:  # float32 rounding of the network (convolutions of another window size) can move a value
        # across a level boundary: with 65535 levels, or through the Y -> RGB conversion, rarely
        difference = np.abs(outputs[0].array.astype(int) - outputs[1].array.astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_file_pipeline_equals_the_float_pipeline(tmp_path):
    """The integer, tile-by-tile file path writes what upscale_image + to_pixels computes."""
    from repsr.image.io import read_image, to_pixels
    from repsr.inference import upscale_image

    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (30, 41, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "x.png")
    upscaler = Upscaler(tiny_plain(scale=3), device="cpu", tile=16)
    report = upscale_files(upscaler, [tmp_path / "x.png"], tmp_path / "out", progress=False)
    result = upscale_image(upscaler, read_image(tmp_path / "x.png"))
    expected = to_pixels(result.rgb, result.alpha, 8, result.gray)
    # the two paths cut other windows (margins of 4 vs the receptive radius), so oneDNN may sum in another
    # order: float32 outputs agree to ACROSS_PATHS, and a value that close to a rounding boundary moves
    # 1 level
    difference = np.abs(read_pixels(report.written[0]).array.astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def test_sixteen_bit_png_streams_in_bands_and_reads_back(tmp_path, monkeypatch):
    import repsr.image.io as rio

    monkeypatch.setattr(rio, "_PNG16_ROWS", 7)
    arr = np.random.default_rng(0).integers(0, 65536, (30, 11, 3), dtype=np.uint16)
    rio.write_pixels(tmp_path / "d.png", arr)
    assert np.array_equal(read_pixels(tmp_path / "d.png").array, arr)


# ------------------------------------------------------------------------------- inference form


def test_upscaler_runs_the_merged_network_of_a_training_checkpoint(tmp_path):
    model = randomize(build_model("repsr", scale=2, num_blocks=2, channels=8), 1).eval()
    upscaler = Upscaler(model, device="cpu", tile=None, backend="eager")
    assert isinstance(upscaler.module, PlainSR)
    lr = torch.rand(1, 3, 12, 13, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (upscaler(lr) - model(lr)).abs().max() <= 1e-5
    default = Upscaler(model, device="cpu", tile=None)
    assert not any(type(m).__name__ == "RepNet" for m in default.module.modules())


def test_animated_gif_is_refused_with_one_line(tmp_path, plain_file):
    frames = [Image.fromarray(np.full((10, 10, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    write_image(tmp_path / "ok.png", torch.rand(3, 8, 8))
    upscaler = Upscaler(tiny_plain(), device="cpu", tile=None)
    report = upscale_files(
        upscaler, [tmp_path / "anim.gif", tmp_path / "ok.png"], tmp_path / "o", progress=False
    )
    assert [p.name for p in report.written] == ["ok.png"]
    ((path, reason),) = report.failed
    assert path.name == "anim.gif" and "animated" in reason and "2 frames" in reason


@pytest.mark.parametrize("value", ["0", "1", "2", "-5", "15"])
def test_tile_has_one_rule(value):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["upscale", "m", "x", "-o", "o", "--tile", value])
    with pytest.raises(ConfigError):
        Upscaler(tiny_plain(), device="cpu", tile=int(value))


def test_tile_accepts_auto_none_and_the_minimum():
    for value, expected in (("auto", "auto"), ("none", None), ("16", 16)):
        assert build_parser().parse_args(["upscale", "m", "x", "-o", "o", "--tile", value]).tile == expected


# ------------------------------------------------------------------------ two runs on one output folder
def test_a_file_another_run_writes_meanwhile_is_kept_not_replaced(tmp_path):
    """Issue 28: two `repsr upscale` into one -o both planned before either wrote; the later rename
    replaced the other run's result. Without --overwrite a result takes its name only if it is free."""
    for name in ("a", "b"):
        Image.fromarray(np.full((6, 5, 3), 40, np.uint8)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    upscaler = Upscaler(tiny_plain(), device="cpu", tile=None)

    def other_run(job) -> None:  # another process writes its own a.png between planning and writing
        if job.source.name == "a.png":
            job.target.parent.mkdir(parents=True, exist_ok=True)
            job.target.write_bytes(b"the other run's result")

    report = upscale_files(
        upscaler, [tmp_path / "a.png", tmp_path / "b.png"], out, progress=False, on_start=other_run
    )
    assert (out / "a.png").read_bytes() == b"the other run's result"
    assert report.written == [out / "b.png"] and Image.open(out / "b.png").size == (10, 12)
    ((source, reason),) = report.failed
    assert source.name == "a.png" and "another run" in reason and "\n" not in reason
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # no temporary file left
    report = upscale_files(
        upscaler, [tmp_path / "a.png"], out, progress=False, overwrite=True, on_start=other_run
    )
    assert report.written == [out / "a.png"] and Image.open(out / "a.png").size == (
        10,
        12,
    )  # asked to replace


def test_symlinks_among_inputs_and_outputs(tmp_path):
    """An output name linked to an input is refused; a link to a file elsewhere is replaced as a link
    (the file it points to is untouched) under --overwrite; a link loop in an input folder is no hang."""
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((6, 5, 3), 40, np.uint8)).save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "loop").symlink_to(".")
    (tmp_path / "in" / "dangling.png").symlink_to("nothing.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(tmp_path / "in" / "a.png")
    upscaler = Upscaler(tiny_plain(), device="cpu", tile=None)
    with pytest.raises(ConfigError, match="would overwrite an input"):
        upscale_files(upscaler, [tmp_path / "in"], out, progress=False, overwrite=True)
    (out / "a.png").unlink()
    (tmp_path / "keep.png").write_bytes(b"not this run's")
    (out / "a.png").symlink_to(tmp_path / "keep.png")
    report = upscale_files(upscaler, [tmp_path / "in"], out, progress=False, overwrite=True)
    assert report.written == [out / "a.png"] and not (out / "a.png").is_symlink()
    assert (tmp_path / "keep.png").read_bytes() == b"not this run's"
    with pytest.raises(ConfigError, match="is an existing file"):
        upscale_files(upscaler, [tmp_path / "in" / "a.png"], tmp_path / "in" / "a.png", progress=False)


def test_an_output_folder_that_is_a_symlink_loop_is_one_line(tmp_path):
    Image.fromarray(np.full((6, 5, 3), 40, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "loop").symlink_to("loop")
    upscaler = Upscaler(tiny_plain(), device="cpu", tile=None)
    for out in (tmp_path / "loop", tmp_path / "loop" / "sub"):
        with pytest.raises(RepsrError, match="symlink that leads nowhere"):
            upscale_files(upscaler, [tmp_path / "a.png"], out, progress=False)
