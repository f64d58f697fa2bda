"""train_and_evaluate(config, workdir): check inputs, build the step, run it in compiled chunks
with progress, checkpoints and a metrics log, then predict, score and write the outputs."""
import json
import math
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmvc import config as config_lib
from gmvc import export, metrics, steps
from gmvc.checkpoint import Checkpointer
from gmvc.data import load_dataset
from gmvc.errors import CheckpointError, ConfigError, DataError, TrainingError
from gmvc.models import make_model
from gmvc.mixture_init import fit_diag_gmm
from gmvc.objectives import make_objective
from gmvc.phases import build_phases, resume_index
from gmvc.state import create_state, init_params, make_optimizer


def check_config(config, data):
    n, k, t = len(data.x), config.model.num_clusters, config.train
    if k < 1:
        raise ConfigError(f"model.num_clusters must be at least 1, got {k}")
    if k > n and config.model.name != "vae":
        raise DataError(f"model.num_clusters={k} is larger than the number of samples ({n}) in {data.name!r}")
    if t.batch_size < 1 or t.batch_size > n:
        raise DataError(f"train.batch_size={t.batch_size} must be between 1 and the number of samples ({n}) "
                        f"in {data.name!r}")
    for key in ("steps", "log_every", "checkpoint_every", "restarts"):
        if t[key] < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {t[key]}")


def model_inputs(model, data):
    """What the model reads: the data array, or {"x", "y"} for a model conditioned on labels."""
    if not model.num_labels:
        return data.x
    if data.y is None:
        raise DataError(f"this model is conditioned on labels (num_labels={model.num_labels}) but dataset "
                        f"{data.name!r} has none")
    if data.y.min() < 0 or data.y.max() >= model.num_labels:
        raise DataError(f"dataset {data.name!r} has labels {int(data.y.min())}..{int(data.y.max())}; the model "
                        f"is conditioned on {model.num_labels} (model.num_clusters): labels must be 0.."
                        f"{model.num_labels - 1}")
    return {"x": data.x, "y": data.y.astype(np.int32)}


class Progress:
    """One line per chunk: step, steps/s, each term, ETA; also appended to metrics.jsonl."""

    def __init__(self, log_path, start_step, total_steps, echo=print):
        self.log_path, self.total, self.echo = log_path, total_steps, echo
        self.t0 = self.t_last = time.time()
        self.step_last = start_step
        _truncate_log(log_path, start_step)

    def __call__(self, step, values, phase="main"):
        now = time.time()
        first = self.t_last == self.t0    # the first chunk's time includes compilation
        rate = (step - self.step_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        record = {"step": step, "phase": phase, "steps_per_sec": round(rate, 2), "elapsed_s": round(now - self.t0, 2), **values}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        terms = " ".join(f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, float))
        note = " (incl. compile)" if first else ""
        self.echo(f"[{phase}] step {step}/{self.total} | {rate:.1f} steps/s{note} | ETA {_fmt_time(eta)} | {terms}", flush=True)


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
    """Train (or resume) the run in `workdir` through its phases, then evaluate; returns a summary."""
    config.lock()
    workdir = pathlib.Path(workdir)
    data = load_dataset(config.data, config.seed)
    check_config(config, data)
    model = make_model(config.model, data.x.shape[1:])
    phases = build_phases(config)
    runners = {p.name: PhaseRunner(config, model, p, len(data.x)) for p in phases if p.kind == "train"}
    if any(p.kind == "init_prior" for p in phases) and not model.stored_prior:
        raise ConfigError(f"model {config.model.name!r} has no stored mixture prior to initialise "
                          f"(an init_prior phase needs one)")

    workdir.mkdir(parents=True, exist_ok=True)
    export.write_json(workdir / "config.json", config_lib.to_dict(config))
    rng = jax.random.key(config.seed)
    init_rng, train_rng, sample_rng, prior_rng = jax.random.split(rng, 4)
    params = init_params(model.init, init_rng, config.train.restarts)
    ckpt = Checkpointer(workdir / "checkpoints", config.train.max_checkpoints)
    step, opt_state, resume_at = ckpt.latest_step() or 0, None, -1
    if step:
        resume_at = resume_index(phases, step)
        restored = ckpt.restore(step, create_state(params, runners[phases[resume_at].name].tx))
        params, opt_state = restored["params"], restored["opt_state"]
        echo(f"Resuming from checkpoint {ckpt.path(step)} (step {step} of {config.train.steps}, "
             f"phase {phases[resume_at].name!r})", flush=True)
    else:
        echo(f"Starting a new run in {workdir} ({len(data.x)} samples from {data.name!r})", flush=True)

    inputs = model_inputs(model, data)
    x_device = jax.device_put(inputs)
    progress = Progress(workdir / "metrics.jsonl", step, config.train.steps, echo)
    t_train = time.time()
    for i, phase in enumerate(phases):
        if i < resume_at:
            continue
        if phase.kind == "init_prior":
            params = init_prior_phase(phase, model, params, data.x, jax.random.fold_in(prior_rng, i), config)
            echo(f"phase {phase.name!r}: mixture prior initialised from the embeddings ({phase.spec['method']})",
                 flush=True)
            continue
        runner = runners[phase.name]
        state = ({"step": jnp.asarray(step, jnp.int32), "params": params, "opt_state": opt_state}
                 if i == resume_at else create_state(params, runner.tx, step))
        state = runner.run(state, x_device, train_rng, ckpt, progress)
        step, params, opt_state = int(state["step"]), state["params"], state["opt_state"]
    train_seconds = time.time() - t_train
    ckpt.close()

    last = runners[[p.name for p in phases if p.kind == "train"][-1]]
    params, choice = choose_restart(config, last, params, inputs)
    if config.train.restarts > 1:
        echo(f"restart {choice['chosen_restart']} of {config.train.restarts} has the lowest objective on the data "
             f"({choice['restart_objective'][choice['chosen_restart']]:.4f}); its parameters are used", flush=True)
    summary = evaluate(config, model, params, data, workdir, sample_rng, echo, inputs)
    summary.update(choice)
    summary.update({"steps": step, "train_seconds": round(train_seconds, 2),
                    "compiles": sum(r.trace_count for r in runners.values())})
    export.write_json(workdir / "results.json", summary)
    echo(f"results: {workdir / 'results.json'}", flush=True)
    return summary


