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


# Few-shot training on synthetic volumes with the tiny random SAM (tests/fewshot): a bright ellipse (class 1) and a
# mid-grey bar (class 2, absent from every third slice) on a dark, noisy background, both moving along axis 2.


def synthetic_training_configs():
    """``(DecoderConfig, TrainConfig)`` the synthetic few-shot tests start from: two slice tokens; 150 steps of
    two slices at 1e-3 after 5 warm-up steps."""
    from fewsam_jax.fewshot import DecoderConfig, TrainConfig

    return (DecoderConfig(slice_tokens=2),
            TrainConfig(steps=150, batch_slices=2, learning_rate=1e-3, warmup_steps=5))


def synthetic_volume(seed: int, shape=(48, 40, 12)):
    """``(image float32, labels uint8)`` of ``shape``, the shapes placed by ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x, y = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(0.1, 0.03, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    for z in range(shape[2]):
        cx, cy = 24 + 6 * np.sin(z / 2 + seed), 20 + 4 * np.cos(z / 3)
        ellipse = ((x - cx) / 11) ** 2 + ((y - cy) / 8) ** 2 < 1
        labels[..., z][ellipse] = 1
        if z % 3:
            bar = (np.abs(x - 8) < 5) & (np.abs(y - cy) < 12)
            labels[..., z][bar & ~ellipse] = 2
    image += 0.8 * (labels == 1) + 0.45 * (labels == 2)
    return image, labels


def write_case(folder: Path, name: str, seed: int, affine=None, shape=(48, 40, 12)) -> tuple[Path, Path]:
    """:func:`synthetic_volume` written as ``NAME.nii.gz`` and ``NAME_seg.nii.gz`` (``affine`` default: 1.5 x 1 x 2
    mm voxels); returns both paths."""
    import nibabel as nib
    import numpy as np

    affine = np.diag([1.5, 1.0, 2.0, 1.0]) if affine is None else affine
    image, labels = synthetic_volume(seed, shape)
    nib.save(nib.Nifti1Image(image, affine), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / f"{name}_seg.nii.gz")
    return folder / f"{name}.nii.gz", folder / f"{name}_seg.nii.gz"


def synthetic_case(sam, folder: Path, support: dict[str, dict], test: dict, config=None, training=None,
                   repeats: int = 1) -> dict:
    """A collection of its own in (empty) ``folder``: support volumes ``support`` (file stem -> write_case's
    keywords plus the labelled ``slices``), the test volume ``b`` (``test``: write_case's keywords), the
    manifest of both classes on axis 2, and ``repeats`` decoders trained on it with ``sam``, ``config`` and
    ``training`` (default: :func:`synthetic_training_configs`), the cache in the folder. Returns folder, cache,
    test_image, test_labels, sam and ``segmenters`` (the trained decoders, in order)."""
    import json

    from fewsam_jax.fewshot import FewShotSegmenter

    default_config, default_training = synthetic_training_configs()
    config = default_config if config is None else config
    training = default_training if training is None else training
    items = []
    for stem, options in support.items():
        options = dict(options)
        slices = options.pop("slices")
        write_case(folder, stem, **options)
        items.append({"image": f"{stem}.nii.gz", "labels": f"{stem}_seg.nii.gz", "slices": slices})
    test_image, test_labels = write_case(folder, "b", **test)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"classes": {"1": "ellipse", "2": "bar"}, "axis": 2, "support": items}))
    segmenters = [FewShotSegmenter.train(manifest, sam=sam, config=config, training=training, cache=folder / "cache",
                                         progress=False) for _ in range(repeats)]
    return dict(folder=folder, cache=folder / "cache", test_image=test_image, test_labels=test_labels,
                segmenters=segmenters, sam=sam)


def save_legacy(segmenter, folder: Path, drop=(), **changes) -> None:
    """``segmenter`` (a FewShotSegmenter) saved as decoders were before the configs were split: one flat
    ``fewshot`` object (``FewShotConfig``, without the keys in ``drop``, which did not exist yet, and with
    ``changes``), the support copies' options (with their own seed) in ``info``, and a state holding the
    similarity prior's vector (trained, but unused with the prior off) and the mean prototypes."""
    import json
    import shutil

    import jax.numpy as jnp
    from flax import nnx

    from fewsam_jax.outputs import tree_checksums
    from fewsam_jax.weights import save_pytree

    segmenter.save(folder)
    meta = json.loads((folder / "fewshot.json").read_text())
    training = meta.pop("training")
    augment = training.pop("augment")
    flat = {**meta.pop("decoder"), **training, **meta.pop("inference"), "similarity_prior": False,
            "trainable": "decoder", **changes}
    meta["fewshot"] = {k: v for k, v in flat.items() if k not in (*drop, "threshold_offset")}  # not yet then
    meta["info"]["augment"] = {**augment, "seed": training["seed"]}
    legacy = nnx.clone(segmenter.decoder)
    k, _, c = segmenter.tokens.shape
    legacy.similarity_embed = nnx.Param(jnp.full((c,), 0.5, jnp.float32))
    shutil.rmtree(folder / "state")
    save_pytree(folder / "state", {"decoder": nnx.state(legacy), "tokens": segmenter.tokens,
                                   "prototypes": jnp.ones((k, c), jnp.float32)})
    meta["checksums"] = tree_checksums(folder)
    (folder / "fewshot.json").write_text(json.dumps(meta))


def param_leaves(module) -> dict:
    """``{top-level attribute: [each nnx.Param leaf under it as a numpy array]}`` of an NNX module."""
    import jax
    import numpy as np
    from flax import nnx

    state = nnx.state(module, nnx.Param).to_pure_dict()
    return {key: [np.asarray(x) for x in jax.tree_util.tree_leaves(value)] for key, value in state.items()}
