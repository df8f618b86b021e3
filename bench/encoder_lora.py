"""Screen: adapt LiteMedSAM's last encoder stage with LoRA while training the few-shot decoder.

The frozen final embedding is what bounds the few-shot decoder on new volumes (bench/RESULTS.md, "Fourth
round"). This harness tests the one lever that changes the embedding and still keeps the cache: the input of
TinyViT's last stage, (64, 64, 320) per slice, is computed once; training runs that stage and the neck on
each step's (warped, cropped) target slices, with low-rank adapters (``flax.nnx.LoRA``, B initialised to
zero, so training starts from the frozen encoder) on the chosen linear layers of its two blocks, and trains
them together with the default few-shot decoder. Prompts (the support's region prototypes) stay on the
cached frozen embeddings; at inference every slice of a new volume runs the adapted stage.

``--rank 0`` runs the same code with the frozen encoder (the baseline every row is compared with). Splits,
support draws and scores are ``bench.fewshot``'s; logits are thresholded at 0 for every row (no calibration),
so rows compare with each other, not with ``bench.fewshot``'s calibrated rows. Stage inputs are stored as
float16 ``.npy`` under ``--work`` (default ``$FEWSAM_HOME/bench/stage_inputs``), one file per volume.

Rows accumulate in ``bench/results/encoder_lora.json``; the section "Adapting the encoder's last stage" of
``bench/RESULTS.md`` is rewritten from it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.fewshot import DATA, DRAWS, PHASES, cases, manifest, read_labels, score_volume
from bench.sections import RESULTS_DIR, machine_info, save_report

START, END = "<!-- encoder-lora:start -->", "<!-- encoder-lora:end -->"
LINEARS = ("qkv", "proj", "fc1", "fc2")  # the adaptable linear layers of a TinyViT block


def _nnx():
    from flax import nnx

    return nnx


def trunk(encoder, x):
    """TinyViT ``encoder`` up to its last stage: (B, S, S, 3) encoder input -> (B, E, E, D) last-stage input."""
    x = encoder.patch_embed(x)
    for layer in list(encoder.layers)[:-1]:
        x = layer(x)
    return x


def make_stage(encoder, rank: int, targets: tuple[str, ...], seed: int):
    """A copy of ``encoder``'s last stage and neck, (B, h, w, D) -> (B, h, w, C), with rank-``rank`` LoRA on
    the ``targets`` linear layers (names from :data:`LINEARS`) of every block; rank 0: frozen copies only."""
    nnx = _nnx()
    unknown = set(targets) - set(LINEARS)
    if unknown:
        raise ValueError(f"--targets: expected names from {LINEARS}, got {sorted(unknown)}")

    class Stage(nnx.Module):
        def __init__(self):
            self.layer = nnx.clone(encoder.layers[-1])
            self.neck = nnx.clone(encoder.neck)
            rngs = nnx.Rngs(seed)
            for block in self.layer.blocks if rank else ():
                for owner, name in ((block.attn, "qkv"), (block.attn, "proj"), (block.mlp, "fc1"), (block.mlp, "fc2")):
                    if name in targets:
                        base = getattr(owner, name)
                        setattr(owner, name, nnx.LoRA(base.in_features, rank, base.out_features, base_module=base,
                                                      rngs=rngs))

        def __call__(self, x):
            x = self.layer(x)
            for layer in self.neck:
                x = layer(x)
            return x

    return Stage()


class StageInputs:
    """Last-stage inputs of whole volumes, computed once per volume file and kept as float16 ``.npy``."""

    def __init__(self, sam, intensity, folder: Path, batch: int = 4):
        import jax.numpy as jnp

        from fewsam_jax.transforms import prepare_images

        nnx = _nnx()
        self.folder, self.intensity, self.batch, self.encoder = folder, intensity, batch, sam.image_encoder
        folder.mkdir(parents=True, exist_ok=True)

        @nnx.jit
        def run(encoder, slices):  # (B, H, W, 1) on the 0-255 scale, as SliceEncoder feeds the encoder
            return trunk(encoder, prepare_images(jnp.broadcast_to(slices, (*slices.shape[:3], 3)), sam.config))

        self._run = run

    def __call__(self, volume, indices=None) -> np.ndarray:
        """(N, E, E, D) float16 last-stage inputs of ``volume``'s axial slices ``indices`` (default all)."""
        from fewsam_jax.io import get_slices

        path = self.folder / f"{Path(volume.source).name.split('.')[0]}.npy"
        if path.exists():
            values = np.load(path)
        else:
            slices = get_slices(self.intensity.apply(volume.array), 2)
            out = []
            for start in range(0, len(slices), self.batch):
                chunk = np.zeros((self.batch, *slices.shape[1:], 1), np.float32)
                chunk[: len(slices[start:start + self.batch]), ..., 0] = slices[start:start + self.batch] * 255.0
                out.append(np.asarray(self._run(self.encoder, chunk))[: len(slices[start:start + self.batch])])
            values = np.concatenate(out).astype(np.float16)
            np.save(path, values)
        return values if indices is None else values[list(indices)]


