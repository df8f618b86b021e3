"""``python -m bench.reproduce``: the paper's comparison on the shared data, from the command line.

``python -m bench.reproduce --dataset hippocampus [--quick]`` (from the checkout root; ``fewsam
reproduce`` forwards its arguments here). Results: ``bench/results/reproduce_{dataset}[_quick].md``
(+ .json, plots); ``--out`` defaults to this checkout's ``bench/results`` wherever it is run from.
Every output is checked before the study runs (:mod:`fewsam_jax.outputs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from bench.reproduce.datasets import DATASETS
from bench.sections import RESULTS_DIR
from fewsam_jax.logs import run_command


def build_parser(prog: str = "python -m bench.reproduce") -> argparse.ArgumentParser:
    """The study's options (``--dataset``, ``--quick``, ``--out``, ``--model``, ...)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="the paper's comparison on the shared data: few-shot vs prompted SAM vs full supervision")
    parser.add_argument("--dataset", default="hippocampus", choices=DATASETS)
    parser.add_argument("--quick", action="store_true", help="small split, one seed, fewer steps")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for the Markdown, JSON and PNG files")
    parser.add_argument("--overwrite", action="store_true", help="replace this study's existing report files")
    parser.add_argument("--model", default="litemedsam", help="preset name or converted model directory")
    parser.add_argument("--checkpoint", help="official .pth for vit_b/vit_l/vit_h (converted once into the cache)")
    parser.add_argument("--data", help="data root (default: ../shared/data beside the checkout)")
    parser.add_argument("--cache", help="embedding cache folder (default $FEWSAM_HOME/embeddings)")
    parser.add_argument("--student", action="store_true",
                        help="also teach a U-Net student with every few-shot decoder (fewsam teach's defaults) and "
                             "score it beside the decoder and the U-Net from scratch on the same slices")
    return parser


def run(args: argparse.Namespace) -> None:
    """Run the study the parsed ``args`` describe and print the files it wrote."""
    from bench.reproduce import StudyConfig, run_study
    from fewsam_jax.cache import EmbeddingCache

    command = (f"python -m bench.reproduce --dataset {args.dataset}" + (" --quick" if args.quick else "")
               + (" --student" if args.student else ""))
    EmbeddingCache(args.cache).check_writable()
    config = StudyConfig.quick() if args.quick else StudyConfig()
    report = run_study(args.dataset, quick=args.quick, out=args.out, model=args.model, checkpoint=args.checkpoint,
                       config=dataclasses.replace(config, student=args.student), cache=args.cache,
                       data_root=args.data, command=command, overwrite=args.overwrite)
    print("\n".join(str(path) for path in report["files"].values()))


def main(argv: list[str] | None = None, prog: str = "python -m bench.reproduce") -> int:
    """Parse ``argv``, run the study; 2 with the message on stderr when an input or output is refused."""
    return run_command(run, build_parser(prog).parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main())
