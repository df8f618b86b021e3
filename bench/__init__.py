"""The research tree: the comparison study, its baselines and the benchmark harnesses.

Not part of the installed library (the wheel holds ``fewsam_jax`` and ``converters`` only): run it
from the root of a checkout, e.g. ``python -m bench.reproduce --dataset hippocampus --quick`` or
``python -m bench.encode --quick``. It imports the library; the library never imports it (the one
exception is ``fewsam reproduce``, which forwards to :mod:`bench.reproduce` lazily).

* :mod:`bench.reproduce`: the paper's comparison (few-shot decoder vs prompted SAM vs U-Net).
* :mod:`bench.baselines`: the comparison methods (prompted SAM, a U-Net from scratch).
* :mod:`bench.encode`, :mod:`bench.fewshot`, :mod:`bench.gpu`: benchmark harnesses writing their
  sections of ``bench/RESULTS.md`` (:mod:`bench.sections`) and raw numbers under ``bench/results/``.
"""
