"""Jupyter widgets: label slices for the few-shot collection (``SliceAnnotator``) and look at results
(``ResultViewer``). They work in JupyterLab, Notebook 7, Voila and Colab (ipywidgets 8 + anywidget).

>>> from fewsam_jax.widgets import SliceAnnotator, ResultViewer
>>> annotator = SliceAnnotator("ct.nii.gz", {1: "liver", 2: "spleen"}, model="litemedsam")
>>> annotator                      # the widget, in a notebook cell
>>> annotator.save_manifest("collection/manifest.json")

Every UI action is a method call (``stroke``, ``sam_click``, ``sam_box``, ``accept_proposal``, ...),
so what the mouse does can be done, scripted and tested from Python.

``import fewsam_jax`` does not import this package.
"""

from fewsam_jax.widgets.annotator import SliceAnnotator, brush_mask
from fewsam_jax.widgets.canvas import SliceCanvas, parse_pointer_event
from fewsam_jax.widgets.render import class_colors, slice_view
from fewsam_jax.widgets.viewer import ResultViewer, slice_uncertainty

__all__ = [
    "ResultViewer", "SliceAnnotator", "SliceCanvas", "brush_mask", "class_colors", "parse_pointer_event",
    "slice_uncertainty", "slice_view",
]
