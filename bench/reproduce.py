"""The paper's comparison on the shared data: ``fewsam reproduce`` writing into ``bench/results/``.

``python bench/reproduce.py --dataset hippocampus [--quick]`` takes the options of
``fewsam reproduce`` (see ``--help``); ``--out`` defaults to this checkout's ``bench/results``
wherever it is run from. Results: ``bench/results/reproduce_{dataset}[_quick].md`` (+ .json, plots).
"""

import sys
from pathlib import Path

from fewsam_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "--out", str(Path(__file__).resolve().parent / "results"), *sys.argv[1:]]))
