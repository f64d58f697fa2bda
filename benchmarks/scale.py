"""gmvc on data bigger than memory: synthetic uint8 data of N samples x 784 in an .npy, read by
rows through `data.source=file:`.

    python benchmarks/scale.py --sizes=100000,1000000 --by-rows   # the whole table (about 35 min)
    python benchmarks/scale.py --sizes=20000 --steps=200 --recipe-steps=400

For each size, a synthetic data set (10 clusters: uint8 centres plus noise) is written to an
uncompressed .npz (its x member written through a memory map), and each measurement runs in a fresh process that reports its own peak
resident memory (VmHWM):
- `train`: the VaDE reference network (784-500-500-2000, z 10, K 10) trains `--steps` steps at
  batch 256 with `parallel.stream` on (and off, up to `--memory-max` samples): steps/s over the
  log steps after the first, the run's seconds (with the evaluation of every sample at the end);
- `passes`: the host's gathering rate (rows a second, in batches of 512 random rows, as the
  streamed path gathers a step's batch and neighbours); the whole-data passes on the trained
  network's shape (random weights: the time does
  not depend on them): embeddings and predictions of every sample, and a diagonal GMM of 10
  components on the embeddings, gmvc (fit_diag_gmm, 50 k-means and 20 EM iterations) against
  scikit-learn's GaussianMixture with the same EM iterations;
- `recipe` (sizes up to `--recipe-max`): the default `cluster` recipe end to end, streamed, with
  `--recipe-steps` steps; its seconds, ACC on the synthetic labels, and the time of each line
  the run printed;
- `resume` (the largest size): the `train` run killed with SIGKILL after its first checkpoint and
  resumed, against the same run uninterrupted: whether the parameters are bit-identical.

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
import io
import json
import pathlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: KB


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


def vmhwm_mb():
    """This process's peak resident memory (VmHWM), in MB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(peak_rss_mb(), 1)


