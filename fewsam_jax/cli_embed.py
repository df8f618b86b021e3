"""``fewsam embed`` and ``fewsam cache``: fill, inspect and evict the slice-embedding cache."""

from __future__ import annotations

import argparse
import logging

from fewsam_jax.preprocess import WINDOWS, Intensity

log = logging.getLogger("fewsam_jax.cli")
DEFAULT_MODEL = "litemedsam"  # as fewsam_jax.weights.DEFAULT_MODEL; not imported to keep `fewsam --help` fast
STORAGES = ("float16", "q8", "q6", "q5", "q4")  # as fewsam_jax.cache.STORAGES (tested), for the same reason


def _base_model(name: str):
    """The model of ``--model``: a converted folder (or the default preset's, converted if absent) as a
    LazyModel, read only when a slice is missing from the cache; another preset through ``load_model``."""
    from fewsam_jax import weights

    if weights.is_model_dir(name):
        return weights.LazyModel(name)
    if name == DEFAULT_MODEL:
        return weights.LazyModel(weights.cached_model_dir(name))
    return weights.load_model(name)


def _embed(args: argparse.Namespace) -> None:
    import time

    from fewsam_jax.cache import EmbeddingCache, check_stage_model
    from fewsam_jax.cohort import embed_cases, find_cases

    cases = find_cases(args.image, channel=args.channel)  # bad inputs fail before the model loads
    intensity = Intensity.parse(args.window or args.intensity)
    cache = EmbeddingCache(args.cache, storage=args.storage)
    cache.check_writable()
    if args.prefetch < 0:
        raise ValueError(f"--prefetch: expected 0 or more volumes to read ahead, got {args.prefetch}")
    model = _base_model(args.model)
    if args.stage_inputs:
        check_stage_model(model, "--stage-inputs")
    started, slices, encoded = time.perf_counter(), 0, 0
    for _, entry in embed_cases(cases, model, cache=cache, axis=args.axis, intensity=intensity,
                                batch_size=args.batch_size, dtype=args.dtype, stage_inputs=args.stage_inputs,
                                prefetch=args.prefetch, progress=not args.quiet):
        computed = len(entry.computed)
        slices, encoded = slices + entry.num_slices, encoded + computed
        repaired = (f" ({len(entry.repaired)} of them re-encoded: corrupt in the cache)"
                    if len(entry.repaired) else "")
        if args.stage_inputs:
            repaired += f"; last-stage inputs of {len(entry.stage_computed)} slices stored"
        print(
            f"{entry.num_slices} slices of {entry.slice_shape[0]}x{entry.slice_shape[1]} along axis {entry.axis}: "
            f"{computed} encoded{repaired}, {entry.num_slices - computed} from the cache (verified); embeddings "
            f"{entry.embedding_shape} {entry.storage} in {entry.path}"
        )
    if len(cases) > 1:
        seconds = time.perf_counter() - started
        print(f"{len(cases)} volumes, {slices} slices: {encoded} encoded, {slices - encoded} from the cache, "
              f"in {seconds:.1f} s ({encoded / seconds:.2f} slices encoded per second)")


def _cache_info(args: argparse.Namespace) -> None:
    from fewsam_jax.cache import EmbeddingCache

    cache = EmbeddingCache(args.cache)
    info = cache.info()
    if args.model:
        info = {args.model: info[args.model]} if args.model in info else {}
    print(f"embedding cache: {cache.root}")
    if not info:
        print("empty" if not args.model else f"no entries for model {args.model!r}")
        return
    print(f"{'model':<16}{'entries':>9}{'complete':>10}{'slices':>9}{'size':>12}")
    for model, stats in info.items():
        size = f"{stats['bytes'] / 2**20:.1f} MiB"
        print(f"{model:<16}{stats['entries']:>9}{stats['complete']:>10}{stats['slices']:>9}{size:>12}")


def _cache_clear(args: argparse.Namespace) -> None:
    from fewsam_jax.cache import EmbeddingCache

    cache = EmbeddingCache(args.cache)
    result = cache.clear(args.model)
    what = f"model {args.model!r}" if args.model else "all models"
    print(f"removed {result['removed']} entries ({result['bytes'] / 2**20:.1f} MiB) of {what} from {cache.root}")
    for path in result["in_use"]:
        log.warning("skipped (being written): %s", path)


def register(commands: argparse._SubParsersAction) -> None:
    """Adds the ``embed`` and ``cache`` subcommands to ``fewsam``'s subparsers."""
    cache_help = "cache root (default: $FEWSAM_HOME/embeddings)"
    embed = commands.add_parser(
        "embed",
        help="encode every slice of volumes (files or folders) into the embedding cache (resumable)",
        description="Encode every 2D slice of each IMAGE (or of every volume in a folder) along --axis with the "
        "model's frozen image encoder and store the embeddings (float16, or quantized with --storage) in the "
        "content-addressed cache; rerunning computes only missing slices, and the model's weights are read only "
        "when a slice is missing.",
    )
    embed.add_argument("image", nargs="+",
                       help="NIfTI, DICOM folder/file, .npy, PNG or JPEG, or folders of them (every volume is "
                       "embedded, in name order; nnU-Net CASE_XXXX files: --channel only)")
    embed.add_argument("--channel", type=int, default=0,
                       help="in folders of nnU-Net channel files (CASE_XXXX), the channel to embed (default 0)")
    embed.add_argument("--prefetch", type=int, default=1,
                       help="volumes read and normalised ahead, in a background thread, while the current one "
                       "is encoded (default 1; 0 reads each in turn)")
    embed.add_argument("--model", default=DEFAULT_MODEL, help=f"preset name or converted model directory (default {DEFAULT_MODEL})")
    embed.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="slicing axis: 0 sagittal, 1 coronal, 2 axial (default)")
    intensity = embed.add_mutually_exclusive_group()
    intensity.add_argument("--window", choices=sorted(WINDOWS), help="CT window preset")
    intensity.add_argument(
        "--intensity", default="percentile",
        help="'window:LEVEL,WIDTH', 'percentile[:LOW,HIGH]' (default, 0.5-99.5) or 'minmax'",
    )
    embed.add_argument("--cache", help=cache_help)
    embed.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only; no progress bar")
    embed.add_argument("--batch-size", type=int, default=4, help="slices per compiled batch (default 4)")
    embed.add_argument("--storage", choices=STORAGES, default=None,
                       help="how a new cache entry stores slices (and stage inputs): float16 (2 MB a LiteMedSAM "
                       "slice), or q8/q6/q5/q4, 8/6/5/4-bit codes per channel, prediction-coded and zstd-compressed "
                       "(default $FEWSAM_CACHE_STORAGE, else float16); an existing entry keeps its own")
    embed.add_argument("--stage-inputs", action="store_true",
                       help="also cache each slice's last-stage input (2.5 MiB a litemedsam slice in float16, less "
                            "in a quantized --storage), which decoders that adapt the encoder's last stage "
                            "(encoder_lora_rank > 0, the default on litemedsam) read; without it they add it when they "
                            "first segment the volume (TinyViT models only)")
    embed.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="encoder compute dtype (default float32)")
    embed.set_defaults(run=_embed)

    cache = commands.add_parser("cache", help="inspect or evict the embedding cache")
    actions = cache.add_subparsers(dest="action", required=True)
    for name, run, text in (
        ("info", _cache_info, "entries and size per model"),
        ("clear", _cache_clear, "delete cached embeddings (entries being written are skipped; "
                                "only cache entries are ever deleted)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--model", help="only this model (default: all)")
        action.add_argument("--cache", help=cache_help)
        action.set_defaults(run=run)
