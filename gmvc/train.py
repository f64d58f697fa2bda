"""train_and_evaluate(config, workdir): check inputs, build the step, run it in compiled chunks
with progress, checkpoints and a metrics log, then predict, score and write the outputs."""
import json
import math
import pathlib
import time

import jax
import numpy as np

from gmvc import config as config_lib
from gmvc import export, metrics, steps
from gmvc.checkpoint import Checkpointer
from gmvc.data import load_dataset
from gmvc.errors import ConfigError, DataError, TrainingError
from gmvc.models import make_model
from gmvc.objectives import make_objective
from gmvc.state import create_state, make_optimizer


def check_config(config, data):
    n, k, t = len(data.x), config.model.num_clusters, config.train
    if k < 1:
        raise ConfigError(f"model.num_clusters must be at least 1, got {k}")
    if k > n:
        raise DataError(f"model.num_clusters={k} is larger than the number of samples ({n}) in {data.name!r}")
    if t.batch_size < 1 or t.batch_size > n:
        raise DataError(f"train.batch_size={t.batch_size} must be between 1 and the number of samples ({n}) "
                        f"in {data.name!r}")
    for key in ("steps", "log_every", "checkpoint_every", "restarts"):
        if t[key] < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {t[key]}")


class Progress:
    """One line per chunk: step, steps/s, each term, ETA; also appended to metrics.jsonl."""

    def __init__(self, log_path, start_step, total_steps, echo=print):
        self.log_path, self.total, self.echo = log_path, total_steps, echo
        self.t0 = self.t_last = time.time()
        self.step_last = start_step
        _truncate_log(log_path, start_step)

    def __call__(self, step, values):
        now = time.time()
        first = self.t_last == self.t0    # the first chunk's time includes compilation
        rate = (step - self.step_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        record = {"step": step, "steps_per_sec": round(rate, 2), "elapsed_s": round(now - self.t0, 2), **values}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        terms = " ".join(f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, float))
        note = " (incl. compile)" if first else ""
        self.echo(f"step {step}/{self.total} | {rate:.1f} steps/s{note} | ETA {_fmt_time(eta)} | {terms}", flush=True)


def _fmt_time(seconds):
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


