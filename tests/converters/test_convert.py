"""Checkpoint conversion: official layout -> Orbax -> model, the report, and clear errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch

from converters.convert import CheckpointError, convert_checkpoint, read_state_dict
from converters.torch_to_flax import ConversionError
from fewsam_jax import cli
from fewsam_jax.config import get_config
from fewsam_jax.modeling.sam import encode_images
from fewsam_jax.weights import load_model, load_model_dir

from torch_reference import torch_sam  # noqa: E402  (tests/ is on sys.path: pyproject pythonpath)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An official-layout checkpoint of the `tiny` config (random weights), as torch.save writes it."""
    torch.manual_seed(0)
    model = torch_sam(get_config("tiny"))
    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_round_trip_state_dict_to_orbax_to_model(tiny_checkpoint, tmp_path):
    path, torch_model = tiny_checkpoint
    report = convert_checkpoint("tiny", path, tmp_path / "tiny")
    assert report["missing"] == [] and report["unexpected"] == []
    assert len(report["loaded"]) + len(report["skipped"]) == report["num_tensors"] == len(torch_model.state_dict())
    saved = json.loads((tmp_path / "tiny" / "report.json").read_text())
    assert saved["sha256"] == report["sha256"] and len(saved["sha256"]) == 64
    model = load_model_dir(tmp_path / "tiny")
    assert model.weights_id == report["tensors_id"] != report["sha256"]
    image = np.random.default_rng(0).normal(size=(1, 128, 128, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model.image_encoder(torch.from_numpy(image.transpose(0, 3, 1, 2))).numpy()
    with jax.default_matmul_precision("highest"):
        got = np.asarray(encode_images(model.image_encoder, image)).transpose(0, 3, 1, 2)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_same_weights_from_another_file_have_the_same_id(tiny_checkpoint, tmp_path):
    """The weights id comes from the converted tensors: the same weights saved in another container
    (wrapped under "model", as training scripts save them) convert to the same id, and a decoder's base
    model is found by it."""
    from fewsam_jax.weights import find_model

    path, torch_model = tiny_checkpoint
    other = tmp_path / "other.pth"
    torch.save({"model": torch_model.state_dict(), "epoch": torch.tensor(3)}, other)
    first = convert_checkpoint("tiny", path, tmp_path / "models" / "a")
    second = convert_checkpoint("tiny", other, tmp_path / "models" / "b")
    assert first["sha256"] != second["sha256"] and first["tensors_id"] == second["tensors_id"]
    assert find_model("tiny", {first["tensors_id"]}, [tmp_path / "models"]) == tmp_path / "models" / "a"
    assert find_model("tiny", {second["sha256"]}, [tmp_path / "models"]) == tmp_path / "models" / "b"


def test_truncated_checkpoint(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    broken = tmp_path / "broken.pth"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"broken\.pth is not a readable PyTorch checkpoint"):
        read_state_dict(broken)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.pth is not a readable PyTorch checkpoint"):
        read_state_dict(path)


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        read_state_dict(path)


def test_wrong_shape_is_named(tiny_checkpoint, tmp_path):
    path, model = tiny_checkpoint
    state = model.state_dict()
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ConversionError, match=r"'mask_decoder\.iou_token\.weight'.*\(1, 7\)"):
        convert_checkpoint("tiny", bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_non_finite_weights_refused_at_conversion(tiny_checkpoint, tmp_path, capsys):
    """A NaN/Inf tensor used to convert with rc 0; `embed` blamed "float16 overflow" much later."""
    path, model = tiny_checkpoint
    state = model.state_dict()
    state["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"].clone()
    state["mask_decoder.iou_token.weight"][0, :2] = float("nan")
    state["image_encoder.neck.0.weight"] = state["image_encoder.neck.0.weight"].clone()
    state["image_encoder.neck.0.weight"].view(-1)[5] = float("-inf")
    bad = tmp_path / "nan.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"nan\.pth: 2 of \d+ tensors hold non-finite values: "
                                              r"'image_encoder\.neck\.0\.weight' \(1 -Inf of \d+ values\); "
                                              r"'mask_decoder\.iou_token\.weight' \(2 NaN of \d+ values\)"):
        convert_checkpoint("tiny", bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert cli.main(["convert", "--model", "vit_b", "--checkpoint", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "'mask_decoder.iou_token.weight' (2 NaN" in capsys.readouterr().err


def test_checkpoint_of_another_model(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    with pytest.raises(ConversionError, match=r"sam_tiny\.pth does not fit model 'vit_b'"):
        convert_checkpoint("vit_b", path, tmp_path / "out")


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"unknown model 'vit_x'; expected one of"):
        load_model("vit_x")


def test_official_model_needs_its_checkpoint():
    with pytest.raises(ValueError, match="needs its official checkpoint file"):
        load_model("vit_b")


def test_cli_convert_reports_errors(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    assert cli.main(["convert", "--model", "vit_b", "--checkpoint", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert "missing.pth" in capsys.readouterr().err


@pytest.mark.slow
def test_litemedsam_converts_from_the_installed_package(litemedsam):
    assert litemedsam.config.name == "litemedsam" and len(litemedsam.weights_id) == 64
