"""Training throughput of the real gmvc train step, against this machine's float32 matmul rate.

    python benchmarks/throughput.py              # VaDE reference net and spiral GMVAE, batch 100/256/1024
    python benchmarks/throughput.py --quick      # fewer steps and repetitions (about a minute)
    python benchmarks/throughput.py --models=vade --batch-sizes=256 --out=throughput.json

Prints one JSON object on stdout (and to --out if given); progress goes to stderr.

What is timed is what `python -m gmvc.main` runs: gmvc.training.program.Program builds the objective, the
optax optimizer and the step exactly as a run does, and its compiled chunk (`train.log_every`
steps in one lax.scan on device: batch selection by the epoch permutation, per-sample noise
keys, forward, backward, Adam update) is called on a device-resident synthetic data set.
Compilation (lower + compile of that chunk) is timed separately; the rate is the best (and the
median) of several timed chunks after a warm-up call, samples/s = chunk_len * batch / seconds.
The timed chunks are short (about 0.5 s of VaDE steps: 11 at batch 256, 30 at batch 100) and
many (20), because the matmul reference below is the best of ~50 ms windows: a best-of taken
over windows of like length treats both alike when the shared machine slows down for a moment
(with 5 chunks of 3 s each, the step's best window was more often one that such a moment
reached). A short chunk is, if anything, slower per step than `python -m gmvc.main`'s 250:
each call adds its dispatch and the fetch of its metrics.

FLOPs per step: `flops_analytic` counts the dense layers' multiply-adds (2 FLOPs each), forward
once and backward twice (input and weight gradients; none for the input of the first layer);
`flops_xla` is XLA's own count from the compiled chunk's cost_analysis() divided by the chunk
length (it includes elementwise work and the optimizer, and XLA:CPU counts a while loop's
body once, so it is scaled only when it is plausibly per-chunk; see `xla_cost_note`).
The achieved rate uses the analytic count: it is the work any implementation must do.

The matmul reference is measured in the same run: each forward and backward matmul of the
network at that batch size, jitted alone (float32, inputs on device, best of several calls),
once before the step is timed and once after, each shape's faster pass kept (a single pass
could catch a shape during a slow moment of a shared machine and understate the reference).
`matmul_gflops_same_shapes` is their total FLOPs over their total time, the rate at which this
machine multiplies exactly these matrices; the fraction of it the step achieves is the headline
(`fraction_of_matmul`). `matmul_gflops_peak` is the fastest single shape, and a square 1024^3
matmul is reported as the machine's plain GEMM rate.

Per step: `step_ms` (the best chunk over its steps), `matmul_ms` (the step's FLOPs at the
same-shapes matmul rate) and `other_ms`, the rest (the optimizer update, elementwise work, the
batch gather). The summary's `*_batch100_over_batch256` is the samples/s ratio, and
`*_matmuls_alone` the ratio a step made of its matmuls alone would reach at the measured rates:
a bound set by how fast this machine multiplies the smaller matrices.
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from gmvc.training import parallel  # noqa: E402
from gmvc import recipes  # noqa: E402
from gmvc.models import make_model  # noqa: E402
from gmvc.training.phases import build_phases  # noqa: E402
from gmvc.training.state import Tables, create_state, init_params  # noqa: E402
from gmvc.training.program import Program  # noqa: E402
from gmvc.data import Dataset  # noqa: E402
from gmvc.validate import validate  # noqa: E402  (the config checks of a Plan)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the two networks

def vade_reference_config(batch_size, chunk_len):
    """The VaDE paper's MNIST network: 784-500-500-2000, z 10, K 10, Bernoulli likelihood, the VaDE
    objective (reconstruction + mixture KL), one phase, one restart; other settings as
    configs/vade_mnist5k.py."""
    c = recipes.vade_mnist5k()
    c.unlock()
    c.model.hidden_sizes = (500, 500, 2000)
    c.model.z_dim, c.model.num_clusters = 10, 10
    c.objective = {"recon": 1.0, "vade_kl": 1.0}
    c.train.phases = ()
    c.train.restarts = 1
    c.train.batch_size, c.train.log_every = batch_size, chunk_len
    c.train.steps = 10**9          # no step of a timed chunk is past the end
    return c


def spiral_config(batch_size, chunk_len):
    """configs/gmvae_spiral.py as it is (4 restarts trained together), at the given batch size."""
    c = recipes.gmvae_spiral()
    c.unlock()
    c.train.batch_size, c.train.log_every = batch_size, chunk_len
    c.train.steps = 10**9
    return c


def dense_shapes(model_name, config, data_dim):
    """(fan_in, fan_out) of every dense layer of one restart's network, in forward order."""
    m = config.model
    hidden = list(m.hidden_sizes)
    enc = [data_dim] + hidden
    layers = list(zip(enc[:-1], enc[1:]))
    if model_name == "vade":
        layers.append((hidden[-1], 2 * m.z_dim))                               # z head
        dec = [m.z_dim] + hidden[::-1] + [data_dim]
        layers += list(zip(dec[:-1], dec[1:]))
    else:                                                                      # gmvae
        layers += [(hidden[-1], 2 * m.z_dim), (hidden[-1], 2 * m.w_dim),      # z and w heads
                   (m.w_dim, m.prior_hidden), (m.prior_hidden, 2 * m.num_clusters * m.z_dim)]
        dec = [m.z_dim] + hidden[::-1] + [data_dim]
        layers += list(zip(dec[:-1], dec[1:]))
    return layers, {data_dim}


