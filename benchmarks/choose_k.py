"""Choosing the number of clusters K: the K each method finds on the 19 development sets, per set and seed.

    python benchmarks/choose_k.py --suite=/work/suite-data --seeds=3 --table > choose_k_peers.json
    python benchmarks/choose_k.py --suite=DIR --sets=iris,crabs --seeds=1 --table=choose_k.md
    python benchmarks/choose_k.py --suite=DIR --seeds=3 --gmvc --out=choose_k.json   # adds gmvc with K given

The sets: the six of benchmarks/quality.py's --dev (spiral, moons, iris, breast_cancer, digits,
mnist5k; written to .npz and read back through `file:` as quality.py does) and the 13 of the
suite (--suite=DIR, else $GMVC_SUITE_DIR; benchmarks/suite.py, each checked against its
manifest). --sets=a,b picks some of them. The peers read the arrays as quality.py's baselines do:
flattened, as stored (the suite's sets standardized, images in [0, 1], 8-bit data as value / 255),
with no further scaling; where a set has more than 10 features it is reduced to its first 10
principal components (PCA, full SVD, once per set; its seconds are added to each peer's). The
peers run with one BLAS and OpenMP thread (threadpoolctl): on a shared 2-core machine two threads
made small fits 10-20 times slower. K_true,
the set's number of classes, bounds the search of `bic` and `dpgmm` and nothing else; the labels
only score.

Methods (--methods=a,b; default bic,dpgmm,hdbscan; --gmvc adds gmvc_given):
- bic: scikit-learn's GaussianMixture, full covariance, the best of 10 inits (quality.py's full-GMM
  peer; where its default reg_covar 1e-6 leaves a covariance singular, again with 1e-3), fitted for
  K = 1..2*K_true on the reduced data; found K: the lowest BIC. ACC: that fit's predict.
- dpgmm: BayesianGaussianMixture, a Dirichlet process with 2*K_true components, full covariance,
  weight_concentration_prior 1/(2*K_true), max_iter 500, one init, on the reduced data (reg_covar
  fallback as bic); found K: the components that predict assigns at least 1% of the samples to.
  ACC: its predict, every component included.
- hdbscan: sklearn.cluster.HDBSCAN, min_cluster_size = max(5, N // 100), its other settings the
  defaults, on the reduced data (deterministic: the seeds repeat it); found K: the clusters, noise
  (label -1) excluded. ACC: noise points count as wrong (a cluster of their own matched to no class).
- gmvc_given: gmvc's configs/cluster.py with model.num_clusters = K_true, run as quality.py runs it
  (its load_config and run_gmvc) on the set's .npz; found K: the clusters holding any sample. ACC:
  the run's. It is slow, so off unless --gmvc.

ACC is the Hungarian accuracy (gmvc.core.metrics.hungarian_accuracy): a one-to-one matching of
found clusters to classes, so clusters beyond K_true, or classes beyond the found K, score nothing.
Per (set, seed) and method: found k, exact (k == K_true), within_one (|k - K_true| <= 1), acc,
seconds. Summary per method over all its (set, seed) runs: exact share, within-one share, mean ACC,
mean seconds. A new method is a function (job, seed) -> (found K, ACC) added to METHODS.

Prints one JSON object on stdout (and to --out if given); progress, one line per set and method,
goes to stderr. --table writes a Markdown table (the summary, then per set each method's found K
per seed and mean ACC) to stderr, or to the file --table=PATH.
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.append(str(ROOT / "benchmarks"))     # quality.py and suite.py beside this file

import quality  # noqa: E402
import suite  # noqa: E402
from gmvc.core.metrics import hungarian_accuracy  # noqa: E402
from gmvc.data import load_dataset  # noqa: E402

MAX_DIMS, N_INIT, DP_FLOOR = 10, 10, 0.01
CLUSTER = str(ROOT / "configs" / "cluster.py")


def acc_with_noise(pred, y):
    """Hungarian ACC over all samples, points labelled -1 (noise) counted wrong."""
    keep = pred >= 0
    return hungarian_accuracy(pred[keep], y[keep]) * keep.mean() if keep.any() else 0.0


def fit_gmm(make, z):
    """make(reg_covar) fitted on z; with reg_covar 1e-3 where the default leaves a covariance singular."""
    try:
        return make(1e-6).fit(z)
    except ValueError:
        return make(1e-3).fit(z)


def bic(job, seed):
    from sklearn.mixture import GaussianMixture
    z, fits = job["z"], {}
    for k in range(1, 2 * job["k"] + 1):
        fits[k] = fit_gmm(lambda reg: GaussianMixture(k, covariance_type="full", n_init=N_INIT, reg_covar=reg,
                                                      random_state=seed), z)
    best = min(fits, key=lambda k: fits[k].bic(z))
    return best, hungarian_accuracy(fits[best].predict(z), job["y"])


def dpgmm(job, seed):
    from sklearn.mixture import BayesianGaussianMixture
    n = 2 * job["k"]
    model = fit_gmm(lambda reg: BayesianGaussianMixture(
        n_components=n, covariance_type="full", weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=1.0 / n, max_iter=500, reg_covar=reg, random_state=seed), job["z"])
    pred = model.predict(job["z"])
    found = int((np.bincount(pred, minlength=n) >= DP_FLOOR * len(pred)).sum())
    return found, hungarian_accuracy(pred, job["y"])


def hdbscan(job, seed):
    from sklearn.cluster import HDBSCAN
    pred = HDBSCAN(min_cluster_size=max(5, len(job["z"]) // 100), copy=True).fit_predict(job["z"])
    return int(len(set(pred.tolist()) - {-1})), acc_with_noise(pred, job["y"])


def gmvc_given(job, seed):
    config = quality.load_config(CLUSTER, job["overrides"] + job["extra"], seed)
    run = quality.run_gmvc(config, pathlib.Path(job["workdir"]) / job["name"] / f"seed{seed}", job["y"])
    return (0, 0.0) if run.get("nan") else (sum(s > 0 for s in run["cluster_sizes"]), run["acc"])


def gmvc_auto(job, seed):
    overrides = [o for o in job["overrides"] if not o.startswith("model.num_clusters=")] + ["choose_k.auto=True"]
    config = quality.load_config(CLUSTER, overrides + job["extra"], seed)
    workdir = pathlib.Path(job["workdir"]) / job["name"] / f"auto_seed{seed}"
    run = quality.run_gmvc(config, workdir, job["y"])
    if run.get("nan"):
        return 0, 0.0
    found = json.loads((workdir / "results.json").read_text())["choose_k"]
    job.setdefault("auto_records", {})[seed] = {"live": found["k"], "path": [p["k"] for p in found["path"]],
                                                "weak_moves": found["weak_moves"]}
    return sum(s > 0 for s in run["cluster_sizes"]), run["acc"]


METHODS = {"bic": bic, "dpgmm": dpgmm, "hdbscan": hdbscan, "gmvc_given": gmvc_given, "gmvc_auto": gmvc_auto}
PEERS = ("bic", "dpgmm", "hdbscan")      # these read the reduced data; the PCA's seconds are theirs too


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", default=None, metavar="DIR", help="the suite's directory (default: $GMVC_SUITE_DIR)")
    p.add_argument("--seeds", type=int, default=3, help="seeds first..first+N-1")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--sets", default="", help="only these of the 19 sets (comma-separated)")
    p.add_argument("--methods", default=",".join(PEERS), help=f"comma-separated, of {list(METHODS)}")
    p.add_argument("--gmvc", action="store_true", help="add gmvc_given (gmvc's cluster recipe with K given; slow)")
    p.add_argument("--auto", action="store_true", help="add gmvc_auto (the cluster recipe with model.num_clusters=auto)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override of the gmvc runs (repeatable), e.g. choose_k.during=all")
    p.add_argument("--out", default="", help="also write the JSON object to this file")
    p.add_argument("--table", nargs="?", const="-", default="", metavar="PATH",
                   help="a Markdown table to stderr (alone) or to PATH")
    args = p.parse_args(argv)
    args.methods = list(dict.fromkeys([m for m in args.methods.split(",") if m] + ["gmvc_given"] * args.gmvc
                                      + ["gmvc_auto"] * args.auto))
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    return args


def jobs(args, folder):
    """Per chosen set: name, kind, K_true, its .npz's overrides for gmvc, the flat data and labels."""
    try:
        root = suite.suite_dir(args.suite)
        manifest = suite.read_manifest(root)
    except suite.SuiteError as e:
        raise SystemExit(f"choose_k.py: {e}")
    chosen = [n for n in args.sets.split(",") if n] or list(quality.DEV_SETS) + list(manifest)
    unknown = sorted(set(chosen) - set(quality.DEV_SETS) - set(manifest))
    if unknown:
        raise SystemExit(f"choose_k.py: unknown set(s) {unknown}; known: {list(quality.DEV_SETS) + list(manifest)}")
    out = []
    for name, _, overrides in quality.dev_jobs([n for n in quality.DEV_SETS if n in chosen], folder):
        data = load_dataset(quality.load_config(CLUSTER, overrides, 0).data, 0)
        out.append({"name": name, "kind": quality.DEV_KINDS[name], "k": quality.DEV_SETS[name],
                    "overrides": overrides, "x": np.asarray(data.x.reshape(len(data.x), -1), np.float64),
                    "y": data.y})
    try:
        names = [n for n in manifest if n in chosen]
        sets = suite.load_suite(root, names) if names else {}
    except suite.SuiteError as e:
        raise SystemExit(f"choose_k.py: {e}")
    for name, s in sets.items():
        out.append({"name": name, "kind": s.kind, "k": s.num_clusters, "y": s.y,
                    "x": s.x.reshape(len(s.x), -1).astype(np.float64),
                    "overrides": [f"data.source=file:{s.path}", f"model.num_clusters={s.num_clusters}"]})
    order = {n: i for i, n in enumerate(chosen)}
    return sorted(out, key=lambda j: order[j["name"]]), str(root)


