"""``fewsam demo``: the whole job on the embedded default, offline.

The MNI152 template (2 mm) and its grey/white-matter probability maps ship inside nilearn's wheel.
Reference labels: white matter and grey matter where their map is >= 0.5 and the larger of the two,
the rest of the brain mask as "other brain" (CSF, deep nuclei). A few axial slices play the user's
labels; the decoder segments every slice and is scored on the slices nobody labelled.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from fewsam_jax import metrics
from fewsam_jax.fewshot import AugmentConfig, FewShotSegmenter, TrainConfig, load_collection
from fewsam_jax.fewshot.collection import Collection, SupportItem, save_collection
from fewsam_jax.io import get_slices, load_volume, save_labels
from fewsam_jax.label_maps import read_labels
from fewsam_jax.outputs import check_output_dir, check_output_file, read_marker, write_file, write_marker, write_text
from fewsam_jax.provenance import label_mark, written_by_library

log = logging.getLogger(__name__)

CLASSES = {1: "white_matter", 2: "grey_matter", 3: "other_brain"}
LABELLED_SLICES = 4


def mni_with_labels(folder: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write the template and its reference label map as NIfTI files into ``folder`` (``mni152.nii.gz``,
    ``mni152_labels.nii.gz``, each written atomically: a run stopped midway leaves the earlier file whole).

    Both carry the library's mark (:func:`fewsam_jax.provenance.label_mark`). A file already there that holds
    the same image (grid, dtype and voxels: an earlier call's, marked or not) is kept as it is; an unchanged
    file of an earlier version (marked) is replaced; any other file of those names only with ``overwrite=True``,
    else OutputExistsError before anything is written (``mni152.nii.gz`` is a common name for a neuroimaging
    user's own copy)."""
    template, labels, affine = _mni()
    folder.mkdir(parents=True, exist_ok=True)
    image_path, label_path = folder / "mni152.nii.gz", folder / "mni152_labels.nii.gz"
    files = ((image_path, nib.Nifti1Image(template, affine)), (label_path, nib.Nifti1Image(labels, affine)))
    for _, image in files:
        image.header["descrip"] = label_mark(np.asarray(image.dataobj))
    kept = {path for path, image in files if _holds(path, image)}
    for path, _ in files:  # both checked before either is written
        if path not in kept and not written_by_library(path):
            check_output_file(path, overwrite=overwrite)
    for path, image in files:
        if path not in kept:
            with write_file(path, overwrite=True) as tmp:
                nib.save(image, tmp)
    return image_path, label_path


@functools.lru_cache(maxsize=1)
def _mni() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 2 mm template (float32), its reference labels (uint8; module docstring) and their affine, read from
    nilearn's wheel once per process."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    brain = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0
    grey = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    white = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    labels = np.zeros(template.shape, np.uint8)
    labels[brain] = 3
    labels[brain & (grey >= 0.5) & (grey >= white)] = 2
    labels[brain & (white >= 0.5) & (white > grey)] = 1
    image = template.get_fdata().astype(np.float32)
    image.flags.writeable = labels.flags.writeable = False  # shared by every call
    return image, labels, template.affine