def matmuls_of_step(layers, first_inputs, batch):
    """Every matmul of one train step as (m, k, n, what): forward x @ W, backward dy @ W^T (not for
    layers fed by the data) and x^T @ dy."""
    out = []
    for fan_in, fan_out in layers:
        out.append((batch, fan_in, fan_out, "fwd"))
        if fan_in not in first_inputs:
            out.append((batch, fan_out, fan_in, "bwd_input"))
        out.append((fan_in, batch, fan_out, "bwd_weight"))
    return out


# ---------------------------------------------------------------- matmul reference

def time_fn(fn, args, reps, min_seconds=0.05):
    """Best seconds per call of a jitted fn (inner loop so that each timing lasts >= min_seconds)."""
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    inner = max(1, int(min_seconds / max(time.perf_counter() - t0, 1e-6)))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def matmul_times(matmuls, reps):
    """{(m, k, n): best seconds of the matmul jitted alone} for each distinct shape."""
    mm = jax.jit(jnp.matmul)
    rng = np.random.default_rng(0)
    times = {}
    for m, k, n, _ in matmuls:
        if (m, k, n) not in times:
            a = jnp.asarray(rng.standard_normal((m, k), np.float32))
            b = jnp.asarray(rng.standard_normal((k, n), np.float32))
            times[(m, k, n)] = time_fn(mm, (a, b), reps)
    return times


def matmul_reference(matmuls, passes, scale=1):
    """GFLOP/s of each matmul alone, and the rate over all of them together, from `passes`
    (matmul_times taken at different moments of the run): each shape's best time over the
    passes, so that a shape timed during a slow moment of the machine does not lower the
    reference. `scale` multiplies the count (restarts: R independent copies of each matmul)."""
    per_shape, total_flops, total_s = [], 0.0, 0.0
    for m, k, n, what in matmuls:
        s = min(p[(m, k, n)] for p in passes) * scale
        flops = 2.0 * m * k * n * scale
        per_shape.append({"shape": f"[{m},{k}]x[{k},{n}]", "what": what, "gflops": round(flops / s / 1e9, 1)})
        total_flops += flops
        total_s += s
    return per_shape, total_flops / total_s / 1e9


def square_gemm_gflops(reps, n=1024):
    a = jnp.ones((n, n), jnp.float32)
    return 2.0 * n**3 / time_fn(jax.jit(jnp.matmul), (a, a), reps) / 1e9


# ---------------------------------------------------------------- the step

def synthetic_data(model_name, n, seed=0):
    rng = np.random.default_rng(seed)
    if model_name == "vade":
        return (rng.random((n, 784)) < 0.2).astype(np.float32)    # binary 784-d, like binarised MNIST
    from gmvc.data import load_dataset
    c = recipes.gmvae_spiral()
    return load_dataset(c.data, 0).x


def bench_step(model_name, config, x, reps):
    """Compile seconds, XLA cost analysis and timed chunks of the real train chunk."""
    validate(config, Dataset(x=x, y=None, name="synthetic"))
    model = make_model(config.model, x.shape[1:])
    phase = build_phases(config)[0]
    layout = parallel.make_layout(config.parallel)
    runner = Program(config, model, phase, len(x), layout)
    params = init_params(model.init, jax.random.key(config.seed), config.train.restarts)
    state = parallel.put_state(layout, create_state(params, runner.tx))
    tables = Tables()
    x_dev = parallel.put_data(layout, x)
    rng = jax.random.key(1)

    t0 = time.perf_counter()
    lowered = runner.chunk.lower(state, tables, x_dev, rng, runner.bounds)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

    state, metrics = compiled(state, tables, x_dev, rng, runner.bounds)            # warm-up: first call, page-in
    jax.block_until_ready(state)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        state, metrics = compiled(state, tables, x_dev, rng, runner.bounds)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    loss = float(np.mean(jax.device_get(metrics["loss"])))
    if not np.isfinite(loss):
        raise SystemExit(f"throughput.py: {model_name} loss is {loss}")
    return {"trace_seconds": t1 - t0, "compile_seconds": t2 - t1, "xla_flops_chunk": xla_flops,
            "chunk_seconds": times, "loss": loss}