def train(sam, support, stage_inputs: np.ndarray, rank: int, targets: tuple[str, ...], training, config,
          progress: bool = False):
    """The default decoder and (``rank`` > 0) the stage's adapters trained together as
    :func:`~fewsam_jax.fewshot.train.train_decoder` trains a decoder, the targets' embeddings computed by the
    stage from ``stage_inputs`` (S, E, E, D) of the support rows. Returns (model with ``.decoder`` and
    ``.stage``, losses per step)."""
    import jax
    import jax.numpy as jnp
    import optax

    from fewsam_jax.fewshot.decoder import FewShotDecoder, class_tokens
    from fewsam_jax.fewshot.train import EpisodeSampler, _region_stats, crop_size, segmentation_loss
    from fewsam_jax.fewshot.warp import warp_targets
    from fewsam_jax.logs import tqdm

    nnx = _nnx()

    class Model(nnx.Module):
        def __init__(self):
            self.decoder = FewShotDecoder(sam, config, rngs=nnx.Rngs(training.seed))
            self.stage = make_stage(sam.image_encoder, rank, targets, training.seed + 1)

    model = Model()
    decoder_params = nnx.All(nnx.Param, nnx.PathContains("decoder"), nnx.Not(nnx.PathContains("pe_layer")))
    wrt = nnx.Any(decoder_params, nnx.LoRAParam) if rank else decoder_params
    schedule = optax.warmup_cosine_decay_schedule(0.0, training.learning_rate,
                                                  min(training.warmup_steps, max(training.steps - 1, 1)),
                                                  max(training.steps, 2))
    tx = optax.chain(optax.clip_by_global_norm(training.grad_clip),
                     optax.adamw(schedule, weight_decay=training.weight_decay))
    optimizer = nnx.Optimizer(model, tx, wrt=wrt)
    embeddings = jnp.asarray(support.embeddings, jnp.float32)
    labels = jnp.asarray(support.labels, jnp.int32)
    images = jnp.asarray(support.images)
    sources = jnp.asarray(stage_inputs, jnp.float32) if rank else embeddings
    stats = _region_stats(model.decoder, embeddings, labels, support.num_classes)
    sampler = EpisodeSampler(support, training, config.slice_tokens, embeddings.shape[1])
    size, scale, channels = crop_size(training, embeddings.shape[1]), labels.shape[1] // embeddings.shape[1], embeddings.shape[-1]

    @nnx.jit
    def step(model, optimizer, targets, weights, choice, offset, seed):
        b = targets.shape[0]
        src, t_labels, t_images = warp_targets(jax.random.key(seed), sources[targets], labels[targets], images[targets],
                                               training.warp_rotation_deg, training.warp_scale, training.image_jitter)
        src = jax.lax.dynamic_slice(src, (0, offset[0], offset[1], 0), (b, size, size, src.shape[-1]))
        t_labels = jax.lax.dynamic_slice(t_labels, (0, scale * offset[0], scale * offset[1]), (b, scale * size, scale * size))
        t_images = jax.lax.dynamic_slice(t_images, (0, scale * offset[0], scale * offset[1], 0),
                                         (b, scale * size, scale * size, t_images.shape[-1]))

        def loss_fn(m):
            target_emb = m.stage(src) if rank else src
            tokens = class_tokens(m.decoder, *stats, weights, choice)
            pe = jax.lax.dynamic_slice(m.decoder.dense_pe(), (offset[0], offset[1], 0), (size, size, channels))
            logits, presence = m.decoder(target_emb, tokens, pe, t_images)
            return segmentation_loss(logits, presence, t_labels, training)

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, *sampler())) for _ in tqdm(range(training.steps), disable=not progress)]
    return model, losses


