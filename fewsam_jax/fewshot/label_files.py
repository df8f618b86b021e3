"""Writing a segmenter's label maps to files: what the few-shot decoder and its U-Net student share.

:class:`LabelFiles` gives a segmenter (anything with ``classes`` ({id: name}) and ``segment(volume, **kwargs)``
returning a label map (X, Y, Z) on the volume's canonical grid) ``check_outputs`` and ``segment_file``: the label
map on the image's source grid, its class names and colours beside it, every output checked before anything is
computed (:mod:`fewsam_jax.outputs`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fewsam_jax.export import (
    ExportError,
    itksnap_text,
    labels_json,
    require_pynrrd,
    sidecar_paths,
    write_seg_nrrd,
)
from fewsam_jax.io import MAX_LABEL_ID, check_png_output, check_volume_header, load_volume, save_labels
from fewsam_jax.outputs import check_output_file, write_text
from fewsam_jax.provenance import check_own_file, written_by_library

LABEL_SUFFIXES = (".nii.gz", ".nii", ".png")  # what io.save_labels writes


class LabelFiles:
    """``check_outputs`` and ``segment_file`` for a segmenter with ``classes`` and ``segment``."""

    classes: dict[int, str]

    def segment(self, volume, **kwargs) -> np.ndarray:
        raise NotImplementedError

    def check_outputs(self, image: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
                      seg_nrrd: bool = False, replace_own: bool = False) -> None:
        """What :meth:`segment_file` would write for ``image`` at ``out`` may be written (an OutputError or
        ExportError names the file if not): none is ``image`` (or inside an input folder); an existing file is
        replaced only with ``overwrite`` and only when this library wrote it (:mod:`fewsam_jax.provenance`; a
        description file already holding the same text is rewritten as it is, and with ``replace_own``, resuming a
        cohort, a ``.seg.nrrd`` this library wrote, not one saved by Slicer, is replaced without ``overwrite``);
        class ids fit an 8-bit output (``.png``, ``seg_nrrd``); a ``.png`` is for a one-slice image; ``image``'s
        header is one :func:`~fewsam_jax.io.load_volume` reads (:func:`~fewsam_jax.io.check_volume_header`). Reads
        image headers only; a cohort calls it for every case first."""
        sidecars = sidecar_paths(out)
        check_volume_header(image)
        check_output_file(out, overwrite=overwrite, inputs=[image], suffixes=LABEL_SUFFIXES, replace=check_own_file)
        for kind, text in self._descriptions().items():
            same = sidecars[kind].is_file() and sidecars[kind].read_text(errors="replace") == text
            check_output_file(sidecars[kind], overwrite=overwrite or same, inputs=[image], replace=check_own_file)
        if seg_nrrd:
            require_pynrrd()
            own = replace_own and written_by_library(sidecars["nrrd"])
            check_output_file(sidecars["nrrd"], overwrite=overwrite or own, inputs=[image], replace=check_own_file)
        eight_bit = sidecars["nrrd"] if seg_nrrd else Path(out) if str(out).lower().endswith(".png") else None
        if max(self.classes) > MAX_LABEL_ID:
            raise ExportError(f"{out}: class ids up to {max(self.classes)} do not fit a label map's 16-bit ids "
                              f"(at most {MAX_LABEL_ID}); renumber the classes")
        if eight_bit is not None and max(self.classes) > 255:
            raise ExportError(f"{eight_bit}: class ids up to {max(self.classes)} do not fit its 8-bit labels "
                              "(0-255); write NIfTI (.nii.gz) without --seg-nrrd, or renumber the classes")
        check_png_output(image, out)

    def _descriptions(self) -> dict[str, str]:
        return {"itksnap": itksnap_text(self.classes), "json": labels_json(self.classes)}

    def segment_file(self, image: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
                     seg_nrrd: bool = False, replace_own: bool = False, **kwargs) -> Path:
        """Segment ``image`` and write the label map as NIfTI on its source grid and orientation, with its
        class names and colours beside it (``CASE.labels.txt`` for ITK-SNAP, ``CASE.labels.json``) and,
        with ``seg_nrrd=True``, ``CASE.seg.nrrd`` for 3D Slicer (:mod:`fewsam_jax.export`).

        Every output is checked before anything is computed (:meth:`check_outputs`), and again before
        writing. The label map is written last: once it exists, all is written.
        """
        sidecars = sidecar_paths(out)
        self.check_outputs(image, out, overwrite=overwrite, seg_nrrd=seg_nrrd, replace_own=replace_own)
        volume = load_volume(image)
        labels = self.segment(volume, **kwargs)
        # nothing appeared meanwhile
        self.check_outputs(image, out, overwrite=overwrite, seg_nrrd=seg_nrrd, replace_own=replace_own)
        for kind, text in self._descriptions().items():  # check_outputs allowed each of these
            write_text(sidecars[kind], text)
        if seg_nrrd:
            write_seg_nrrd(labels, volume, sidecars["nrrd"], self.classes, overwrite=True)
        return save_labels(labels, volume, out, overwrite=True, mark=True)
