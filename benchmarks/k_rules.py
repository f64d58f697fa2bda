"""Screening the rules of model.num_clusters=auto: the first round of moves replayed under many settings.

    python benchmarks/k_rules.py capture --suite=/work/suite-data --seeds=2 --out=k_states
    python benchmarks/k_rules.py screen --states=k_states --table
    python benchmarks/k_rules.py screen --states=k_states --start=1 --rounds=6 --table    # from K_init = 1

`capture` runs the `cluster` recipe with choose_k.auto on every set of benchmarks/choose_k.py (the
six --dev sets and the suite's 13; --sets=a,b for some) for each seed, up to the round of moves
that follows the first fit, and saves what that round reads (each training sample's encoder mean,
the fitted prior of K_max slots, the pin groups) with the set's labels and true K, one .npz per
(set, seed); the run stops there (a pretraining and a fit: seconds a set).

`screen` replays, on every saved state, two rounds of gmvc.core.k_moves.propose_moves under each
setting of RULES (a grid of the merge test, the NIW scale, alpha and the link floor) and prints
one JSON object: per rule, the share of (set, seed) states whose K comes out exact and within one,
and the mean Hungarian ACC of the moved partition of the embeddings (not of a trained run:
training after the moves changes both). --table prints a Markdown table to stderr. The labels only
score. A rule is chosen on all the states at once; the figures of a trained run at the chosen rule
come from `benchmarks/choose_k.py --auto`.
"""
import argparse
import json
import pathlib
import sys
import tempfile
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.append(str(ROOT / "benchmarks"))

import choose_k  # noqa: E402
import quality  # noqa: E402
from gmvc.core import k_moves  # noqa: E402
from gmvc.core.metrics import hungarian_accuracy  # noqa: E402

RULES = {
    **{f"valley r={r} links={l}": dict(merge_test="valley", merge_ratio=r, merge_links=l)
       for r in (0.5, 0.8) for l in (0.01, 0.03)},
    **{f"hastings scale={s} alpha={a} links={l}": dict(merge_test="hastings", niw_scale=s, alpha=a, merge_links=l)
       for s in (1.0, 5.0, 7.0, 10.0, 15.0, 30.0) for a in (1.0, 10.0) for l in (0.01, 0.02)},
}


class _Captured(Exception):
    pass


def capture(args):
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    real = k_moves.propose_moves
    with tempfile.TemporaryDirectory(prefix="gmvc_k_rules_") as tmp:
        jobs, _ = choose_k.jobs(args, pathlib.Path(tmp) / "data")
        for job in jobs:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                path = out / f"{job['name']}_s{seed}.npz"

                def grab(z, prior, groups, settings, step, moves=None, *, path=path, job=job):
                    np.savez(path, z=np.asarray(z, np.float32), groups=np.asarray(groups), y=np.asarray(job["y"]),
                             k=job["k"], **{f"prior_{k}": np.asarray(v) for k, v in prior.items()})
                    raise _Captured()
                k_moves.propose_moves = grab
                overrides = [o for o in job["overrides"] if not o.startswith("model.num_clusters=")] + [
                    "choose_k.auto=True"]
                try:
                    quality.run_gmvc(quality.load_config(choose_k.CLUSTER, overrides, seed),
                                     pathlib.Path(tmp) / job["name"] / str(seed), job["y"])
                except _Captured:
                    print(f"{job['name']} seed {seed}: {path}", file=sys.stderr, flush=True)
                finally:
                    k_moves.propose_moves = real


def replay(path, settings, rounds=2, start=0):
    """(K found, true K, ACC) of `rounds` rounds of moves on a captured state; start=1: from one
    component (the embeddings' mean and variance, the other slots retired) instead of the fit."""
    with np.load(path) as f:
        z = f["z"].astype(np.float64)
        prior = {k: f[f"prior_{k}"] for k in ("logits", "means", "log_vars")}
        groups, y, k_true = f["groups"], f["y"], int(f["k"])
    if start == 1:
        prior = {"logits": np.full_like(prior["logits"], k_moves.DEAD), "means": prior["means"].copy(),
                 "log_vars": prior["log_vars"].copy()}
        prior["logits"][0], prior["means"][0], prior["log_vars"][0] = 0.0, z.mean(0), np.log(z.var(0) + 1e-4)
        groups = np.zeros(len(z), np.int64)
    for r in range(rounds):
        prior, groups, _ = k_moves.propose_moves(z, prior, groups, settings, r)
    live = k_moves.active_slots(prior["logits"])
    return int(live.sum()), k_true, hungarian_accuracy(k_moves._hard(z, prior, live), y[:len(z)])


def screen(args):
    states = sorted(pathlib.Path(args.states).glob("*.npz"))
    if not states:
        raise SystemExit(f"k_rules.py: no captured states in {args.states} (run `capture` first)")
    out = {"states": [s.stem for s in states], "rules": {}}
    for name, kw in RULES.items():
        if args.rules not in name:
            continue
        found = [replay(s, k_moves.Settings(**kw), args.rounds, args.start) for s in states]
        out["rules"][name] = {
            "exact": round(float(np.mean([k == t for k, t, _ in found])), 4),
            "within_one": round(float(np.mean([abs(k - t) <= 1 for k, t, _ in found])), 4),
            "acc_mean": round(float(np.mean([a for *_, a in found])), 4),
            "k": {s.stem: [k, t] for s, (k, t, _) in zip(states, found)}}
        print(f"{name}: {out['rules'][name]['exact']} {out['rules'][name]['within_one']}", file=sys.stderr, flush=True)
    print(json.dumps(out))
    if args.table:
        lines = ["| rule | exact | within one | ACC of the moved partition |", "| --- | --- | --- | --- |"]
        lines += [f"| {n} | {r['exact']:.2f} | {r['within_one']:.2f} | {r['acc_mean']:.3f} |"
                  for n, r in out["rules"].items()]
        print("\n".join(lines), file=sys.stderr)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("capture", "screen"))
    p.add_argument("--suite", default=None, metavar="DIR")
    p.add_argument("--sets", default="")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--out", default="k_states", help="capture: the folder of the states")
    p.add_argument("--states", default="k_states", help="screen: the folder of the states")
    p.add_argument("--table", action="store_true")
    p.add_argument("--start", type=int, default=0, choices=(0, 1),
                   help="screen: 0 from the over-clustered fit (K_max groups), 1 from one component")
    p.add_argument("--rounds", type=int, default=2, help="screen: rounds of moves replayed")
    p.add_argument("--rules", default="", help="screen: only the rules whose name contains this")
    args = p.parse_args(argv)
    args.methods = []
    warnings.filterwarnings("ignore")
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    return capture(args) if args.what == "capture" else screen(args)


if __name__ == "__main__":
    main()
