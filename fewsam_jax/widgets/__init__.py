"""Jupyter widgets: label slices for the few-shot collection (``SliceAnnotator``) and look at results
(``ResultViewer``). They work in JupyterLab, Notebook 7, Voila and Colab (ipywidgets 8 + anywidget).

>>> from fewsam_jax.widgets import SliceAnnotator, ResultViewer
>>> annotator = SliceAnnotator("ct.nii.gz", {1: "liver", 2: "spleen"}, model="litemedsam")
>>> annotator                      # the widget, in a notebook cell
>>> annotator.save_manifest("collection/manifest.json")

Every UI action is a method call (``stroke``, ``sam_click``, ``sam_box``, ``accept_proposal``, ...),
so what the mouse does can be done, scripted and tested from Python. The state behind them lives in
the library without ipywidgets: :mod:`fewsam_jax.label_editor` (labels, undo/redo, brush),
:mod:`fewsam_jax.sam_assist` (SAM prompts and proposal), :mod:`fewsam_jax.uncertainty` (which slices
to label next).

``import fewsam_jax`` does not import this package.
"""

from fewsam_jax.label_editor import brush_mask
from fewsam_jax.uncertainty import slice_uncertainty
from fewsam_jax.widgets.annotator import SliceAnnotator
from fewsam_jax.widgets.canvas import SliceCanvas, parse_pointer_event
from fewsam_jax.widgets.render import class_colors, slice_view
from fewsam_jax.widgets.viewer import ResultViewer

__all__ = [
    "ResultViewer", "SliceAnnotator", "SliceCanvas", "brush_mask", "class_colors", "parse_pointer_event",
    "slice_uncertainty", "slice_view",
]
