"""Evaluation follows the protocol (Y, border = scale, 8-bit) and carries the bicubic baseline."""

from __future__ import annotations

import json

import pytest
import torch

from repsr import build_model, reparameterize_model
from repsr.data.datasets import EvalSet
from repsr.image.io import write_image
from repsr.image.metrics import psnr, ssim
from repsr.image.resize import imresize
from repsr.quality.evaluation import evaluate, format_table, open_datasets
from repsr.util.errors import ConfigError
from tests.helpers import randomize


def plain(scale: int = 2, in_channels: int = 3):
    model = build_model("repsr", scale=scale, num_blocks=1, channels=4, in_channels=in_channels)
    return reparameterize_model(randomize(model, seed=1).eval())


@pytest.fixture
def hr_folder(tmp_path):
    from repsr.data.samples import verification_image

    folder = tmp_path / "Tiny"
    crops = verification_image(3, (26, 30), batch=2)  # 26 is not a multiple of 4: modcrop matters
    for index, crop in enumerate(crops):
        write_image(folder / f"img{index}.png", crop)
    return folder


def test_scores_follow_the_protocol_and_the_bicubic_baseline(hr_folder):
    model = plain(scale=4)
    results = evaluate(model, {"Tiny": EvalSet(hr_folder, 4)}, device="cpu")
    assert results.crop_border == 4 and results.y_channel
    (dataset,) = results.datasets
    assert [image.name for image in dataset.images] == ["img0", "img1"]
    pair = EvalSet(hr_folder, 4)[1]
    with torch.inference_mode():
        prediction = model(pair.lr[None])[0].clamp(0, 1)
    bicubic = imresize(pair.lr, 4).clamp(0, 1)
    scores = dataset.images[1]
    assert scores.psnr == pytest.approx(psnr(prediction, pair.hr, 4, y_channel=True), abs=1e-6)
    assert scores.ssim == pytest.approx(ssim(prediction, pair.hr, 4, y_channel=True), abs=1e-6)
    assert scores.bicubic_psnr == pytest.approx(psnr(bicubic, pair.hr, 4, y_channel=True), abs=1e-9)
    assert scores.bicubic_psnr != pytest.approx(psnr(bicubic, pair.hr, 0, y_channel=True), abs=1e-3)
    assert dataset.mean("psnr") == pytest.approx((dataset.images[0].psnr + scores.psnr) / 2)


def test_y_model_on_rgb_data_and_json_with_per_image_values(hr_folder, tmp_path):
    results = evaluate(plain(scale=2, in_channels=1), {"Tiny": EvalSet(hr_folder, 2)}, device="cpu")
    path = tmp_path / "out" / "eval.json"
    results.write_json(path)
    data = json.loads(path.read_text())
    (dataset,) = data["datasets"]
    assert dataset["count"] == 2 and len(dataset["images"]) == 2
    assert set(dataset["images"][0]) == {"name", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}
    assert dataset["mean"]["bicubic_psnr"] > 15
    table = format_table(results)
    assert "bicubic" in table and "Tiny" in table and "repsr-M1C4-x2" in table


def test_dataset_arguments():
    datasets = open_datasets([], 3)
    assert list(datasets) == ["sample"] and len(datasets["sample"]) == 2
    assert datasets["sample"][0].hr.shape[-1] == datasets["sample"][0].lr.shape[-1] * 3
    with pytest.raises(ConfigError, match="NAME=DIR"):
        open_datasets(["Set5"], 2)
    with pytest.raises(ConfigError, match="twice"):
        open_datasets(["a=x", "a=y"], 2)