def write_data(path, n, dim=784, k=10, seed=0):
    """An uncompressed .npz at `path`: x [n, dim] uint8 (10 centres plus noise, written through a
    memory map) and y, the centres' labels. gmvc reads its x member by rows."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, (k, dim))
    x_path = path.with_suffix(".x.npy")
    x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.uint8, shape=(n, dim))
    y = np.empty(n, np.int32)
    for start in range(0, n, 20_000):
        stop = min(start + 20_000, n)
        y[start:stop] = rng.integers(0, k, stop - start)
        x[start:stop] = np.clip(centres[y[start:stop]] + rng.normal(0, 40, (stop - start, dim)), 0, 255)
    x.flush()
    del x
    buf = io.BytesIO()
    np.save(buf, y)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        z.write(x_path, "x.npy")
        z.writestr("y.npy", buf.getvalue())
    x_path.unlink()


def reference_config(path, stream, steps, checkpoint_every=0):
    from gmvc import recipes
    c = recipes.vade(n_clusters=10, hidden_sizes=HIDDEN, steps=steps, pretrain_steps=1, batch_size=256,
                     likelihood="bernoulli", restarts=1, scaling="none")
    c.unlock()
    c.data.source = f"file:{path}"
    c.train.phases = ("main",)
    c.phases = {"main": {"kind": "train", "steps": -1}}
    c.train.log_every = max(1, steps // 8)
    c.train.checkpoint_every = checkpoint_every or steps
    c.tensorboard.enabled = False
    c.parallel.stream = stream
    c.lock()
    return c


def child_train(a):
    from gmvc.trainer import train_and_evaluate
    workdir = pathlib.Path(a["workdir"])
    c = reference_config(a["path"], a["stream"], a["steps"], a.get("checkpoint_every", 0))
    t0 = time.time()
    train_and_evaluate(c, workdir, echo=lambda *a, **k: None, write_outputs=False)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_sec"] for r in rows if r.get("phase") == "main"][1:]
    return {"steps_per_sec": round(float(np.median(rates)), 2), "run_seconds": round(time.time() - t0, 1)}


def child_passes(a):
    import jax
    from sklearn.mixture import GaussianMixture
    from gmvc.core.batching import make_embed, make_predict
    from gmvc.core.mixture_init import fit_diag_gmm
    from gmvc.data import load_dataset
    from gmvc.models import make_model
    c = reference_config(a["path"], "on", 8)
    x = load_dataset(c.data, 0).x.stored()                 # uint8 rows, read from the file
    model = make_model(c.model, x.shape[1:])
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    t0 = time.time()
    for _ in range(200):                                  # what the streamed path gathers a step
        np.take(x, rng.integers(0, len(x), 512), axis=0)
    out = {"gather_rows_per_sec": round(200 * 512 / (time.time() - t0)),
           "rows_read_from": "file" if hasattr(x.source, "path") else "memory"}
    t0 = time.time()
    z = make_embed(model, 1024)(params, x)
    out["embed_seconds"] = round(time.time() - t0, 1)
    t0 = time.time()
    make_predict(model, 1024)(params, x)
    out["predict_seconds"] = round(time.time() - t0, 1)
    zj = jax.numpy.asarray(z)
    jax.block_until_ready(fit_diag_gmm(jax.random.key(0), zj, 10, kmeans_iters=50, em_iters=20))  # compiles
    t0 = time.time()
    jax.block_until_ready(fit_diag_gmm(jax.random.key(1), zj, 10, kmeans_iters=50, em_iters=20))
    out["gmm_gmvc_seconds"] = round(time.time() - t0, 1)
    t0 = time.time()
    GaussianMixture(10, covariance_type="diag", max_iter=20, tol=0, reg_covar=1e-4, random_state=0).fit(z)
    out["gmm_sklearn_seconds"] = round(time.time() - t0, 1)
    return out


def child_recipe(a):
    from gmvc import recipes
    from gmvc.trainer import train_and_evaluate
    c = recipes.cluster(10, steps=a["steps"])
    c.unlock()
    c.data.source, c.parallel.stream, c.tensorboard.enabled = f"file:{a['path']}", "on", False
    c.lock()
    t0, lines = time.time(), []
    echo = lambda *m, **k: lines.append([round(time.time() - t0, 1), " ".join(map(str, m))[:160]])
    summary = train_and_evaluate(c, pathlib.Path(a["workdir"]), echo=echo, write_outputs=False)
    return {"seconds": round(time.time() - t0, 1), "acc": summary.get("acc"), "log": lines}


BY_ROWS = False
HIDDEN = (500, 500, 2000)         # the VaDE reference network's hidden layers
CHILDREN = {"train": child_train, "passes": child_passes, "recipe": child_recipe}


def run_child(kind, **a):
    """One measurement in a fresh process: its result and its peak resident memory."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps({"kind": kind, "by_rows": BY_ROWS,
                                                                            "hidden": HIDDEN, **a})],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{kind} {a}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def resume_check(path, steps, tmp):
    """(bit-identical?, seconds): the train run at `path` killed with SIGKILL once it has a
    checkpoint, resumed, against the same run uninterrupted."""
    import jax
    from gmvc.run.restore import load_trained
    every = max(1, steps // 8) * 2
    run_child("train", path=str(path), stream="on", steps=steps, workdir=str(tmp / "straight"), checkpoint_every=every)
    workdir = tmp / "killed"
    cmd = [sys.executable, __file__, "--child", json.dumps({"kind": "train", "by_rows": BY_ROWS, "hidden": HIDDEN,
                                                             "path": str(path),
                                                             "stream": "on",
                                                             "steps": steps, "workdir": str(workdir),
                                                             "checkpoint_every": every})]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    saved = lambda: any(d.name.isdigit() for d in (workdir / "checkpoints").glob("*"))
    while proc.poll() is None and not ((workdir / "checkpoints").exists() and saved()):
        time.sleep(0.2)
    time.sleep(1.0)                                  # into the steps after the first checkpoint
    killed_at = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = round(time.time() - t0, 1)
    run_child("train", path=str(path), stream="on", steps=steps, workdir=str(workdir), checkpoint_every=every)
    a = jax.tree.leaves(load_trained(tmp / "straight").params)
    b = jax.tree.leaves(load_trained(workdir).params)
    same = len(a) == len(b) and all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a, b))
    return {"killed_after_seconds": killed_at, "bit_identical": bool(same)}