def _truncate_log(path, step):
    """On resume, drop log lines past the checkpoint: the resumed run logs those steps again."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    export.atomic_write_text(path, "".join(line + "\n" for line in keep))


def _check_finite(step, per_restart):
    bad = {k: np.asarray(v).tolist() for k, v in per_restart.items() if not np.isfinite(v).all()}
    if bad:
        raise TrainingError(f"non-finite values at step {step} in term(s) {sorted(bad)} (values per restart: "
                            f"{bad}); no checkpoint was written for this chunk")


def train_and_evaluate(config, workdir, echo=print):
    """Train (or resume) the run in `workdir`, then evaluate it; returns a summary dict."""
    config.lock()
    workdir = pathlib.Path(workdir)
    data = load_dataset(config.data, config.seed)
    check_config(config, data)
    model = make_model(config.model, data.x.shape[1:])
    loss_fn = make_objective(model, config.objective, config.terms)
    tx = make_optimizer(config.optim)

    workdir.mkdir(parents=True, exist_ok=True)
    export.write_json(workdir / "config.json", config_lib.to_dict(config))
    rng = jax.random.key(config.seed)
    init_rng, train_rng, sample_rng = jax.random.split(rng, 3)
    restarts = config.train.restarts
    state = create_state(model.init, tx, init_rng, restarts)
    ckpt = Checkpointer(workdir / "checkpoints", config.train.max_checkpoints)
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(start, state)
        echo(f"Resuming from checkpoint {ckpt.path(start)} (step {start} of {config.train.steps})", flush=True)
    else:
        echo(f"Starting a new run in {workdir} ({len(data.x)} samples from {data.name!r})", flush=True)

    t = config.train
    ckpt_every = math.ceil(t.checkpoint_every / t.log_every) * t.log_every
    train_step = steps.make_restarts_step(steps.make_train_step(loss_fn, tx), restarts)
    chunk = steps.make_train_chunk(train_step, num_examples=len(data.x),
                                   batch_size=t.batch_size, chunk_len=t.log_every, total_steps=t.steps)
    trace_count = [0]

    def counted_chunk(state, x, rng):
        trace_count[0] += 1
        return chunk(state, x, rng)

    run_chunk = jax.jit(counted_chunk, donate_argnums=0)
    x_device = jax.device_put(data.x)
    progress = Progress(workdir / "metrics.jsonl", start, t.steps, echo)
    step = start
    t_train = time.time()
    while step < t.steps:
        state, chunk_metrics = run_chunk(state, x_device, train_rng)
        per_restart = jax.device_get(chunk_metrics)                 # each [R]
        step = min(step + t.log_every, t.steps)
        _check_finite(step, per_restart)
        values = {k: float(np.mean(v)) for k, v in per_restart.items()}
        if restarts > 1:
            values["loss_per_restart"] = [round(float(v), 5) for v in per_restart["loss"]]
        progress(step, values)
        if step % ckpt_every == 0 or step == t.steps:
            ckpt.save(step, state)
    train_seconds = time.time() - t_train
    ckpt.close()
    params, choice = choose_restart(config, loss_fn, state["params"], data.x, t.steps)
    if restarts > 1:
        echo(f"restart {choice['chosen_restart']} of {restarts} has the lowest objective on the data "
             f"({choice['restart_objective'][choice['chosen_restart']]:.4f}); its parameters are used", flush=True)
    summary = evaluate(config, model, params, data, workdir, sample_rng, echo)
    summary.update(choice)
    summary.update({"steps": int(step), "train_seconds": round(train_seconds, 2), "compiles": trace_count[0]})
    export.write_json(workdir / "results.json", summary)
    echo(f"results: {workdir / 'results.json'}", flush=True)
    return summary


def choose_restart(config, loss_fn, stacked_params, x, step):
    """Pick the restart with the lowest training objective on the whole data (no labels)."""
    full_loss = steps.make_full_loss(loss_fn, config.eval.batch_size)
    losses = [full_loss(jax.tree.map(lambda a: a[r], stacked_params), x, step)
              for r in range(config.train.restarts)]
    best = int(np.nanargmin(losses)) if np.isfinite(losses).any() else 0
    return (jax.tree.map(lambda a: a[best], stacked_params),
            {"chosen_restart": best, "restart_objective": [round(v, 5) for v in losses]})


def evaluate(config, model, params, data, workdir, rng, echo=print):
    """Predict every sample, score against labels if any, write predictions and plots."""
    out = steps.make_predict(model, config.eval.batch_size)(params, data.x)
    gamma = np.exp(out["log_gamma"])                         # [N, K]
    clusters = gamma.argmax(1)
    k = model.num_clusters
    summary = {"num_samples": len(data.x), "num_clusters": k,
               "cluster_sizes": np.bincount(clusters, minlength=k).tolist()}
    if data.y is not None:
        summary.update(metrics.clustering_report(clusters, data.y))
        echo("clustering: " + " ".join(f"{m}={summary[m]:.4f}" for m in ("acc", "majority_acc", "nmi", "ari")),
             flush=True)
    per_cluster = config.eval.samples_per_cluster if data.is_image else max(1, config.eval.plot_points // k)
    samples = np.asarray(jax.device_get(jax.jit(model.sample, static_argnums=2)(params, rng, per_cluster)))
    export.write_predictions_csv(workdir / "predictions.csv", gamma, data.y)
    paths = export.write_plots(workdir, data.x, clusters, out["z_mean"], samples, k, config.eval.plot_points)
    summary["files"] = {name: str(p) for name, p in
                        {"predictions": workdir / "predictions.csv", "metrics_log": workdir / "metrics.jsonl",
                         "config": workdir / "config.json", "checkpoints": workdir / "checkpoints", **paths}.items()}
    for name, p in summary["files"].items():
        echo(f"wrote {name}: {p}", flush=True)
    return summary