def run_row(args, sam, intensity, inputs: StageInputs, rank: int, targets: tuple[str, ...], draw: str, seed: int,
            shots: int) -> dict:
    """Train on ``draw``'s ``shots``-slice collection and score the validation volumes in 3D."""
    import jax.numpy as jnp

    from fewsam_jax.cache import embed_volume
    from fewsam_jax.fewshot import TrainConfig
    from fewsam_jax.fewshot.collection import load_collection, load_support_item
    from fewsam_jax.fewshot.config import DecoderConfig
    from fewsam_jax.fewshot.infer import labels_from_logits, logits_to_native, predict_logits
    from fewsam_jax.fewshot.segmenter import support_set, volume_images
    from fewsam_jax.fewshot.train import support_tokens
    from fewsam_jax.io import get_slices, load_volume, stack_slices

    nnx = _nnx()
    names = cases(args.data)
    config, training = DecoderConfig.default(), TrainConfig(seed=seed, steps=args.steps)
    with tempfile.TemporaryDirectory() as scratch:
        collection = load_collection(manifest(args.data, names[DRAWS[draw]], shots, Path(scratch)))
        support = support_set(collection, sam, intensity, config, training, args.cache, progress=False)
        stage_in = np.concatenate([inputs(load_support_item(item, 2)[0], item.slices) for item in collection.support])
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    model, losses = train(sam, support, stage_in, rank, targets, training, config)
    train_seconds = time.perf_counter() - started
    tokens = support_tokens(model.decoder, support)
    stage = nnx.jit(lambda m, x: m.stage(x))
    started, per_volume, total = time.perf_counter(), [], 0
    for name in names[PHASES["validation"]][: args.volumes]:
        volume = load_volume(args.data / "imagesTr" / f"{name}_0000.nii.gz")
        if rank:
            values = inputs(volume)
            embeddings = np.concatenate([np.asarray(stage(model, jnp.asarray(values[i:i + 4], jnp.float32)))
                                         for i in range(0, len(values), 4)])
        else:
            embeddings = embed_volume(volume, sam, axis=2, intensity=intensity, cache=args.cache, progress=False).load()
        logits, presence = predict_logits(model.decoder, tokens, embeddings,
                                          images=volume_images(volume, intensity, 2, config, sam.config))
        slice_shape = get_slices(volume.array, 2).shape[1:]
        pred = stack_slices(labels_from_logits(logits_to_native(logits, slice_shape), presence, (1, 2)), 2)
        per_volume.append(score_volume(pred, read_labels(args.data / "labelsTr" / f"{name}.nii.gz"), volume.spacing))
        total += len(embeddings)
    dice = np.asarray([v["dice"] for v in per_volume])
    return {"rank": rank, "targets": list(targets) if rank else [], "draw": draw, "seed": seed, "positive_slices": shots,
            "steps": args.steps, "volumes": len(per_volume), "dice": dice.mean(axis=0).tolist(),
            "mean_dice": float(dice.mean()),
            "volume_ratio": np.asarray([v["volume_ratio"] for v in per_volume]).mean(axis=0).tolist(),
            "train_seconds": round(train_seconds, 1), "loss_last": float(np.mean(losses[-20:])),
            "segment_seconds_per_100_slices": round(100 * (time.perf_counter() - started) / max(total, 1), 1),
            "load_average": [load_before, os.getloadavg()[0]], "date": datetime.date.today().isoformat()}