def uses_host_loop(config):
    """train.loop: "scan" runs each chunk of steps in one compiled lax.scan; "host" loops over a
    compiled step on the host; "auto" = host for convolutional networks (see steps.make_host_chunk)."""
    loop = config.train.loop
    if loop not in ("auto", "scan", "host"):
        raise ConfigError(f"unknown train.loop {loop!r}; known: ['auto', 'host', 'scan']")
    return loop == "host" or (loop == "auto" and config.model.net == "conv")


class PhaseRunner:
    """One train phase: its objective, optimizer and compiled chunk (compiled once)."""

    def __init__(self, config, model, phase, num_examples):
        self.config, self.phase = config, phase
        self.loss = make_objective(model, phase.spec["objective"], config.terms)
        self.tx = make_optimizer(config.optim, phase.spec["trainable"], phase.spec.get("lr"))
        start = phase.start
        phase_loss = lambda p, b, r, s: self.loss(p, b, r, s - start)   # weight schedules count from the phase start
        t = config.train
        step_fn = steps.make_restarts_step(steps.make_train_step(phase_loss, self.tx), t.restarts)
        self.trace_count = 0

        def counted(fn):
            def traced(state, x, rng):
                self.trace_count += 1
                return fn(state, x, rng)
            return traced

        if uses_host_loop(config):
            one = steps.make_indexed_step(step_fn, num_examples=num_examples, batch_size=t.batch_size)
            self.run_chunk = steps.make_host_chunk(jax.jit(counted(one), donate_argnums=0), chunk_len=t.log_every,
                                                   total_steps=phase.end)
        else:
            chunk = steps.make_train_chunk(step_fn, num_examples=num_examples, batch_size=t.batch_size,
                                           chunk_len=t.log_every, total_steps=phase.end)
            self.run_chunk = jax.jit(counted(chunk), donate_argnums=0)

    def run(self, state, x, rng, ckpt, progress):
        t = self.config.train
        ckpt_every = math.ceil(t.checkpoint_every / t.log_every) * t.log_every
        step = int(state["step"])
        while step < self.phase.end:
            state, chunk_metrics = self.run_chunk(state, x, rng)
            per_restart = jax.device_get(chunk_metrics)                 # each [R]
            step = min(step + t.log_every, self.phase.end)
            _check_finite(step, per_restart)
            values = {k: float(np.mean(v)) for k, v in per_restart.items()}
            if t.restarts > 1:
                values["loss_per_restart"] = [round(float(v), 5) for v in per_restart["loss"]]
            progress(step, values, self.phase.name)
            if (step - self.phase.start) % ckpt_every == 0 or step == self.phase.end:
                ckpt.save(step, state)
        return state


def init_prior_phase(phase, model, params, x, rng, config):
    """Refit each restart's mixture prior to its embeddings of the data (all of it for "em", at
    most batches * batch_size samples for "minibatch")."""
    spec = phase.spec
    if spec["method"] == "minibatch":
        n = min(len(x), spec["batches"] * spec["batch_size"])
        x = x[np.asarray(jax.random.permutation(jax.random.fold_in(rng, 0), len(x)))[:n]]
    embed = jax.jit(model.embed)
    fit = jax.jit(lambda r, z: fit_diag_gmm(r, z, model.num_clusters, spec["kmeans_iters"],
                                            spec["em_iters"] if spec["method"] == "em" else 0, spec["n_init"]))
    priors = []
    for r in range(config.train.restarts):
        params_r = jax.tree.map(lambda a: a[r], params)
        bs = config.eval.batch_size
        z = jnp.concatenate([embed(params_r, x[i:i + bs]) for i in range(0, len(x), bs)])
        priors.append(fit(jax.random.fold_in(rng, r + 1), z))
    return {**params, "prior": jax.tree.map(lambda *a: jnp.stack(a), *priors)}