def main(argv=None):
    global BY_ROWS, HIDDEN
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100000", help="data set sizes, e.g. 100000,1000000")
    p.add_argument("--steps", type=int, default=800, help="training steps of the train runs")
    p.add_argument("--memory-max", type=int, default=100_000, help="largest size also trained in memory")
    p.add_argument("--recipe-steps", type=int, default=1600)
    p.add_argument("--recipe-max", type=int, default=100_000, help="largest size the recipe runs on")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--by-rows", action="store_true",
                   help="read every size from the file by rows (default: files up to 256 MB are loaded)")
    p.add_argument("--knn", default="", help="sizes to time the neighbour search at, e.g. 100000,1000000")
    p.add_argument("--exact-max", type=int, default=100_000)
    p.add_argument("--hidden", default="500,500,2000", help="the network's hidden layers (a quick check: 32)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    if args.child:
        a = json.loads(args.child)
        if a.pop("by_rows", False):
            from gmvc.data import rows
            rows.LAZY_ABOVE_BYTES = 0
        HIDDEN = tuple(a.pop("hidden", HIDDEN))
        out = CHILDREN[a.pop("kind")](a)
        out["peak_rss_mb"] = vmhwm_mb()
        print(json.dumps(out), flush=True)
        return out
    BY_ROWS, HIDDEN = args.by_rows, tuple(int(h) for h in args.hidden.split(","))
    out = {"dim": 784, "batch_size": 256, "steps": args.steps, "by_rows": args.by_rows}
    for n in [int(v) for v in args.knn.split(",") if v]:
        out[f"knn_{n}"] = time_knn(n, args.exact_max)
        print(json.dumps({f"knn_{n}": out[f"knn_{n}"]}), file=sys.stderr, flush=True)
    sizes = [int(float(v)) for v in args.sizes.split(",") if v]
    with tempfile.TemporaryDirectory(dir=os.environ.get("GMVC_SCALE_DIR")) as tmp:
        tmp = pathlib.Path(tmp)
        for n in sizes:
            path = tmp / f"synthetic_{n}.npz"
            t0 = time.time()
            write_data(path, n)
            res = {"data_mb": round(path.stat().st_size / 2 ** 20, 1), "write_seconds": round(time.time() - t0, 1)}
            for stream in ("on", "off") if n <= args.memory_max else ("on",):
                res[f"train_stream_{stream}"] = run_child("train", path=str(path), stream=stream, steps=args.steps,
                                                          workdir=str(tmp / f"train_{n}_{stream}"))
                print(json.dumps({n: res}), file=sys.stderr, flush=True)
            if n <= args.memory_max:
                res["streamed_over_in_memory"] = round(res["train_stream_on"]["steps_per_sec"]
                                                       / res["train_stream_off"]["steps_per_sec"], 3)
            res["passes"] = run_child("passes", path=str(path))
            print(json.dumps({n: res}), file=sys.stderr, flush=True)
            if n <= args.recipe_max:
                res["recipe"] = run_child("recipe", path=str(path), steps=args.recipe_steps,
                                          workdir=str(tmp / f"recipe_{n}"))
                print(json.dumps({n: res}), file=sys.stderr, flush=True)
            if n == max(sizes) and not args.no_resume:
                res["resume"] = resume_check(path, args.steps, tmp / f"resume_{n}")
            out[str(n)] = res
            path.unlink()
    if len(sizes) > 1:
        lo, hi = str(min(sizes)), str(max(sizes))
        out["streamed_peak_rss_growth_mb"] = round(out[hi]["train_stream_on"]["peak_rss_mb"]
                                                   - out[lo]["train_stream_on"]["peak_rss_mb"], 1)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
