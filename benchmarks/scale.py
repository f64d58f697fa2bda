"""Training throughput of the streamed input path against the in-memory path, on synthetic data.

    python benchmarks/scale.py                       # N = 100,000 x 784, batch 256
    python benchmarks/scale.py --n=20000 --steps=500

A synthetic data set of N samples x 784 values in [0, 1] (uint8 / 255, as images are read) is
written to an .npy and read through `data.source=file:`. The VaDE reference network (784-500-500-
2000, z 10, K 10) then trains `--steps` steps at batch 256 twice, with `parallel.stream` off (the
data on the device) and on (batches gathered on the host and sent ahead of the step), in one
process, one after the other. steps/s is read from the run's metrics.jsonl, over the log steps
after the first (which includes compilation). Peak host RSS is the process's maximum so far
after each run. `--knn` also times the neighbour search on synthetic 10-D embeddings (20 Gaussian
clusters) of each given size: knn_descent, and knn_table (exact) up to --exact-max samples, with
the recall of knn_descent's 3 neighbours against the exact ones (above --exact-max: on 2,000 rows
drawn at random, found by brute force). Prints one JSON object.

    python benchmarks/scale.py --steps=0 --knn=100000,1000000      # the neighbour search alone
"""
import argparse
import json
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: KB


def train_rate(path, stream, steps, workdir):
    """(steps/s after the first log step, seconds of the whole run) of VaDE on the data at `path`."""
    from gmvc import recipes
    from gmvc.trainer import train_and_evaluate
    c = recipes.vade(n_clusters=10, hidden_sizes=(500, 500, 2000), steps=steps, pretrain_steps=1, batch_size=256,
                     restarts=1, scaling="none")
    c.unlock()
    c.data.source = f"file:{path}"
    c.train.phases = ("main",)
    c.phases = {"main": {"kind": "train", "steps": -1}}
    c.train.log_every = max(1, steps // 8)
    c.tensorboard.enabled = False
    c.parallel.stream = stream
    c.lock()
    t0 = time.time()
    train_and_evaluate(c, workdir, echo=lambda *a, **k: None, write_outputs=False)
    seconds = time.time() - t0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_sec"] for r in rows if r.get("phase") == "main"][1:]
    return float(np.median(rates)), round(seconds, 1)


def time_knn(n, exact_max, k=3):
    """Seconds of knn_descent (and of knn_table up to exact_max rows), and the recall@k."""
    import jax
    from gmvc.core.neighbours import knn_descent, knn_table
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(20, 10)) * 3)[rng.integers(0, 20, n)] + rng.normal(size=(n, 10))
    z = z.astype(np.float32)
    out = {}
    t0 = time.time()
    approx = knn_descent(z, k, jax.random.key(0))
    out["descent_seconds"] = round(time.time() - t0, 1)
    if n <= exact_max:
        t0 = time.time()
        exact = knn_table(z, k)
        out["exact_seconds"] = round(time.time() - t0, 1)
        out["recall"] = round(float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, approx)])), 4)
    else:                   # the exact neighbours of 2,000 rows drawn at random, by brute force
        rows = rng.choice(n, 2000, replace=False)
        exact = []
        for i in rows:
            d2 = np.sum((z - z[i]) ** 2, axis=1)
            d2[i] = np.inf
            exact.append(np.argpartition(d2, k)[:k].copy())      # a copy: a view would keep all N alive
        out["recall_on_2000_rows"] = round(float(np.mean([len(set(e) & set(approx[i])) / k
                                                          for e, i in zip(exact, rows)])), 4)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=800, help="0: no training runs")
    p.add_argument("--knn", default="", help="sizes to time the neighbour search at, e.g. 100000,1000000")
    p.add_argument("--exact-max", type=int, default=100_000)
    args = p.parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    out = {"n": args.n, "dim": 784, "batch_size": 256, "steps": args.steps}
    for n in [int(v) for v in args.knn.split(",") if v]:
        out[f"knn_{n}"] = time_knn(n, args.exact_max)
        print(json.dumps({f"knn_{n}": out[f"knn_{n}"]}), file=sys.stderr, flush=True)
    if args.steps <= 0:
        print(json.dumps(out), flush=True)
        return out
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        path = tmp / "synthetic.npy"
        x = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(args.n, 784))
        rng = np.random.default_rng(0)
        for start in range(0, args.n, 10_000):
            stop = min(start + 10_000, args.n)
            x[start:stop] = rng.integers(0, 256, (stop - start, 784), dtype=np.uint8)
        x.flush()
        del x
        out["rss_mb_before"] = round(peak_rss_mb(), 1)
        for stream in ("off", "on"):
            rate, seconds = train_rate(path, stream, args.steps, tmp / f"run_{stream}")
            out[f"steps_per_sec_{stream}"] = round(rate, 2)
            out[f"run_seconds_{stream}"] = seconds
            out[f"peak_rss_mb_after_{stream}"] = round(peak_rss_mb(), 1)
    out["streamed_over_in_memory"] = round(out["steps_per_sec_on"] / out["steps_per_sec_off"], 3)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
