"""``python -m bench.reproduce``: the paper's comparison on the shared data, from the command line.

``python -m bench.reproduce --dataset hippocampus [--quick]`` (from the checkout root; ``fewsam
reproduce`` forwards its arguments here). Results: ``bench/results/reproduce_{dataset}[_quick].md``
(+ .json, plots); ``--out`` defaults to this checkout's ``bench/results`` wherever it is run from.
Every output is checked before the study runs (:mod:`fewsam_jax.outputs`). Each finished unit is kept in
``reproduce_{dataset}[_quick].runs.json`` there; the same command with ``--resume`` continues a run that stopped.
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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this study's existing report files (and, without --resume, start its runs file "
                             "afresh)")
    parser.add_argument("--model", default="litemedsam", help="preset name or converted model directory")
    parser.add_argument("--checkpoint", help="official .pth for vit_b/vit_l/vit_h (converted once into the cache)")
    parser.add_argument("--data", help="data root (default: ../shared/data beside the checkout)")
    parser.add_argument("--cache", help="embedding cache folder (default $FEWSAM_HOME/embeddings)")
    parser.add_argument("--student", action="store_true",
                        help="also teach a U-Net student with every few-shot decoder (fewsam teach's defaults) and "
                             "score it beside the decoder and the U-Net from scratch on the same slices")
    parser.add_argument("--unlabelled", type=int, default=0, metavar="N",
                        help="hippocampus with --student: the students also learn from the images of N more volumes "
                             "(after the pool and test volumes; labels never read), as fewsam teach -i teaches")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2),
                        help="hippocampus: label and score slices along this axis (0 sagittal, 1 coronal, 2 axial, the "
                             "default); another than 2 names the report reproduce_hippocampus_sagittal (or _coronal)")
    parser.add_argument("--shots", type=_counts, metavar="N,N,...",
                        help="the few-shot counts to run (default: the data set's sweep)")
    parser.add_argument("--seeds", type=int, help="draws (seeds) per count (default 3, 1 with --quick)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run of the same study, or extend a finished one with more "
                             "--seeds or --shots: its finished units (kept in reproduce_NAME.runs.json in --out after "
                             "each one) are not run again")
    parser.add_argument("--kept-only", action="store_true",
                        help="with --resume: write the report from the runs file's units alone, training nothing; "
                             "units not run yet are left out and named in the report")
    return parser


def _counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts (5,10,20), got {text!r}") from None


def run(args: argparse.Namespace) -> None:
    """Run the study the parsed ``args`` describe and print the files it wrote."""
    from bench.reproduce import StudyConfig, run_study
    from fewsam_jax.cache import EmbeddingCache

    command = " ".join(["python -m bench.reproduce --dataset", args.dataset, *(["--quick"] if args.quick else []),
                        *(["--axis", str(args.axis)] if args.axis is not None else []),
                        *(["--shots", ",".join(map(str, args.shots))] if args.shots else []),
                        *(["--seeds", str(args.seeds)] if args.seeds is not None else []),
                        *(["--student"] if args.student else []),
                        *(["--unlabelled", str(args.unlabelled)] if args.unlabelled else [])])
    EmbeddingCache(args.cache).check_writable()
    config = StudyConfig.quick() if args.quick else StudyConfig()
    sizes = {"student": args.student, **({"shots": args.shots} if args.shots else {}),
             **({"seeds": args.seeds} if args.seeds is not None else {})}
    report = run_study(args.dataset, quick=args.quick, out=args.out, model=args.model, checkpoint=args.checkpoint,
                       config=dataclasses.replace(config, **sizes), cache=args.cache, data_root=args.data,
                       command=command, overwrite=args.overwrite, axis=args.axis, unlabelled=args.unlabelled,
                       resume=args.resume, kept_only=args.kept_only)
    print("\n".join(str(path) for path in report["files"].values()))


def main(argv: list[str] | None = None, prog: str = "python -m bench.reproduce") -> int:
    """Parse ``argv``, run the study; 2 with the message on stderr when an input or output is refused."""
    return run_command(run, build_parser(prog).parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main())
