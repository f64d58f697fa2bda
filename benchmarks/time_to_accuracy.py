"""Time to a good clustering: wall time from the start of a run (data loading and compilation
included) until the default VaDE configs first reach a target accuracy.

    python benchmarks/time_to_accuracy.py                      # vade_digits to 0.80, vade_mnist5k to 0.70
    python benchmarks/time_to_accuracy.py --seeds=3 --out=tta.json
    python benchmarks/time_to_accuracy.py --config=configs/vade_digits.py --target=0.9
    python benchmarks/time_to_accuracy.py --cache       # with the command line's compilation cache

Prints one JSON object per config (one line each) on stdout, and all of them to --out if given;
progress goes to stderr.

The run is `python -m gmvc.main`'s own (gmvc.trainer.train_and_evaluate), unchanged. The
accuracy is evaluated on a fixed schedule: at the end of every init_prior phase (the run has a
clustering from its first mixture fit on) and at every log step (`train.log_every`) of the
phases that train the mixture (every train phase after the first init_prior phase), on every
sample, with the restart the run itself would choose at that point (train.restart_choice, scored
by the phase that trains next; no label involved). Labels only score that choice. `reached` is
the first check at or over the target; `reached_training` the first such log step of a train
phase (the schedule without the init checks). A curve point is [step, seconds, accuracy, phase].
The evaluation's own time is measured and taken out of the wall time, so the figure is the time
the run needed, not the time spent watching it. `reference_seconds` is a PyTorch
VaDE's (ClustPy 0.0.3, defaults) whole run on the same data and machine; the target is at most
a third of it.

By default gmvc's compilation cache is off and every program compiles, as in the first run of
a config on a machine (unless a cache was set for JAX itself, JAX_COMPILATION_CACHE_DIR, which
JAX then uses). With --cache the runs use the command line's cache (gmvc/run/cache.py), as
`python -m gmvc.main` does: a program an earlier run compiled (of this benchmark or any other
run, so even the first seed may find it) is loaded from disk; programs compiling in under
0.5 s are not stored. `compilation_cache` in the output names it (null: none).
"""
import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gmvc import trainer as train_lib  # noqa: E402
from gmvc.core import batching, metrics  # noqa: E402
from gmvc.data import load_dataset  # noqa: E402
from gmvc.eval import evaluators  # noqa: E402
from gmvc.eval.restarts import choose_restart  # noqa: E402
from gmvc.models import make_model  # noqa: E402
from gmvc.training.context import model_inputs  # noqa: E402
from gmvc.training.embedding_phases import EmbeddingPhases  # noqa: E402
from gmvc.training.phases import build_phases  # noqa: E402
from gmvc.training import parallel  # noqa: E402
from gmvc.training.program import Program  # noqa: E402
from quality import load_config  # noqa: E402  (benchmarks/quality.py, beside this script)

DEFAULTS = (("configs/vade_digits.py", 0.80), ("configs/vade_mnist5k.py", 0.70))
REFERENCE_SECONDS = {"digits": 70.0, "mnist5k": 210.0}     # ClustPy 0.0.3 VaDE, whole run, this machine


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", default=[], help="config file (repeatable; default: the VaDE pair)")
    p.add_argument("--target", action="append", type=float, default=[],
                   help="target accuracy, one per --config (default 0.80 digits, 0.70 mnist5k)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", default="", help="also write the results to this JSON file")
    p.add_argument("--cache", action="store_true",
                   help="use the command line's compilation cache (default: compile every program)")
    args = p.parse_args(argv)
    if not args.config:
        args.config, args.target = [c for c, _ in DEFAULTS], args.target or [t for _, t in DEFAULTS]
    if len(args.target) != len(args.config):
        p.error(f"give one --target per --config ({len(args.config)} configs, {len(args.target)} targets)")
    return args


