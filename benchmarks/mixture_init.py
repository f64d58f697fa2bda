"""Time and peak memory of the mixture initialisation from embeddings, against scikit-learn.

    python benchmarks/mixture_init.py                       # N = 1e4, 1e5, 1e6; D = K = 10
    python benchmarks/mixture_init.py --sizes=1e4,1e5 --reps=2 --out=mixture_init.json

Prints one JSON object on stdout; progress on stderr. Data: K Gaussian blobs in D dimensions
(means ~ N(0, 3^2), unit spread), float32, generated in each worker from the seed.

Methods (each (method, N) runs in a fresh subprocess):
- gmvc_em: gmvc.core.mixture_init.fit_diag_gmm on all N embeddings (what an init_prior phase with
  method "em" runs): k-means++, at most --kmeans-iters Lloyd and --em-iters EM iterations (both stop
  early only at an exact fixed point, which gives the same result), --n-init fits.
- gmvc_minibatch: the "minibatch" method as gmvc/trainer.py runs it: a random subsample of
  200 x 128 embeddings, k-means, hard moments (no EM).
- sklearn_same_iters: GaussianMixture(covariance_type="diag", n_init, max_iter=--em-iters, tol=0,
  reg_covar=1e-4 = gmvc's variance floor): the same EM iterations; its k-means init
  (KMeans, n_init=1, up to 300 iterations, tol 1e-4) is not configurable from GaussianMixture.
- sklearn_default: GaussianMixture with its defaults (tol 1e-3: stops when the bound stalls).

Time: compile (gmvc: lower + compile) separately; fit seconds best and median of --reps.
Memory ("peak_rss_increase_mb"): the worker creates the data (and puts it on the device for
gmvc), compiles, then resets the kernel's peak-RSS mark (writing 5 to /proc/self/clear_refs)
and reads VmHWM after the fits: the peak resident memory the fit adds to a process that already
holds the embeddings. gmvc also reports XLA's temporary-buffer size for the compiled fit.
Quality: mean log-likelihood per point of each fitted mixture (same float64 scorer for all) and
clustering accuracy (Hungarian) of the MAP component against the blob labels.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("gmvc_em", "gmvc_minibatch", "sklearn_same_iters", "sklearn_default")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def blobs(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    means = (3.0 * rng.standard_normal((k, d))).astype(np.float32)
    y = rng.integers(0, k, n)
    z = rng.standard_normal((n, d), dtype=np.float32)
    z += means[y]
    return z, y


def vm_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def score(prior, z, y, k):
    """Mean log-likelihood (float64, in chunks) and Hungarian accuracy of the MAP component."""
    from gmvc.core.metrics import clustering_report
    logits, means, log_vars = (np.asarray(prior[n], np.float64) for n in ("logits", "means", "log_vars"))
    log_pi = logits - np.logaddexp.reduce(logits)
    ll, pred = 0.0, []
    for s in range(0, len(z), 65536):
        zc = z[s:s + 65536].astype(np.float64)
        lj = log_pi - 0.5 * np.sum(np.log(2 * np.pi) + log_vars + (zc[:, None] - means) ** 2 * np.exp(-log_vars), -1)
        ll += np.logaddexp.reduce(lj, 1).sum()
        pred.append(lj.argmax(1))
    return {"mean_log_likelihood": round(ll / len(z), 5),
            "acc": round(clustering_report(np.concatenate(pred), y)["acc"], 5)}


def worker(args):
    z, y = blobs(args.n, args.dim, args.k)
    out = {"method": args.method, "n": args.n}
    if args.method.startswith("gmvc"):
        import jax
        import jax.numpy as jnp
        from gmvc.core.mixture_init import fit_diag_gmm
        z_dev = jax.device_put(z)
        if args.method == "gmvc_em":
            fit = lambda r, z: fit_diag_gmm(r, z, args.k, args.kmeans_iters, args.em_iters, args.n_init)
        else:
            m = min(args.n, 200 * 128)
            def fit(r, z):        # EmbeddingPhases.init_prior's "minibatch": a permutation, then em_iters ignored
                idx = jax.random.permutation(jax.random.fold_in(r, 0), z.shape[0])[:m]
                return fit_diag_gmm(jax.random.fold_in(r, 1), jnp.take(z, idx, 0), args.k, args.kmeans_iters, 0,
                                    args.n_init)
        t0 = time.perf_counter()
        compiled = jax.jit(fit).lower(jax.random.key(0), z_dev).compile()
        out["compile_seconds"] = round(time.perf_counter() - t0, 2)
        out["xla_temp_mb"] = round(compiled.memory_analysis().temp_size_in_bytes / 1e6, 2)
        run = lambda: jax.device_get(compiled(jax.random.key(0), z_dev))
    else:
        from sklearn.mixture import GaussianMixture
        kw = dict(max_iter=args.em_iters, tol=0.0) if args.method == "sklearn_same_iters" else {}
        reg = {"reg_covar": 1e-4} if args.method == "sklearn_same_iters" else {}

        def run():
            g = GaussianMixture(args.k, covariance_type="diag", n_init=args.n_init, random_state=0, **kw, **reg).fit(z)
            out["sklearn_em_iterations"] = int(g.n_iter_)
            return {"logits": np.log(g.weights_), "means": g.means_, "log_vars": np.log(g.covariances_)}
    base_kb = vm_kb("VmRSS")
    out["peak_method"] = "VmHWM after reset" if reset_peak() else "ru_maxrss (peak could not be reset)"
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        prior = run()
        times.append(time.perf_counter() - t0)
        if times[-1] > args.max_seconds:
            break
    peak_kb = vm_kb("VmHWM")
    out.update({"fit_seconds_best": round(min(times), 3), "fit_seconds_median": round(statistics.median(times), 3),
                "fits_timed": len(times), "rss_with_data_mb": round(base_kb / 1024, 1),
                "peak_rss_increase_mb": round((peak_kb - base_kb) / 1024, 1),
                "embeddings_mb": round(z.nbytes / 2**20, 1)})
    out.update(score(prior, z, y, args.k))
    print(json.dumps(out), flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1e4,1e5,1e6")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--kmeans-iters", type=int, default=50)
    p.add_argument("--em-iters", type=int, default=20)
    p.add_argument("--n-init", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=20.0, help="stop repeating once a fit takes longer")
    p.add_argument("--out", default="")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        args.method, args.n = args.worker[0], int(float(args.worker[1]))
        return worker(args)
    common = [f"--dim={args.dim}", f"--k={args.k}", f"--kmeans-iters={args.kmeans_iters}", f"--em-iters={args.em_iters}",
              f"--n-init={args.n_init}", f"--reps={args.reps}", f"--max-seconds={args.max_seconds}"]
    results = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        for method in args.methods.split(","):
            proc = subprocess.run([sys.executable, __file__, "--worker", method, str(n), *common], capture_output=True,
                                  text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if proc.returncode:
                raise SystemExit(f"mixture_init.py: {method} at N={n} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            log(f"N={n} {method}: {r['fit_seconds_best']} s, +{r['peak_rss_increase_mb']} MB peak, "
                f"ll {r['mean_log_likelihood']}, acc {r['acc']}")
    out = {"benchmark": "mixture_init", "dim": args.dim, "k": args.k, "kmeans_iters": args.kmeans_iters,
           "em_iters": args.em_iters, "n_init": args.n_init, "cpu_count": os.cpu_count(),
           "load_average_at_start": os.getloadavg(), "results": results}
    print(json.dumps(out), flush=True)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
