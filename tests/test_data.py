"""Datasets: sample images, training patches (alignment, determinism, cache, bad data), evaluation sets."""

from __future__ import annotations

import itertools
import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import repsr.data.datasets as data_mod
import repsr.image.io as rio
from repsr.data.datasets import EvalSet, TrainPatches, default_cache_dir, make_lr, modcrop
from repsr.data.samples import sample_images, standard_sets
from repsr.image.color import rgb_to_y
from repsr.image.io import read_image, write_image
from repsr.image.metrics import psnr
from repsr.image.pixels import quantize
from repsr.image.resize import imresize
from repsr.util.errors import DataError, ImageError

SKIMAGE_DATA = Path(__import__("skimage.data").data.__file__).parent


def _crop_of(name: str, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return read_image(SKIMAGE_DATA / name).rgb[:, top : top + h, left : left + w]


@pytest.fixture
def hr_folder(tmp_path) -> Path:
    """Three small real-content HR images, one with sizes not divisible by the scale, one in a subfolder."""
    folder = tmp_path / "hr"
    write_image(folder / "a.png", _crop_of("astronaut.png", 60, 150, 64, 72))
    write_image(folder / "b.png", _crop_of("coffee.png", 100, 200, 51, 67))
    write_image(folder / "sub" / "c.png", _crop_of("chelsea.png", 80, 120, 60, 60))
    return folder


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for t in (x, x.transpose(-1, -2)):
        out += [t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2)]
    return out


def test_sample_images_split():
    split = sample_images()
    assert set(split) == {"train", "val"}
    assert 2 <= len(split["val"]) <= 3 and len(split["train"]) >= 5
    assert not set(split["train"]) & set(split["val"])
    for path in split["train"] + split["val"]:
        assert path.is_file()
    for path in split["val"]:
        assert read_image(path).mode == "rgb"


def test_modcrop_and_make_lr():
    t = torch.zeros(2, 3, 13, 10)
    assert modcrop(t, 4).shape == (2, 3, 12, 8)
    a = np.zeros((13, 10, 3), np.uint8)
    assert modcrop(a, 3).shape == (12, 9, 3)
    hr = (read_image(SKIMAGE_DATA / "chelsea.png").rgb[:, :50, :61] * 255).round().to(torch.uint8)
    lr = make_lr(hr.permute(1, 2, 0).numpy(), 2)
    assert lr.dtype == np.uint8 and lr.shape == (25, 30, 3)
    want = quantize(imresize(hr[:, :50, :60].double() / 255, 0.5)) * 255
    np.testing.assert_array_equal(lr, want.round().permute(1, 2, 0).numpy().astype(np.uint8))


def test_default_cache_dir_respects_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "repsr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "repsr"


def test_patches_shapes_alignment_and_determinism(hr_folder, tmp_path):
    ds = TrainPatches(hr_folder, 2, 12, cache_dir=tmp_path / "cache", augment=False)
    assert len(ds) == 3
    lr, hr = ds[4]
    assert lr.shape == (3, 12, 12) and hr.shape == (3, 24, 24)
    assert lr.dtype == torch.float32 and 0 <= float(lr.min()) and float(hr.max()) <= 1
    # Same key, same patch, also from a fresh instance; other keys differ.
    torch.testing.assert_close(ds[4][0], lr, atol=0, rtol=0)
    again = TrainPatches(hr_folder, 2, 12, cache_dir=tmp_path / "cache", augment=False)
    torch.testing.assert_close(again[4][1], hr, atol=0, rtol=0)
    assert not torch.equal(ds[5][0], lr)
    # Aligned: the LR patch is the bicubic shrink of the HR patch, away from the patch border.
    aligned = misaligned = 0.0
    for key in range(12):
        lr, hr = ds[key]
        shrunk = imresize(hr.double(), 0.5)
        error = float((shrunk - lr.double())[:, 3:-3, 3:-3].abs().mean())
        assert error < 1.5 / 255
        shifted = imresize(hr[:, :, 2:].double(), 0.5)  # LR columns 1..11
        assert (shifted - lr[:, :, 1:].double())[:, 3:-3, 3:-3].abs().mean() < 1.5 / 255
        aligned += error
        misaligned += float((shifted - lr[:, :, :-1].double())[:, 3:-3, 3:-3].abs().mean())  # one pixel off
    assert misaligned > 4 * aligned


