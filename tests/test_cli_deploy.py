"""The deploy-side commands end to end: deploy, upscale, eval, export, bench."""

from __future__ import annotations

import json

import pytest
import torch

from repsr import build_model, load_model
from repsr.arch.network import PlainSR
from repsr.cli import main
from repsr.image.io import read_image, write_image
from tests.helpers import randomize


@pytest.fixture
def checkpoint(tmp_path):
    model = randomize(build_model("repsr", scale=2, num_blocks=1, channels=4, bn_mode="frozen")).eval()
    path = tmp_path / "ckpt.pt"
    torch.save({"spec": model.spec.to_dict(), "model": model.state_dict()}, path)
    return path


@pytest.fixture
def plain_file(tmp_path, checkpoint):
    assert main(["deploy", str(checkpoint), "-o", str(tmp_path / "plain.safetensors")]) == 0
    return tmp_path / "plain.safetensors"


def test_deploy_reports_the_difference_and_writes(tmp_path, checkpoint, capsys):
    assert main(["deploy", str(checkpoint), "-o", str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "max abs difference" in out and "wrote" in out
    assert isinstance(load_model(tmp_path / "m.safetensors"), PlainSR)


def test_deploy_of_a_bad_file_is_one_line_without_traceback(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["deploy", str(tmp_path / "junk.pt"), "-o", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repsr: error:") and "junk.pt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.safetensors").exists()


def test_upscale_writes_the_good_and_lists_the_bad(tmp_path, plain_file, capsys):
    inputs = tmp_path / "in"
    write_image(inputs / "good.png", torch.rand(3, 12, 10))
    (inputs / "bad.png").write_bytes(b"")
    code = main(["upscale", str(inputs), "-m", str(plain_file), "-o", str(tmp_path / "out"), "--tile", "16"])
    captured = capsys.readouterr()
    assert code == 1
    assert read_image(tmp_path / "out" / "good.png").rgb.shape == (3, 24, 20)
    assert "bad.png" in captured.err and "1 input(s) failed" in captured.err
    assert not (tmp_path / "out" / "bad.png").exists()


def test_upscale_all_good_exits_zero_with_format(tmp_path, plain_file):
    write_image(tmp_path / "a.png", torch.rand(3, 8, 8))
    args = [
        "upscale",
        str(tmp_path / "a.png"),
        "--model",
        str(plain_file),
        "-o",
        str(tmp_path / "o"),
        "--format",
        "jpg",
    ]
    assert main([*args, "--device", "cpu", "--tile", "none"]) == 0
    assert (tmp_path / "o" / "a.jpg").is_file()


def test_eval_prints_the_table_and_writes_json(tmp_path, plain_file, capsys):
    folder = tmp_path / "Tiny"
    for index in range(2):
        write_image(
            folder / f"{index}.png", torch.rand(3, 20, 22, generator=torch.Generator().manual_seed(index))
        )
    json_path = tmp_path / "eval.json"
    assert (
        main(["eval", str(plain_file), "--data", f"Tiny={folder}", "--json", str(json_path), "--no-progress"])
        == 0
    )
    out = capsys.readouterr().out
    assert "bicubic" in out and "Tiny" in out
    data = json.loads(json_path.read_text())
    assert [image["name"] for image in data["datasets"][0]["images"]] == ["0", "1"]


def test_eval_without_data_uses_the_sample_set(plain_file, capsys):
    assert main(["eval", str(plain_file), "--no-progress", "--device", "cpu"]) == 0
    assert "sample" in capsys.readouterr().out


def test_export_dynamic_onnx(tmp_path, plain_file, capsys):
    assert main(["export", str(plain_file), "--onnx", str(tmp_path / "m.onnx"), "--dynamic"]) == 0
    out = capsys.readouterr().out
    assert "max abs difference" in out and (tmp_path / "m.onnx").is_file()
    assert main(["export", str(plain_file), "--onnx", str(tmp_path / "m.onnx"), "--opset", "13"]) == 2


def test_bench_a_model_file_and_a_config(tmp_path, plain_file, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  scale: 2\n  num_blocks: 1\n  channels: 4\n")
    args = ["bench", str(plain_file), str(config), "--size", "16x12", "--backend", "eager"]
    assert main([*args, "--backend", "channels-last", "--budget", "0.01", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if " plain " in line]
    fp32_rows = [row for row in rows if row[3].rstrip("*") == "channels-last" and row[4][0].isdigit()]
    assert len(fp32_rows) == 2  # one per model (and a bf16 row each where this CPU has bf16 units)
    assert sum(" train " in line for line in out.splitlines()) == 1  # only the config is a training form