class Run(NamedTuple):
    config: object
    data: object
    model: object
    inputs: object
    params: dict       # one restart's parameters (the one training would choose)
    step: int


def load_run(config, workdir, echo=print):
    """The trained run in `workdir`: its latest checkpoint, with the restart chosen as at the end
    of training. Nothing in the run directory is written or removed."""
    config.lock()
    checkpoints = pathlib.Path(workdir) / "checkpoints"
    if not checkpoints.is_dir():
        raise CheckpointError(f"no run in {workdir}: {checkpoints} does not exist (train it first, with the same "
                              f"--config and --workdir)")
    data = load_dataset(config.data, config.seed)
    check_config(config, data)
    model = make_model(config.model, data.x.shape[1:])
    phases = build_phases(config)
    ckpt = Checkpointer(checkpoints, config.train.max_checkpoints)
    try:
        step = ckpt.latest_step()
        if not step:
            raise CheckpointError(f"no checkpoint in {checkpoints} (train the run first)")
        phase = phases[resume_index(phases, step)]
        runner = PhaseRunner(config, model, phase, len(data.x))
        like = create_state(init_params(model.init, jax.random.key(0), config.train.restarts), runner.tx)
        stacked = ckpt.restore(step, like)["params"]
    finally:
        ckpt.close()
    if step < config.train.steps:
        echo(f"note: the run in {workdir} stopped at step {step} of {config.train.steps}; using that checkpoint",
             flush=True)
    inputs = model_inputs(model, data)
    if config.train.restarts > 1:
        params, _ = choose_restart(config, runner, stacked, inputs)
    else:
        params = jax.tree.map(lambda a: a[0], stacked)
    return Run(config, data, model, inputs, params, step)


def choose_restart(config, runner, stacked_params, x):
    """Pick the restart with the lowest objective of the last train phase on the whole data
    (no labels)."""
    full_loss = steps.make_full_loss(runner.loss, config.eval.batch_size)
    step = runner.phase.end - runner.phase.start
    losses = [full_loss(jax.tree.map(lambda a: a[r], stacked_params), x, step)
              for r in range(config.train.restarts)]
    best = int(np.nanargmin(losses)) if np.isfinite(losses).any() else 0
    return (jax.tree.map(lambda a: a[best], stacked_params),
            {"chosen_restart": best, "restart_objective": [round(v, 5) for v in losses]})


def evaluate(config, model, params, data, workdir, rng, echo=print, inputs=None):
    """Predict every sample, score against labels if any, write predictions and plots."""
    out = steps.make_predict(model, config.eval.batch_size)(params, data.x if inputs is None else inputs)
    k = model.num_clusters
    summary = {"num_samples": len(data.x), "num_clusters": k}
    if k:
        gamma = np.exp(out["log_gamma"])                     # [N, K]
        clusters = gamma.argmax(1)
        summary["cluster_sizes"] = np.bincount(clusters, minlength=k).tolist()
        if data.y is not None:
            summary.update(metrics.clustering_report(clusters, data.y))
            echo("clustering: " + " ".join(f"{m}={summary[m]:.4f}" for m in ("acc", "majority_acc", "nmi", "ari")),
                 flush=True)
        export.write_predictions_csv(workdir / "predictions.csv", gamma, data.y)
    else:                                                    # no clusters: colour by label, export codes
        gamma, clusters = None, (data.y if data.y is not None else np.zeros(len(data.x), np.int64))
        export.write_latent_csv(workdir / "predictions.csv", out["z_mean"], data.y)
    groups = max(k, model.num_labels, 1)
    per_group = config.eval.samples_per_cluster if data.is_image else max(1, config.eval.plot_points // groups)
    if data.is_image and groups == 1:
        per_group = config.eval.samples_per_cluster ** 2      # one square grid
    samples = np.asarray(jax.device_get(jax.jit(model.sample, static_argnums=2)(params, rng, per_group)))
    colours = int(clusters.max()) + 1 if len(clusters) else 1
    paths = export.write_plots(workdir, data.x, clusters, out["z_mean"], samples, max(k, colours),
                               config.eval.plot_points, group_name=_group_name(model))
    summary["files"] = {name: str(p) for name, p in
                        {"predictions": workdir / "predictions.csv", "metrics_log": workdir / "metrics.jsonl",
                         "config": workdir / "config.json", "checkpoints": workdir / "checkpoints", **paths}.items()}
    for name, p in summary["files"].items():
        echo(f"wrote {name}: {p}", flush=True)
    return summary


def _group_name(model):
    return "cluster" if model.num_clusters else ("label" if model.num_labels else "")
