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


def write_dicom_series(folder: Path, pixels, *, orientation=(1, 0, 0, 0, 1, 0), spacing=(0.7, 0.9), step=2.5,
                       origin=(-20.0, 30.0, 40.0), uids: dict | None = None, seed: int = 0) -> dict:
    """Writes ``pixels`` (n, rows, columns) as an int16 CT series under shuffled file names, with the
    patient/study/series tags a PACS expects. ``uids`` overrides StudyInstanceUID, SeriesInstanceUID,
    FrameOfReferenceUID ("" writes an empty value, as some anonymisers do; SOPInstanceUID "" empties it in the
    dataset but keeps it in the file meta). Returns the UIDs and the SOP Instance UIDs in slice order."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(pixels)
    uids = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
            "FrameOfReferenceUID": generate_uid(), **(uids or {})}
    normal = np.cross(orientation[:3], orientation[3:])
    names = np.random.default_rng(seed).permutation(len(pixels))
    instances = []
    for k, image in enumerate(pixels):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uids.get("SOPInstanceUID", meta.MediaStorageSOPInstanceUID)
        instances.append(meta.MediaStorageSOPInstanceUID)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Synthetic", "SYN001", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "20260101", "120000", "1", "", "")
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "CT", 3, k + 1, "synthetic"
        for tag in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            setattr(ds, tag, uids[tag])
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * step * normal]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(v) for v in spacing]
        ds.SliceThickness = float(step)
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0
        ds.PixelData = image.astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{names[k]:04d}", enforce_file_format=True)
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