class Watcher:
    """Scores the run at each check (the end of an init_prior phase, each log step of a train
    phase that trains the mixture); its own time is kept apart."""

    def __init__(self, config, data, target, t0):
        self.config, self.data, self.target = config, data, target
        self.t0 = t0                       # before the data were loaded
        self.eval_seconds = 0.0
        self.curve, self.reached, self.reached_training = [], None, None
        self.phases = build_phases(config)
        self.model = make_model(config.model, data.x.shape[1:])
        self.inputs = model_inputs(self.model, data)
        self.predict = batching.make_predict(self.model, config.eval.batch_size)
        self._runners = {}

    def __call__(self, step, phase, params, scored_by=None):
        """Score `params` after `phase`'s step `step`; the restart is chosen by `scored_by`'s
        objective (default `phase`: a train phase; after an init_prior phase, the next train one)."""
        t = time.perf_counter()
        scored_by = scored_by or phase
        if scored_by.name not in self._runners:
            self._runners[scored_by.name] = Program(self.config, self.model, scored_by, len(self.data.x),
                                                    parallel.make_layout(self.config.parallel))
        chosen, _ = choose_restart(self.config, self._runners[scored_by.name], self.model, params,
                                             self.inputs)
        out = self.predict(chosen, self.inputs)
        acc = metrics.hungarian_accuracy(np.argmax(out["log_gamma"], 1), self.data.y)
        self.eval_seconds += time.perf_counter() - t
        run_seconds = time.perf_counter() - self.t0 - self.eval_seconds
        self.curve.append([step, round(run_seconds, 2), round(acc, 4), phase.name])
        print(f"  step {step} ({phase.name}): acc {acc:.4f} at {run_seconds:.1f} s", file=sys.stderr, flush=True)
        point = {"step": step, "phase": phase.name, "seconds": round(run_seconds, 2), "acc": round(acc, 4)}
        if self.reached is None and acc >= self.target:
            self.reached = point
        if self.reached_training is None and acc >= self.target and phase.kind == "train":
            self.reached_training = point

    def after_init(self, phase, params):
        """The check at the end of init_prior phase `phase`: the restart chosen as the next
        train phase would score it."""
        later = [p for p in self.phases if p.start >= phase.end and p.kind == "train"]
        if later:
            self(phase.end, phase, params, scored_by=later[0])


def scored_phases(config):
    """The train phases that train the mixture: every one after the first init_prior phase (the
    last train phase when there is none)."""
    names = list(config.train.phases)
    kinds = [config.phases[n].kind for n in names]
    if "init_prior" not in kinds:
        return {[n for n, k in zip(names, kinds) if k == "train"][-1]} if names else {"main"}
    first = kinds.index("init_prior")
    return {n for n, k in zip(names[first:], kinds[first:]) if k == "train"}


def run_one(config, target, workdir):
    t0 = time.perf_counter()
    data = load_dataset(config.data, config.seed)
    if data.y is None:
        raise SystemExit(f"time_to_accuracy.py: {config.data.source!r} has no labels to score the runs with")
    scored = scored_phases(config)
    watcher = Watcher(config, data, target, t0)
    original = evaluators.make_evaluators

    def make_evaluators(ctx):                  # the watcher as one more evaluator of the log steps
        def watch(step, phase, params, values):
            if phase.name in scored:
                watcher(step, phase, params)
            return {}
        return original(ctx) + [watch]

    original_init = EmbeddingPhases.init_prior

    def init_prior(self, phase, *args, **kwargs):
        params = original_init(self, phase, *args, **kwargs)
        watcher.after_init(phase, params)
        return params

    evaluators.make_evaluators, EmbeddingPhases.init_prior = make_evaluators, init_prior
    try:
        summary = train_lib.train_and_evaluate(config, workdir, echo=lambda *a, **k: None, data=data,
                                               write_outputs=False)
    finally:
        evaluators.make_evaluators, EmbeddingPhases.init_prior = original, original_init
    total = time.perf_counter() - watcher.t0 - watcher.eval_seconds
    return {"seed": config.seed, "reached": watcher.reached, "reached_training": watcher.reached_training,
            "final_acc": round(summary.get("acc", float("nan")), 4),
            "total_seconds": round(total, 2), "eval_seconds": round(watcher.eval_seconds, 2),
            "compiles": summary.get("compiles"), "curve": watcher.curve}


def main(argv=None):
    args = parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    cache = None
    if args.cache:
        from gmvc.run.cache import enable_compilation_cache
        cache = enable_compilation_cache()
    root = pathlib.Path(tempfile.mkdtemp(prefix="gmvc_tta_"))
    results = []
    try:
        for index, (path, target) in enumerate(zip(args.config, args.target)):
            runs = []
            for seed in range(args.seeds):
                config = load_config(ROOT / path, args.set, seed)   # an absolute path stays as is
                print(f"{pathlib.Path(path).stem} seed {seed} (target {target}):", file=sys.stderr, flush=True)
                runs.append(run_one(config, target, root / f"{index}_{pathlib.Path(path).stem}_{seed}"))   # a fresh run each
            source = config.data.source
            reference = REFERENCE_SECONDS.get(source)
            result = {"config": path, "dataset": source, "target_acc": target, "seeds": args.seeds,
                      "overrides": args.set, "compilation_cache": cache}
            for key, suffix in (("reached", ""), ("reached_training", "_training")):
                reached = [r[key]["seconds"] for r in runs if r[key]]
                result.update({
                    f"runs_reaching_target{suffix}": len(reached),
                    f"seconds_to_target{suffix}_mean": round(float(np.mean(reached)), 2) if reached else None,
                    f"seconds_to_target{suffix}_max": round(float(np.max(reached)), 2) if reached else None,
                    f"within_budget{suffix}": (bool(len(reached) == len(runs) and max(reached) <= reference / 3)
                                               if reference else None)})
            result.update({"reference_seconds": reference, "budget_seconds": round(reference / 3, 2) if reference else None,
                           "per_seed": runs})
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
