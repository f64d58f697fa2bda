"""Whether two checkouts of gmvc train bit-identical parameters.

    python benchmarks/same_params.py --tree=/tmp/before --out=/tmp/params_before   # train and save
    python benchmarks/same_params.py --tree=/work/main --out=/tmp/params_after
    python benchmarks/same_params.py --compare /tmp/params_before /tmp/params_after

Training runs each case (a recipe with few steps) under each layout (single; shard_map and
pmap on 4 fake CPU devices) in a fresh process importing gmvc from --tree, and saves every
restart's parameters of the restored run to <out>/<case>-<layout>.npz (keys: the pytree paths)
and the step counts to <out>/results.json. --runs picks some of them (e.g. vade_digits-pmap).
--compare prints JSON per run (identical, max_abs_diff) and exits 1 if any run differs.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

CASES = {   # a recipe call, then dotted overrides (gmvc.config.apply_overrides)
    "vade_digits": ("recipes.vade_digits()",
                    {"train.steps": 160, "phases.pretrain.steps": 60, "train.log_every": 20,
                     "train.checkpoint_every": 160}),
    "cluster": ("recipes.cluster(steps=160, pretrain_steps=60)", {"data.source": "digits"}),
}
LAYOUTS = {"single": {"parallel.mode": "single"},
           "shard_map": {"parallel.mode": "shard_map", "parallel.devices": 4},
           "pmap": {"parallel.mode": "pmap", "parallel.devices": 4}}

CHILD = """
import json, pathlib, sys, tempfile
import jax, numpy as np
import gmvc
from gmvc import recipes
from gmvc.config import apply_overrides
from gmvc.models import make_model
from gmvc.run.restore import read_config, restore_stacked
from gmvc.trainer import train_and_evaluate
job = json.loads(sys.argv[1])
assert pathlib.Path(gmvc.__file__).resolve().is_relative_to(pathlib.Path(job["tree"]).resolve()), gmvc.__file__
config = eval(job["recipe"])
config.unlock()
apply_overrides(config, job["overrides"])
with tempfile.TemporaryDirectory() as workdir:
    summary = train_and_evaluate(config, workdir)
    resolved = read_config(workdir)
    model = make_model(resolved.model, tuple(summary["data_shape"]))
    stacked, step, _ = restore_stacked(resolved, workdir, model)
name = lambda k: str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
leaves = {"/".join(name(k) for k in path): np.asarray(a) for path, a in jax.tree_util.tree_flatten_with_path(stacked)[0]}
np.savez(job["npz"], **leaves)
json.dump({"steps": summary["steps"], "restored_step": int(step)}, open(job["npz"] + ".json", "w"))
"""


def train(tree, out, only):
    tree, out = pathlib.Path(tree).resolve(), pathlib.Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(tree), XLA_FLAGS="--xla_force_host_platform_device_count=4",
               GMVC_COMPILATION_CACHE="off", JAX_PLATFORMS="cpu")
    results = {}
    for case, (recipe, overrides) in CASES.items():
        for layout, parallel in LAYOUTS.items():
            run = f"{case}-{layout}"
            if only and run not in only:
                continue
            npz = out / f"{run}.npz"
            job = {"tree": str(tree), "recipe": recipe, "overrides": {**overrides, **parallel}, "npz": str(npz)}
            print(f"{run}: training ({tree})", file=sys.stderr, flush=True)
            t = time.time()
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job)], cwd=tree, env=env,
                                  stdout=sys.stderr)
            seconds = round(time.time() - t, 1)
            if done.returncode:
                sys.exit(f"{run}: failed (exit {done.returncode}) after {seconds} s")
            info = json.loads(pathlib.Path(f"{npz}.json").read_text())
            pathlib.Path(f"{npz}.json").unlink()
            results[run] = {**info, "seconds": seconds}
            print(f"{run}: {info['steps']} steps, {seconds} s", file=sys.stderr, flush=True)
    path = out / "results.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    summary = {"tree": str(tree), "runs": {**old.get("runs", {}), **results}}
    path.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def compare(a, b):
    a, b = pathlib.Path(a), pathlib.Path(b)
    steps = [json.loads((d / "results.json").read_text())["runs"] for d in (a, b)]
    report = {}
    for run in sorted({p.stem for d in (a, b) for p in d.glob("*.npz")}):
        if not (a / f"{run}.npz").exists() or not (b / f"{run}.npz").exists():
            report[run] = {"identical": False, "missing_in": str(b if (a / f"{run}.npz").exists() else a)}
            continue
        x, y = np.load(a / f"{run}.npz"), np.load(b / f"{run}.npz")
        same_keys = sorted(x.files) == sorted(y.files)
        same, diff = same_keys, 0.0
        for k in sorted(set(x.files) & set(y.files)):
            u, v = x[k], y[k]
            if u.shape != v.shape or u.dtype != v.dtype:
                same, diff = False, float("inf")
                continue
            same = same and u.tobytes() == v.tobytes()
            if u.size:
                diff = max(diff, float(np.max(np.abs(u.astype(np.float64) - v.astype(np.float64)))))
        st = [s.get(run, {}).get("steps") for s in steps]
        report[run] = {"identical": bool(same and st[0] == st[1]), "max_abs_diff": diff, "steps": st,
                       "leaves": len(x.files), **({} if same_keys else {"keys_differ": True})}
    ok = bool(report) and all(r["identical"] for r in report.values())
    print(json.dumps({"all_identical": ok, "runs": report}, indent=1))
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", help="checkout of gmvc to train with")
    p.add_argument("--out", help="directory for the parameters")
    p.add_argument("--runs", nargs="*", help="only these runs (<case>-<layout>)")
    p.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"))
    args = p.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if not (args.tree and args.out):
        p.error("give --tree and --out, or --compare DIR_A DIR_B")
    train(args.tree, args.out, set(args.runs or ()))


if __name__ == "__main__":
    main()