def test_augmentation_is_a_dihedral_transform_of_the_same_crop(hr_folder, tmp_path):
    plain = TrainPatches(hr_folder, 2, 10, cache_dir=tmp_path / "cache", augment=False)
    aug = TrainPatches(hr_folder, 2, 10, cache_dir=tmp_path / "cache", augment=True)
    seen = set()
    for key in range(40):
        (lr0, hr0), (lr1, hr1) = plain[key], aug[key]
        matches = [i for i, t in enumerate(_dihedral(lr0)) if torch.equal(t, lr1)]
        hr_matches = [i for i, t in enumerate(_dihedral(hr0)) if torch.equal(t, hr1)]
        assert matches and set(matches) & set(hr_matches)  # LR and HR got the same transform
        seen.add(min(set(matches) & set(hr_matches)))
    assert len(seen) >= 6


def test_channel_shuffle_permutes_lr_and_hr_alike_and_keeps_the_crop(hr_folder, tmp_path):
    plain = TrainPatches(hr_folder, 2, 10, cache_dir=tmp_path / "cache")
    shuffled = TrainPatches(hr_folder, 2, 10, cache_dir=tmp_path / "cache", channel_shuffle=True)
    orders = set()
    for key in range(40):
        (lr0, hr0), (lr1, hr1) = plain[key], shuffled[key]
        found = [p for p in itertools.permutations(range(3)) if torch.equal(lr0[list(p)], lr1)]
        assert found and any(torch.equal(hr0[list(p)], hr1) for p in found)  # same crop, same order
        orders.add(found[0])
    assert len(orders) >= 5  # all six orders occur, not one fixed swap


def test_y_channel_patches(hr_folder, tmp_path):
    rgb = TrainPatches(hr_folder, 3, 8, cache_dir=tmp_path / "cache")
    y = TrainPatches(hr_folder, 3, 8, cache_dir=tmp_path / "cache", y_channel=True)
    lr, hr = y[7]
    assert lr.shape == (1, 8, 8) and hr.shape == (1, 24, 24)
    torch.testing.assert_close(hr, rgb_to_y(rgb[7][1]))


def test_cache_second_run_decodes_nothing_and_source_change_rebuilds(hr_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = TrainPatches(hr_folder, 2, 12, cache_dir=cache)
    patches = [first[k] for k in range(6)]
    stored = sorted(p.suffix for p in cache.rglob("*.npy"))
    assert len(stored) == 6  # 3 HR + 3 LR, memory-mapped .npy
    assert np.load(next(cache.rglob("*x2.npy")), mmap_mode="r").dtype == np.uint8

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although it is cached")

    def no_resize(*args, **kwargs):
        raise AssertionError("resized although the LR is cached")

    with monkeypatch.context() as m:
        m.setattr(rio, "read_pixels", no_decoding)
        m.setattr(data_mod, "bicubic_lr", no_resize)
        second = TrainPatches(hr_folder, 2, 12, cache_dir=cache)
        for k in range(6):
            torch.testing.assert_close(second[k], patches[k], atol=0, rtol=0)

    # A changed source is decoded again and its patches follow the new content.
    decoded = []
    real_read = rio.read_pixels

    def counting(path):
        decoded.append(Path(path).name)
        return real_read(path)

    monkeypatch.setattr(rio, "read_pixels", counting)
    write_image(hr_folder / "a.png", torch.full((3, 64, 72), 0.25))
    third = TrainPatches(hr_folder, 2, 12, cache_dir=cache)
    assert decoded == ["a.png"]
    lr, hr = third[0]  # key 0 -> image 0 = a.png
    assert torch.allclose(hr, torch.full_like(hr, 64 / 255))
    assert torch.allclose(lr, torch.full_like(lr, 64 / 255))
    # A new scale reuses the decoded HR and only makes the new LR.
    decoded.clear()
    TrainPatches(hr_folder, 4, 8, cache_dir=cache)
    assert decoded == []


def _data_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "repsr.data.datasets" and r.levelno == logging.WARNING
    ]