def bench_model(model_name, batch, args, gemm):
    chunk_len = args.chunk_len or max(10, min(200, int(args.target_seconds * 6000 / batch)))
    make = vade_reference_config if model_name == "vade" else spiral_config
    config = make(batch, chunk_len)
    x = synthetic_data(model_name, args.rows)
    restarts = config.train.restarts
    layers, first = dense_shapes(model_name, config, x.shape[1])
    matmuls = matmuls_of_step(layers, first, batch)
    flops_step = restarts * sum(2.0 * m * k * n for m, k, n, _ in matmuls)

    before = matmul_times(matmuls, args.matmul_reps)    # the reference's first pass, before the step
    log(f"{model_name} batch {batch}: compiling a chunk of {chunk_len} steps ...")
    r = bench_step(model_name, config, x, args.reps)
    best, median = min(r["chunk_seconds"]), statistics.median(r["chunk_seconds"])
    per_shape, mm_rate = matmul_reference(matmuls, [before, matmul_times(matmuls, args.matmul_reps)], scale=1)
    achieved = flops_step * chunk_len / best / 1e9
    xla_per_step = r["xla_flops_chunk"] / chunk_len
    # XLA:CPU's cost analysis counts a loop body once: if the chunk's count is close to one
    # step's analytic count, it is per step; if close to chunk_len steps, divide.
    if abs(r["xla_flops_chunk"] / flops_step - 1) < abs(xla_per_step / flops_step - 1):
        xla_per_step, note = r["xla_flops_chunk"], "cost_analysis() of the chunk counts the scan body once: taken as per-step"
    else:
        note = "cost_analysis() of the chunk divided by chunk_len"
    out = {
        "model": model_name, "batch_size": batch, "restarts": restarts, "chunk_len": chunk_len,
        "rows": len(x), "timed_chunks": args.reps, "matmul_reps_per_pass": args.matmul_reps,
        "samples_per_sec": round(chunk_len * batch / best, 1),
        "samples_per_sec_median": round(chunk_len * batch / median, 1),
        "steps_per_sec": round(chunk_len / best, 2),
        "compile_seconds": round(r["compile_seconds"], 2), "trace_lower_seconds": round(r["trace_seconds"], 2),
        "flops_per_step_analytic": flops_step, "flops_per_sample_analytic": flops_step / batch,
        "flops_per_step_xla": xla_per_step, "xla_cost_note": note,
        "achieved_gflops": round(achieved, 1),
        "matmul_gflops_same_shapes": round(mm_rate, 1),
        "fraction_of_matmul": round(achieved / mm_rate, 3),
        "step_ms": round(1e3 * best / chunk_len, 2),
        "matmul_ms": round(1e3 * flops_step / (mm_rate * 1e9), 2),
        "other_ms": round(1e3 * (best / chunk_len - flops_step / (mm_rate * 1e9)), 2),
        "fraction_of_square_gemm": round(achieved / gemm, 3),
        "matmul_gflops_peak": max(p["gflops"] for p in per_shape),
        "matmul_per_shape": per_shape, "final_loss": round(r["loss"], 3),
    }
    log(f"  {out['samples_per_sec']:.0f} samples/s (median {out['samples_per_sec_median']:.0f}), "
        f"{achieved:.1f} GFLOP/s = {out['fraction_of_matmul']:.2f} of matmul {mm_rate:.1f}; "
        f"compile {out['compile_seconds']} s")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="vade,spiral", help="comma list of vade, spiral")
    p.add_argument("--batch-sizes", default="100,256,1024")
    p.add_argument("--rows", type=int, default=8192, help="synthetic VaDE data rows (spiral: its 5,000 points)")
    p.add_argument("--reps", type=int, default=20, help="timed chunks of the step")
    p.add_argument("--matmul-reps", type=int, default=5, help="timed repetitions of each matmul, per pass")
    p.add_argument("--chunk-len", type=int, default=0, help="steps per chunk (default: about --target-seconds)")
    p.add_argument("--target-seconds", type=float, default=0.5, help="aimed length of a timed VaDE chunk")
    p.add_argument("--quick", action="store_true", help="6 chunks of ~0.5 s, 3 matmul repetitions")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.matmul_reps = 6, 3
    return args


def main(argv=None):
    args = parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    t0 = time.time()
    gemm = square_gemm_gflops(args.matmul_reps)
    log(f"square 1024^3 float32 matmul: {gemm:.1f} GFLOP/s")
    results = []
    for model_name in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            results.append(bench_model(model_name, batch, args, gemm))
    summary = {}
    for model_name in args.models.split(","):
        rows = {r["batch_size"]: r for r in results if r["model"] == model_name}
        if 100 in rows and 256 in rows:
            summary[f"{model_name}_batch100_over_batch256"] = round(
                rows[100]["samples_per_sec"] / rows[256]["samples_per_sec"], 3)
            # both batch sizes do the same FLOPs per sample: a step that were its matmuls alone
            # would reach the ratio of their measured rates
            summary[f"{model_name}_batch100_over_batch256_matmuls_alone"] = round(
                rows[100]["matmul_gflops_same_shapes"] / rows[256]["matmul_gflops_same_shapes"], 3)
    out = {"benchmark": "throughput", "jax": jax.__version__, "backend": jax.default_backend(),
           "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(), "quick": args.quick,
           "square_gemm_gflops": round(gemm, 1), "summary": summary, "results": results,
           "wall_seconds": round(time.time() - t0, 1)}
    print(json.dumps(out), flush=True)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