def reduce(x):
    """x, or its first MAX_DIMS principal components where it is wider; the seconds it took."""
    from sklearn.decomposition import PCA
    t0 = time.time()
    z = PCA(MAX_DIMS, svd_solver="full").fit_transform(x) if x.shape[1] > MAX_DIMS else x
    return z, time.time() - t0


def summary(results, methods):
    out = {}
    for m in methods:
        runs = [r for s in results for r in s["runs"].get(m, [])]
        if runs:
            out[m] = {"runs": len(runs), "exact": round(float(np.mean([r["exact"] for r in runs])), 4),
                      "within_one": round(float(np.mean([r["within_one"] for r in runs])), 4),
                      "acc_mean": round(float(np.mean([r["acc"] for r in runs])), 4),
                      "seconds_mean": round(float(np.mean([r["seconds"] for r in runs])), 2)}
    return out


def table(result):
    methods = list(result["summary"])
    lines = ["| method | runs | exact | within one | mean ACC | mean s |", "| --- | --- | --- | --- | --- | --- |"]
    for m, s in result["summary"].items():
        lines.append(f"| {m} | {s['runs']} | {s['exact']:.2f} | {s['within_one']:.2f} | {s['acc_mean']:.3f} "
                     f"| {s['seconds_mean']:.1f} |")
    lines += ["", "| set | N | K | " + " | ".join(f"{m} K (ACC)" for m in methods) + " |",
              "| --- | --- | --- |" + " --- |" * len(methods)]
    for s in result["sets"]:
        cells = [",".join(str(r["k"]) for r in s["runs"][m]) + f" ({np.mean([r['acc'] for r in s['runs'][m]]):.3f})"
                 for m in methods]
        lines.append(f"| {s['set']} | {s['N']} | {s['K']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings("ignore")      # convergence warnings of the mixtures
    from threadpoolctl import threadpool_limits
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    cache = None
    if {"gmvc_given", "gmvc_auto"} & set(args.methods):
        from gmvc.run.cache import enable_compilation_cache
        cache = enable_compilation_cache()  # as quality.py: later seeds load the compiled programs
    results = []
    with tempfile.TemporaryDirectory(prefix="gmvc_choose_k_") as tmp:
        chosen, root = jobs(args, pathlib.Path(tmp) / "data")
        for job in chosen:
            job["workdir"], job["extra"] = tmp, list(args.override)
            with threadpool_limits(1):
                job["z"], pca_seconds = reduce(job["x"]) if set(PEERS) & set(args.methods) else (None, 0.0)
            entry = {"set": job["name"], "kind": job["kind"], "N": len(job["x"]), "D": job["x"].shape[1],
                     "K": job["k"], "peer_dims": None if job["z"] is None else job["z"].shape[1],
                     "pca_seconds": round(pca_seconds, 2), "runs": {}}
            for m in args.methods:
                runs = []
                for seed in seeds:
                    t0 = time.time()
                    with threadpool_limits(1 if m in PEERS else None):
                        k, acc = METHODS[m](job, seed)
                    seconds = time.time() - t0 + (pca_seconds if m in PEERS else 0.0)
                    runs.append({"seed": seed, "k": int(k), "exact": int(k) == job["k"],
                                 "within_one": abs(int(k) - job["k"]) <= 1, "acc": round(float(acc), 4),
                                 "seconds": round(seconds, 2)})
                entry["runs"][m] = runs
                if m == "gmvc_auto":
                    entry["auto_records"] = job.get("auto_records", {})
                print(f"{job['name']} (K={job['k']}) {m}: k={[r['k'] for r in runs]} acc={[r['acc'] for r in runs]} "
                      f"s={[r['seconds'] for r in runs]}", file=sys.stderr, flush=True)
            results.append(entry)
    out = {"suite_dir": root, "seeds": args.seeds, "first_seed": args.first_seed, "methods": args.methods,
           "peer_max_dims": MAX_DIMS, "bic_n_init": N_INIT, "dpgmm_floor": DP_FLOOR,
           "hdbscan_min_cluster_size": "max(5, N // 100)", "compilation_cache": cache, "overrides": args.override,
           "summary": summary(results, args.methods), "sets": results}
    print(json.dumps(out), flush=True)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    if args.table:
        md = table(out)
        if args.table == "-":
            print(md, file=sys.stderr, flush=True)
        else:
            pathlib.Path(args.table).write_text(md + "\n")
    return out


if __name__ == "__main__":
    main()