def test_bad_data_skipped_with_one_warning(hr_folder, tmp_path, monkeypatch, caplog):
    good = (hr_folder / "a.png").read_bytes()
    (hr_folder / "broken.png").write_text("this is not a png")
    (hr_folder / "cut.png").write_bytes(good[: len(good) // 3])
    (hr_folder / "empty.jpg").write_bytes(b"")
    write_image(hr_folder / "tiny.png", torch.rand(3, 20, 20))
    caplog.set_level(logging.WARNING, logger="repsr.data.datasets")
    ds = TrainPatches(hr_folder, 2, 12, cache_dir=tmp_path / "cache")
    record = _data_warnings(caplog)
    assert len(record) == 1
    message = record[0]
    assert "skipped 4 of 7 training images" in message
    for name in ("broken.png", "cut.png", "empty.jpg", "tiny.png"):
        assert name in message
    assert "smaller than the patch" in message and "\n" not in message
    assert len(ds) == 3
    # The verdicts are cached too: no decoding on the second run, same warning.
    monkeypatch.setattr(rio, "read_pixels", lambda p: (_ for _ in ()).throw(AssertionError(p)))
    caplog.clear()
    assert len(TrainPatches(hr_folder, 2, 12, cache_dir=tmp_path / "cache")) == 3
    assert len(_data_warnings(caplog)) == 1 and "skipped 4 of 7" in _data_warnings(caplog)[0]


def test_nothing_usable_or_empty_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found"):
        TrainPatches(empty, 2, 8, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="no such file or folder"):
        TrainPatches(tmp_path / "missing", 2, 8, cache_dir=tmp_path / "cache")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("nope")
    write_image(bad / "small.png", torch.rand(3, 10, 10))
    with pytest.raises(DataError, match="no usable training images"):
        TrainPatches(bad, 2, 8, cache_dir=tmp_path / "cache")


def test_paired_layout_matches_generated(hr_folder, tmp_path, caplog):
    lr_folder = tmp_path / "lr" / "X2"
    for path in rio.list_images(hr_folder):
        pixels = rio.read_pixels(path).array
        small = torch.from_numpy(make_lr(pixels, 2)).permute(2, 0, 1).float() / 255
        write_image(lr_folder / f"{path.stem}x2.png", small)
    generated = TrainPatches(hr_folder, 2, 12, cache_dir=tmp_path / "c1")
    paired = TrainPatches(hr_folder, 2, 12, lr=lr_folder, cache_dir=tmp_path / "c2")
    for key in range(6):
        torch.testing.assert_close(paired[key], generated[key], atol=0, rtol=0)
    (lr_folder / "bx2.png").unlink()
    write_image(lr_folder / "cx2.png", torch.rand(3, 20, 20))  # wrong size for a 60x60 HR at x2
    caplog.set_level(logging.WARNING, logger="repsr.data.datasets")
    assert len(TrainPatches(hr_folder, 2, 12, lr=lr_folder, cache_dir=tmp_path / "c2")) == 1
    record = _data_warnings(caplog)
    assert len(record) == 1 and "skipped 2 of 3" in record[0]
    assert "no LR image" in record[0] and "expected 30x30" in record[0]


def test_sequence_input_pickles_small_and_loader_runs(hr_folder, tmp_path):
    files = rio.list_images(hr_folder)
    ds = TrainPatches(files[:2], 2, 12, cache_dir=tmp_path / "cache")
    assert len(ds) == 2
    ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000  # memory maps are not pickled
    clone = pickle.loads(blob)
    torch.testing.assert_close(clone[3], ds[3], atol=0, rtol=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=list(range(100, 108)))
    lr, hr = next(iter(loader))
    assert lr.shape == (4, 3, 12, 12) and hr.shape == (4, 3, 24, 24)
    with pytest.raises(IndexError):
        ds[-1]


def test_eval_set_generated_and_paired(tmp_path):
    plain = tmp_path / "Set2"
    hr_a = _crop_of("astronaut.png", 0, 100, 99, 130)
    write_image(plain / "a.png", hr_a)
    write_image(plain / "b.png", _crop_of("coffee.png", 50, 50, 64, 64))
    ev = EvalSet(plain, 4)
    assert len(ev) == 2 and ev.name == "Set2" and ev.layout == "generated"
    pair = ev[0]
    assert pair.name == "a" and pair.hr.shape == (3, 96, 128) and pair.lr.shape == (3, 24, 32)
    torch.testing.assert_close(pair.hr, quantize(hr_a)[:, :96, :128])
    expected_lr = quantize(imresize(pair.hr.double(), 0.25)).float()
    torch.testing.assert_close(pair.lr, expected_lr, atol=1e-7, rtol=0)
    assert torch.allclose(pair.lr * 255, (pair.lr * 255).round(), atol=1e-4)  # 8-bit levels

    # EDSR layout: HR/ + LR_bicubic/X4/ with x4 names; HR cropped to LR * scale.
    paired = tmp_path / "Set2p"
    for p in ev:
        write_image(paired / "HR" / f"{p.name}.png", p.hr)
        write_image(paired / "LR_bicubic" / "X4" / f"{p.name}x4.png", p.lr)
    evp = EvalSet(paired, 4, name="custom")
    assert evp.layout == "paired" and evp.name == "custom"
    for got, want in zip(evp, ev, strict=True):
        assert got.name == want.name
        torch.testing.assert_close(got.lr, want.lr)
        torch.testing.assert_close(got.hr, want.hr)
    assert EvalSet(paired, 2).layout == "generated"  # no LR_bicubic/X2: LR is made

    y = EvalSet(plain, 4, y_channel=True)[1]
    assert y.lr.shape == (1, 16, 16) and y.hr.shape == (1, 64, 64)

    (paired / "LR_bicubic" / "X4" / "bx4.png").unlink()
    with pytest.raises(DataError, match="no LR image for 1"):
        EvalSet(paired, 4)
    (tmp_path / "void").mkdir()
    with pytest.raises(DataError, match="no images found"):
        EvalSet(tmp_path / "void", 2)
    with pytest.raises(DataError):
        EvalSet(tmp_path / "nowhere", 2)
    (plain / "c.png").write_text("broken")
    with pytest.raises(ImageError, match="c.png"):
        list(EvalSet(plain, 4))


def test_bicubic_baseline_on_sample_validation():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in sample_images()["val"]:
            for scale, lo, hi in ((2, 28.0, 40.0), (4, 22.0, 33.0)):
                pair = EvalSet(path, scale)[0]
                sr = imresize(pair.lr, scale)
                assert sr.shape == pair.hr.shape
                assert lo < psnr(sr, pair.hr, scale) < hi


def test_standard_sets(tmp_path):
    for name in ("Set5", "BSD100", "Manga109", "other"):
        (tmp_path / name).mkdir()
    found = standard_sets(tmp_path)
    assert found == {
        "Set5": tmp_path / "Set5",
        "B100": tmp_path / "BSD100",
        "Manga109": tmp_path / "Manga109",
    }


def test_skipped_training_image_names_the_file_being_read(tmp_path, caplog):
    from repsr.data.datasets import TrainPatches

    for folder in ("d_textonly", "d_mixed"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "empty.png").write_bytes(b"")
    write_image(tmp_path / "d_mixed" / "good.png", torch.rand(3, 40, 40))
    cache = tmp_path / "cache"
    with pytest.raises(Exception, match="d_textonly"):
        TrainPatches(tmp_path / "d_textonly", 2, 8, cache_dir=cache)
    caplog.set_level(logging.WARNING)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")  # a logged line, not a UserWarning
        TrainPatches(tmp_path / "d_mixed", 2, 8, cache_dir=cache)
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "d_mixed" in message and "empty.png" in message and "d_textonly" not in message