def _holds(path: Path, image: nib.Nifti1Image) -> bool:
    """Whether the NIfTI file ``path`` (a regular file) stores ``image``: same shape, affine, dtype and voxels."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        stored = nib.load(path)
        return (stored.shape == image.shape and stored.get_data_dtype() == image.get_data_dtype()
                and np.allclose(stored.affine, image.affine)
                and np.array_equal(np.asarray(stored.dataobj), np.asarray(image.dataobj)))
    except Exception:  # unreadable or not a NIfTI: not the demo's file
        return False


def pick_slices(labels: np.ndarray, count: int, *, axis: int = 2) -> list[int]:
    """``count`` slice indices along ``axis`` of ``labels``, evenly spread through the middle 80% of its labelled
    extent (the demo's and the notebooks' rule; the benchmark's, with an empty slice, is
    :func:`fewsam_jax.fewshot.pick_slices`, same signature)."""
    present = np.flatnonzero(get_slices(labels, axis).any(axis=(1, 2)))
    lo, hi = np.percentile(present, [10, 90])
    return [int(s) for s in np.linspace(lo, hi, count).round()]


def overlay_figure(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, slices: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = ListedColormap([(0, 0, 0, 0), (0.2, 0.6, 1, 0.5), (1, 0.4, 0.2, 0.5), (0.3, 0.9, 0.3, 0.5)])
    fig, axes = plt.subplots(2, len(slices), figsize=(3 * len(slices), 6.4))
    for col, index in enumerate(slices):
        for row, (name, label) in enumerate((("reference", truth), ("few-shot", pred))):
            ax = axes[row, col]
            ax.imshow(image[index], cmap="gray")
            ax.imshow(label[index], cmap=colours, vmin=0, vmax=3, interpolation="nearest")
            ax.set_title(f"{name}, slice {index}", fontsize=9)
            ax.axis("off")
    fig.suptitle("MNI152: blue white matter, orange grey matter, green other brain")
    fig.tight_layout()
    with write_file(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def run_demo(out: str | Path = "fewsam_demo", steps: int | None = None, retrain: bool = False, axis: int = 2) -> dict:
    """Label a few slices, train, segment the whole volume, score, write NIfTI + PNG. Returns the scores."""
    out = Path(out)
    # a folder the demo did not write is never written into; the demo writes into it (a mount point will do)
    check_output_dir(out, "demo", overwrite=True, in_place=True)
    out.mkdir(parents=True, exist_ok=True)
    if read_marker(out) is None:
        write_marker(out, "demo")
    started = time.perf_counter()
    image_path, label_path = mni_with_labels(out, overwrite=True)  # the demo's own folder (checked above)
    truth = read_labels(label_path)
    labelled = pick_slices(truth, LABELLED_SLICES, axis=axis)
    manifest = save_collection(Collection(classes=dict(CLASSES), axis=axis,
                                          support=(SupportItem(image_path, label_path, tuple(labelled)),)),
                               out / "manifest.json", overwrite=True)  # the demo's own folder (checked above)
    log.info(f"labelled slices (the 'user's' labels): {labelled} of {truth.shape[axis]} along axis {axis}")

    decoder_dir = out / "decoder"
    training = TrainConfig(augment=AugmentConfig(copies=1), **({} if steps is None else {"steps": steps}))
    if retrain or not (decoder_dir / "fewshot.json").exists():
        segmenter = FewShotSegmenter.train(load_collection(manifest), training=training)
        segmenter.save(decoder_dir, overwrite=True)
    else:
        log.info(f"reusing the decoder trained in {decoder_dir} (--retrain to train again)")
        segmenter = FewShotSegmenter.load(decoder_dir)
    volume = load_volume(image_path)
    pred = segmenter.segment(volume)
    pred_path = save_labels(pred, volume, out / "prediction.nii.gz", overwrite=True, mark=True)

    unlabelled = np.setdiff1d(np.arange(truth.shape[axis]), labelled)
    held_pred = np.take(pred, unlabelled, axis=axis)
    held_truth = np.take(truth, unlabelled, axis=axis)
    scores = metrics.evaluate(held_pred, held_truth, volume.spacing, CLASSES, per_slice_axis=None)
    scores["brain"] = {"dice": metrics.dice(held_pred > 0, held_truth > 0)}
    log.info(f"Dice on the {unlabelled.size} unlabelled slices:")
    for name in (*CLASSES.values(), "brain"):
        log.info(f"  {name:<14} {scores[name]['dice']:.3f}")
    shown = [int(s) for s in np.linspace(labelled[0], labelled[-1], 5).round()[1:-1]]
    figure = out / "overlay.png"
    overlay_figure(get_slices(volume.array, axis), get_slices(truth, axis), get_slices(pred, axis), shown, figure)
    write_text(out / "scores.json", metrics.to_json(scores))
    log.info(f"wrote {pred_path}, {figure} and {out / 'scores.json'} in {time.perf_counter() - started:.0f} s")
    return scores
