"""Seconds a fit of `gmvc.VaDE(n_clusters=K)` costs, with the defaults, as a user's first and
second fit on the same data: cold (an empty compilation cache, as after install) and warm (the
cache the cold fit filled), each in a fresh Python process, so that nothing compiled in memory
carries over. The data are the suite's sets (benchmarks/suite.py) or .npz files with `x`, `y`.

    python benchmarks/fit_cost.py --suite=DIR --sets=crabs,penguins [--out=cost.json]
    python benchmarks/fit_cost.py data.npz --clusters=3

Prints one JSON object per set: N, the sample shape, K, cold and warm seconds (the fit's wall
time inside its process, import excluded), the training steps and ACC of the warm fit (labels
only score it). Run it with the machine to itself: seconds are wall time.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent

ONE_FIT = """
import json, sys, time
import numpy as np
d = np.load(sys.argv[1])
x, y, k = d["x"], d["y"], int(sys.argv[2])
import gmvc
from gmvc.core.metrics import hungarian_accuracy
t0 = time.time()
est = gmvc.VaDE(n_clusters=k, random_state=0, progress=False).fit(x)
print(json.dumps({"seconds": round(time.time() - t0, 2), "steps": int(est.n_iter_),
                  "acc": round(float(hungarian_accuracy(est.labels_, y)), 4)}))
"""


def fit_once(path, k, cache):
    env = {**os.environ, "GMVC_COMPILATION_CACHE": str(cache)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", ONE_FIT, str(path), str(k)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"fit_cost.py: the fit of {path} failed: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def jobs(args):
    """(name, path, K, sample shape, N) per set to fit."""
    if args.suite is None:
        if not args.files or not args.clusters:
            raise SystemExit("fit_cost.py: give --suite=DIR, or .npz files and --clusters=K")
        import numpy as np
        out = []
        for f in args.files:
            x = np.load(f)["x"]
            out.append((pathlib.Path(f).stem, pathlib.Path(f), args.clusters, list(x.shape[1:]), len(x)))
        return out
    sys.path.insert(0, str(HERE))
    import suite
    try:
        root = suite.suite_dir(args.suite)
        manifest = suite.read_manifest(root)
        chosen = [n for n in args.sets.split(",") if n] or list(manifest)
        unknown = sorted(set(chosen) - set(manifest))
        if unknown:
            raise SystemExit(f"fit_cost.py: unknown set(s) {unknown}; known: {list(manifest)}")
        sets = suite.load_suite(root, chosen)
    except suite.SuiteError as e:
        raise SystemExit(f"fit_cost.py: {e}")
    return [(n, s.path, s.num_clusters, list(manifest[n]["shape"]), manifest[n]["N"]) for n, s in sets.items()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="*", help=".npz files with x (and y)")
    p.add_argument("--clusters", type=int, default=0, help="K for the .npz files")
    p.add_argument("--suite", nargs="?", const="", default=None, metavar="DIR", help="the suite's sets")
    p.add_argument("--sets", default="", help="only these sets of --suite (comma-separated)")
    p.add_argument("--out", default="", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    results = []
    for name, path, k, shape, n in jobs(args):
        with tempfile.TemporaryDirectory(prefix="gmvc_cost_cache_") as cache:
            cold = fit_once(path, k, cache)
            warm = fit_once(path, k, cache)
        row = {"set": name, "N": n, "shape": shape, "K": k, "cold_seconds": cold["seconds"],
               "warm_seconds": warm["seconds"], "steps": warm["steps"], "acc": warm["acc"]}
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