def markdown(report: dict) -> str:
    lines = [
        f"## Adapting the encoder's last stage (`python -m bench.encoder_lora`, last run {report['date']})", "",
        f"{report['machine'].get('cpu', '?')} ({report['machine'].get('cores', '?')} cores), LiteMedSAM. The default "
        "few-shot decoder trained with LoRA on TinyViT's last stage (rank, adapted layers of both blocks) against "
        "the same code with the frozen encoder (rank 0). Validation volumes, `bench.fewshot`'s draws; logits "
        "thresholded at 0 (no calibration) in every row. Load average before/after training in the JSON; other jobs "
        "shared the CPU, so seconds compare only roughly.", "",
        "| rank | adapted layers | draw | seed | positive slices | Dice anterior / posterior | mean Dice | "
        "volume ratio ant / post | train s | segment s / 100 slices |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(report["rows"], key=lambda r: (r["positive_slices"], r["draw"], r["seed"], r["rank"], r["targets"])):
        lines.append(f"| {r['rank']} | {', '.join(r['targets']) or '-'} | {r['draw']} | {r['seed']} | "
                     f"{r['positive_slices']} | {r['dice'][0]:.3f} / {r['dice'][1]:.3f} | **{r['mean_dice']:.3f}** | "
                     f"{r['volume_ratio'][0]:.2f} / {r['volume_ratio'][1]:.2f} | {r['train_seconds']:.0f} | "
                     f"{r['segment_seconds_per_100_slices']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=lambda s: [int(x) for x in s.split(",")], default=[0, 4],
                        help="LoRA ranks to run (0: the frozen encoder)")
    parser.add_argument("--targets", type=lambda s: tuple(s.split(",")), default=("qkv", "proj"),
                        help=f"adapted linear layers of each block, of {','.join(LINEARS)}")
    parser.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=[20])
    parser.add_argument("--draws", type=lambda s: s.split(","), default=["A"])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--volumes", type=int, help="score only the first N validation volumes")
    parser.add_argument("--cache", help="embedding cache folder (default $FEWSAM_HOME/embeddings)")
    parser.add_argument("--work", type=Path, help="where stage inputs are kept (default $FEWSAM_HOME/bench/stage_inputs)")
    parser.add_argument("--data", type=Path, default=DATA, help="the hippocampus folder (imagesTr/, labelsTr/)")
    args = parser.parse_args()
    if not (args.data / "imagesTr").is_dir():
        raise SystemExit(f"needs the shared hippocampus data (imagesTr/, labelsTr/) at {args.data}")
    if not set(args.draws) <= set(DRAWS):
        raise SystemExit(f"--draws: expected names from {sorted(DRAWS)}, got {args.draws}")
    if set(args.targets) - set(LINEARS):
        raise SystemExit(f"--targets: expected names from {LINEARS}, got {args.targets}")
    args.data = args.data.resolve()
    from fewsam_jax.home import fewsam_home
    from fewsam_jax.preprocess import Intensity
    from fewsam_jax.weights import load_model

    sam = load_model("litemedsam")
    intensity = Intensity.parse("percentile")
    inputs = StageInputs(sam, intensity, args.work or fewsam_home() / "bench" / "stage_inputs")
    path = RESULTS_DIR / "encoder_lora.json"
    key = lambda r: (r["rank"], tuple(r["targets"]), r["draw"], r["seed"], r["positive_slices"])
    for draw in args.draws:
        for seed in args.seeds:
            for shots in args.shots:
                for rank in args.ranks:
                    row = run_row(args, sam, intensity, inputs, rank, args.targets, draw, seed, shots)
                    print(json.dumps(row), flush=True)
                    old = json.loads(path.read_text())["rows"] if path.exists() else []
                    rows = [r for r in old if key(r) != key(row)] + [row]
                    report = {"date": row["date"], "machine": machine_info(), "rows": rows}
                    save_report("encoder_lora", report, f"{START}\n{markdown(report)}\n{END}", START, END)


if __name__ == "__main__":
    main()
