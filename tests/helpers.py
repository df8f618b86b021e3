"""Plain helpers the test modules import (`from helpers import ...`; pyproject puts tests/ on sys.path).

Fixtures stay in conftest.py, which pytest loads by itself; nothing imports conftest.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data set: {path} is absent")
    return path


def embed_cli(capsys) -> Callable[..., str]:
    """``run(*argv)``: parses ``fewsam embed|cache ...`` (any str()-able arguments), runs it and returns
    what it printed."""
    from fewsam_jax.cli_embed import register

    parser = argparse.ArgumentParser(prog="fewsam")
    register(parser.add_subparsers(dest="command", required=True))

    def run(*argv) -> str:
        args = parser.parse_args([str(a) for a in argv])
        args.run(args)
        return capsys.readouterr().out

    return run


def write_dicom_slice(path: Path, pixels, position, orientation, series_uid: str | None = None, slope: float = 1.0,
                      intercept: float = 0.0, spacing=(0.7, 0.9), **tags) -> str:
    """Writes one int16 CT slice (``pixels``: (rows, columns)) and returns its SOP Instance UID (the file
    meta's). ``series_uid=None`` leaves the UID out (an anonymised export); ``tags`` adds or overrides any
    other attribute (e.g. SeriesNumber, FrameOfReferenceUID, an empty SOPInstanceUID)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.Rows, ds.Columns = np.shape(pixels)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = np.asarray(pixels).astype(np.int16).tobytes()
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return meta.MediaStorageSOPInstanceUID


def write_dicom_series(folder: Path, pixels, *, orientation=(1, 0, 0, 0, 1, 0), spacing=(0.7, 0.9), step=2.5,
                       origin=(-20.0, 30.0, 40.0), uids: dict | None = None, seed: int = 0) -> dict:
    """Writes ``pixels`` (n, rows, columns) as an int16 CT series under shuffled file names, with the
    patient/study/series tags a PACS expects. ``uids`` overrides StudyInstanceUID, SeriesInstanceUID,
    FrameOfReferenceUID ("" writes an empty value, as some anonymisers do; SOPInstanceUID "" empties it in the
    dataset but keeps it in the file meta). Returns the UIDs and the SOP Instance UIDs in slice order."""
    import numpy as np
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(pixels)
    uids = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
            "FrameOfReferenceUID": generate_uid(), **(uids or {})}
    normal = np.cross(orientation[:3], orientation[3:])
    names = np.random.default_rng(seed).permutation(len(pixels))
    instances = []
    for k, image in enumerate(pixels):
        tags = {tag: uids[tag] for tag in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")}
        if "SOPInstanceUID" in uids:
            tags["SOPInstanceUID"] = uids["SOPInstanceUID"]
        instances.append(write_dicom_slice(
            folder / f"IM{names[k]:04d}", image, np.asarray(origin) + k * step * normal, orientation, spacing=spacing,
            PatientName="Test^Synthetic", PatientID="SYN001", PatientBirthDate="", PatientSex="O",
            StudyDate="20260101", StudyTime="120000", StudyID="1", AccessionNumber="", ReferringPhysicianName="",
            SeriesNumber=3, InstanceNumber=k + 1, Manufacturer="synthetic", PositionReferenceIndicator="",
            SliceThickness=float(step), **tags))
    return {**uids, "instances": instances}


def untrained_segmenter(sam, classes):
    """A FewShotSegmenter with random prompt tokens on ``sam``: enough to segment (file plumbing is under
    test, not the training)."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from fewsam_jax.fewshot import DecoderConfig, FewShotSegmenter
    from fewsam_jax.fewshot.decoder import FewShotDecoder
    from fewsam_jax.preprocess import Intensity
    from fewsam_jax.weights import tensors_id

    rng = np.random.default_rng(0)
    c, k = sam.config.prompt_embed_dim, len(classes)
    decoder = FewShotDecoder(sam, DecoderConfig(), rngs=nnx.Rngs(0))
    return FewShotSegmenter(decoder, jnp.asarray(rng.normal(size=(k, 5, c)), jnp.float32), np.zeros(k, np.float32),
                            dict(classes), sam.config.name, sam.weights_id, Intensity.parse("percentile"), 2, {}, sam,
                            tensors_id(sam))


TINY_STAGED = "tiny_staged"  # the preset name of tiny_staged_config


def tiny_staged_config():
    """A small SAM whose image encoder is a TinyViT (staged, as LiteMedSAM's): 32 px input, 8 x 8 embeddings of 16
    channels, last-stage inputs of 32. get_config knows it by name (:data:`TINY_STAGED`) only where a test adds it
    (``monkeypatch.setitem(fewsam_jax.config.PRESETS, TINY_STAGED, tiny_staged_config)``), e.g. to load a decoder."""
    from fewsam_jax.config import SamConfig, TinyViTConfig

    encoder = TinyViTConfig(img_size=32, embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2),
                            out_chans=16)
    return SamConfig(name=TINY_STAGED, encoder=encoder, prompt_embed_dim=16, mask_in_chans=4, decoder_mlp_dim=32,
                     decoder_num_heads=2, iou_head_hidden_dim=16, preprocessing="minmax")


def tiny_staged_sam():
    """The :func:`tiny_staged_config` SAM with random weights (seed 0)."""
    from flax import nnx

    from fewsam_jax.modeling.sam import Sam

    return Sam(tiny_staged_config(), rngs=nnx.Rngs(0), weights_id=f"{TINY_STAGED}-seed0")
