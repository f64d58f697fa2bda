"""train_and_evaluate(config, workdir): check inputs, build the step, run it in compiled chunks
with progress, checkpoints and a metrics log, then predict, score and write the outputs."""
import json
import math
import pathlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmvc import config as config_lib
from gmvc import augment, export, metrics, monitor, parallel, steps
from gmvc.checkpoint import Checkpointer
from gmvc.data import load_dataset
from gmvc.events import open_events
from gmvc.errors import CheckpointError, ConfigError, DataError, TrainingError
from gmvc.models import make_model
from gmvc.mixture_init import (cluster_counts, fit_diag_gmm, fit_diag_gmm_merged, fit_diag_gmm_smoothed, kl_to_uniform,
                                mean_log_likelihood)
from gmvc.objectives import make_objective
from gmvc.neighbours import agreement, neighbour_phase
from gmvc.phases import build_phases, fit_reads_table, neighbour_k, resume_index, uses_neighbours
from gmvc.state import create_state, init_params, make_optimizer, opt_init


def check_config(config, data):
    n, k, t = len(data.x), config.model.num_clusters, config.train
    if k < 1:
        raise ConfigError(f"model.num_clusters must be at least 1, got {k}")
    if k > n and config.model.name != "vae":
        raise DataError(f"model.num_clusters={k} is larger than the number of samples ({n}) in {data.name!r}")
    if t.batch_size < 1 or t.batch_size > n:
        raise DataError(f"train.batch_size={t.batch_size} must be between 1 and the number of samples ({n}) "
                        f"in {data.name!r}")
    if t.restart_choice not in RESTART_CHOICES:
        raise ConfigError(f"unknown train.restart_choice {t.restart_choice!r}; known: {list(RESTART_CHOICES)}")
    if t.restart_batches not in RESTART_BATCHES:
        raise ConfigError(f"unknown train.restart_batches {t.restart_batches!r}; known: {list(RESTART_BATCHES)}")
    compiles_ahead(config)              # an unknown train.compile_ahead is named before the run starts
    for key in ("steps", "log_every", "checkpoint_every", "restarts"):
        if t[key] < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {t[key]}")
    monitor.check_config(config, n, k if config.model.name != "vae" else 0)
    fraction = config.train.validation_fraction
    num_train = n - (monitor.validation_size(n, fraction) if fraction > 0 else 0)
    for phase in build_phases(config):
        augment.check_data(phase.spec.get("augment"), data.x.shape[1:], f"phase {phase.name!r}")
        if uses_neighbours(phase.spec) and config.model.name == "vae":
            raise ConfigError(f"phase {phase.name!r}: the 'neighbours' term compares cluster responsibilities; "
                              f"model 'vae' has no clusters")
        if phase.kind == "train" and phase.spec["batch_size"] > num_train:
            raise DataError(f"phase {phase.name!r}: batch_size={phase.spec['batch_size']} is larger than the "
                            f"{num_train} training samples of {data.name!r}")
        if phase.kind == "neighbours" and phase.spec["k"] >= num_train:
            raise DataError(f"phase {phase.name!r}: k={phase.spec['k']} neighbours need more than k training "
                            f"samples; {data.name!r} has {num_train}")


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


class Warmup:
    """Compiles the programs of later phases in one background thread while earlier phases run
    (XLA releases the GIL while it compiles), so a phase change does not stop for compilation.
    `ready(name)` waits for that phase's program; a failed warm-up is left to the phase's own
    call, which compiles (and reports any error) as it would have without it."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gmvc-compile")
        self._jobs = {}

    def submit(self, name, fn, *args, **kwargs):
        self._jobs[name] = self._pool.submit(fn, *args, **kwargs)

    def ready(self, name):
        job = self._jobs.pop(name, None)
        if job is not None:
            job.exception()         # waits; on an error the phase compiles for itself

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


COMPILE_AHEAD = {"on": True, "true": True, "off": False, "false": False}


def compiles_ahead(config):
    """train.compile_ahead: "on", "off" (True/False too), or "auto": off when the run trains on
    the CPU, where the compiling thread takes a core from the training (README, "Speed"), on
    elsewhere (the host compiles while the device trains)."""
    value = config.train.compile_ahead
    key = str(value).lower()
    if key == "auto":
        return jax.default_backend() != "cpu"
    if key not in COMPILE_AHEAD:
        raise ConfigError(f"unknown train.compile_ahead {value!r}; known: ['auto', 'off', 'on']")
    return COMPILE_AHEAD[key]


def start_warmup(config, model, phases, runners, fits, params, x_device, train_rng, x_rows, inputs, start_at,
                 last_phase, embed):
    """Queue, in phase order, the compilation of every phase from `start_at` on (with the
    embedding the neighbours and init_prior phases read, `embed`, steps.make_embed's), then of
    the final restart choice's score (`last_phase`'s objective) on `inputs` (all the samples);
    nothing when compiles_ahead(config) is False."""
    warm = Warmup()
    if not compiles_ahead(config):
        return warm
    params_like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), params)
    one_like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), params_like)
    if any(p.kind == "init_prior" for p in phases[start_at:]):
        # an init_prior phase's key, fold_in(prior_rng, i) in train_and_evaluate, is dispatched eagerly
        warm.submit("fold_in", lambda: jax.block_until_ready(jax.random.fold_in(train_rng, 0)))
    embed_batches = set()           # the embedding's batch sizes already queued
    for i, phase in enumerate(phases):
        if i < start_at:
            continue
        if phase.kind in ("init_prior", "neighbours"):
            rows = prior_fit_rows(phase.spec, len(x_rows)) if phase.kind == "init_prior" else len(x_rows)
            batch = config.eval.batch_size if rows > config.eval.batch_size else rows
            if batch not in embed_batches:
                embed_batches.add(batch)
                warm.submit(f"embed {batch}", lambda b: embed.batch.lower(
                    one_like, jax.ShapeDtypeStruct((b, *x_rows.shape[1:]), x_rows.dtype)).compile(), batch)
        if phase.kind == "train":
            if runners[phase.name].owner is not runners[phase.name]:
                continue            # its program is an earlier phase's, compiled (or queued) already
            table_like = (jax.ShapeDtypeStruct((config.train.restarts, len(x_rows), neighbour_k(phases, i)), np.int32)
                          if uses_neighbours(phase.spec) else None)
            warm.submit(phase.name, runners[phase.name].precompile, params_like, x_device, train_rng, table_like)
        elif phase.kind == "init_prior":
            x_like = jax.ShapeDtypeStruct((prior_fit_rows(phase.spec, len(x_rows)), *x_rows.shape[1:]), x_rows.dtype)
            z_like = jax.eval_shape(model.embed, one_like, x_like)
            table_like = (jax.ShapeDtypeStruct((len(x_rows), neighbour_k(phases, i)), np.int32)
                          if fit_reads_table(phase.spec) else None)
            warm.submit(phase.name, lambda f, z, t: f.lower(train_rng, 0, z, t).compile(), fits[phase.name], z_like,
                        table_like)
    warm.submit("finish", runners[last_phase].precompile_full_loss, one_like, inputs)
    return warm


def preload_reporting():
    """Import what the evaluation at the end needs (matplotlib, scipy, scikit-learn: about 3 s)
    in a background thread, while the compiled steps run without the GIL."""
    def load():
        try:
            export.pyplot()
            import scipy.optimize  # noqa: F401
            import sklearn.metrics  # noqa: F401
        except Exception:      # the import at the point of use reports any error
            pass

    threading.Thread(target=load, name="gmvc-imports", daemon=True).start()


class Progress:
    """One line per chunk: step, steps/s, each term, ETA; also appended to metrics.jsonl."""

    def __init__(self, log_path, start_step, total_steps, echo=print, write=True):
        self.log_path, self.total, self.echo, self.write = log_path, total_steps, echo, write
        self.t0 = self.t_last = time.time()
        self.step_last = start_step
        if write:
            _truncate_log(log_path, start_step)

    def __call__(self, step, values, phase="main"):
        now = time.time()
        first = self.t_last == self.t0    # the first chunk's time includes compilation
        rate = (step - self.step_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        record = {"step": step, "phase": phase, "steps_per_sec": round(rate, 2), "elapsed_s": round(now - self.t0, 2), **values}
        if self.write:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        terms = " ".join(f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, float))
        note = " (incl. compile)" if first else ""
        self.echo(f"[{phase}] step {step}/{self.total} | {rate:.1f} steps/s{note} | ETA {_fmt_time(eta)} | {terms}", flush=True)
        return rate


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


def train_and_evaluate(config, workdir, echo=print, data=None, write_outputs=True):
    """Train (or resume) the run in `workdir` through its phases, then evaluate; returns a summary.
    With several processes (jax.distributed), every process trains its share and saves
    checkpoints together; only process 0 writes logs, TensorBoard events, predictions, plots and
    results. `data`: a Dataset to train on instead of config.data's source (the estimators'
    arrays); `write_outputs=False` skips predictions.csv, the plots and the TensorBoard images
    (config, log, results and checkpoints are always written). With train.validation_fraction
    > 0 that share of the data does not train (gmvc/monitor.py); every output still covers all
    the samples."""
    config.lock()
    workdir = pathlib.Path(workdir)
    main_process = jax.process_index() == 0
    if not main_process:
        echo = _silent
    data = load_dataset(config.data, config.seed) if data is None else data
    check_config(config, data)
    split = monitor.split_indices(len(data.x), config.train.validation_fraction, config.seed)
    num_train = len(data.x) if split is None else len(split[0])
    layout = parallel.make_layout(config.parallel, config.train.batch_size)
    model = make_model(config.model, data.x.shape[1:])
    phases = build_phases(config)
    runners = make_runners(config, model, phases, num_train, layout)
    if any(p.kind == "init_prior" for p in phases) and not model.stored_prior:
        raise ConfigError(f"model {config.model.name!r} has no stored mixture prior to initialise "
                          f"(an init_prior phase needs one)")

    if main_process:
        workdir.mkdir(parents=True, exist_ok=True)
        export.write_json(workdir / "config.json", config_lib.to_dict(config))
    rng = jax.random.key(config.seed)
    init_rng, train_rng, sample_rng, prior_rng = jax.random.split(rng, 4)
    ckpt = Checkpointer(workdir / "checkpoints", config.train.max_checkpoints)
    step, opt_state, resume_at, table = ckpt.latest_step() or 0, None, -1, None
    if step:
        resume_at = resume_index(phases, step)

    inputs = model_inputs(model, data)
    train_inputs, val_inputs = (inputs, None) if split is None else (
        jax.tree.map(lambda a: a[split[0]], inputs), jax.tree.map(lambda a: a[split[1]], inputs))
    x_device = parallel.put_data(layout, train_inputs)
    fits, balanced_fits = make_fits(phases, model), make_fits(phases, model, balanced=True)
    embed = steps.make_embed(model, config.eval.batch_size)
    last_phase = [p.name for p in phases if p.kind == "train"][-1]
    # The phases compile in a background thread from here on, while the parameters initialise.
    warm = start_warmup(config, model, phases, runners, fits,
                        jax.eval_shape(lambda r: init_params(model.init, r, config.train.restarts), init_rng),
                        x_device, train_rng, data.x if split is None else data.x[split[0]], inputs,
                        max(resume_at, 0), last_phase, embed)
    try:
        params = jax.tree.map(np.asarray, init_params(model.init, init_rng, config.train.restarts))
        if step:
            resumed = phases[resume_at]
            like_table = (np.zeros((config.train.restarts, num_train, neighbour_k(phases, resume_at)), np.int32)
                          if uses_neighbours(resumed.spec) else None)
            restored = restore_state(ckpt, step, layout, create_state(params, runners[resumed.name].tx,
                                                                      neighbours=like_table))
            params, opt_state, table = restored["params"], restored["opt_state"], restored.get("neighbours")
            echo(f"Resuming from checkpoint {ckpt.path(step)} (step {step} of {config.train.steps}, "
                 f"phase {phases[resume_at].name!r})", flush=True)
        else:
            echo(f"Starting a new run in {workdir} ({len(data.x)} samples from {data.name!r}"
                 f"{_split_note(split)}{_layout_note(layout)})", flush=True)

        progress = Progress(workdir / "metrics.jsonl", step, config.train.steps, echo, write=main_process)
        events = open_events(workdir, step, config, model, data, inputs, sample_rng, main_process,
                             images=write_outputs, samples_per_group=_samples_per_group(config, model, data))
        watch = monitor.Monitor(config, model, layout, val_inputs, events, workdir, last_phase, main_process, echo)
    except BaseException:
        warm.close()
        raise
    try:
        watch.resume(step)
        if watch.stopped:
            echo(f"the run stopped early at step {step} (train.patience={config.train.patience}); "
                 f"not training further", flush=True)
        t_train, preloading = time.time(), False
        for i, phase in enumerate(phases):
            if i < resume_at or watch.stopped:
                continue
            warm.ready(phase.name)
            if phase.kind == "train" and not preloading:
                preload_reporting()     # once the first train phase's program is ready
                preloading = True
            if phase.kind == "init_prior":
                params = init_prior_phase(phase, model, params, data.x if split is None else data.x[split[0]],
                                          jax.random.fold_in(prior_rng, i), config, fits[phase.name],
                                          table if fit_reads_table(phase.spec) else None, echo, embed,
                                          balanced_fits.get(phase.name))
                if not phase.spec["keep_current"]:     # otherwise init_prior_phase said which prior it kept
                    echo(f"phase {phase.name!r}: mixture prior initialised from the embeddings "
                         f"({phase.spec['method']})", flush=True)
                continue
            if phase.kind == "neighbours":
                table = neighbours_phase(phase, model, params, data, split, config, echo, embed)
                continue
            runner = runners[phase.name]
            phase_table = table if uses_neighbours(phase.spec) else None
            state = (create_state(params, runner.tx, step, opt_state=opt_state, neighbours=phase_table)
                     if i == resume_at else create_state(params, runner.tx, step, neighbours=phase_table,
                                                         init_opt=runner.init_opt))
            state = runner.run(parallel.put_state(layout, state), x_device, train_rng, ckpt, progress, watch)
            state = parallel.get_state(layout, state)              # one host copy between phases
            step, params, opt_state = int(state["step"]), state["params"], state["opt_state"]
        train_seconds = time.time() - t_train
        ckpt.close()

        warm.ready("finish")
        params = watch.final_params(params, workdir)              # the best step's under early stopping
        summary = finish(config, model, params, data, inputs, runners[last_phase], workdir, sample_rng, echo,
                         main_process and write_outputs, events, step, watch)
    finally:
        warm.close()
        watch.close()
        events.close()
    summary.update({"steps": step, "data_shape": list(data.x.shape[1:]), "train_seconds": round(train_seconds, 2),
                    "compiles": sum(r.trace_count for r in runners.values() if r.owner is r),
                    "parallel": {"mode": layout.mode, "devices": layout.n, "processes": jax.process_count()}})
    if main_process:
        export.write_json(workdir / "results.json", summary)
    echo(f"results: {workdir / 'results.json'}", flush=True)
    return summary


def finish(config, model, stacked, data, inputs, last_runner, workdir, rng, echo, write, events, step, watch):
    """Choose the restart, evaluate it on every sample, and report validation and early stopping."""
    params, choice = choose_restart(config, last_runner, model, stacked, inputs)
    if config.train.restarts > 1:
        r = choice["chosen_restart"]
        why = (f"the most even cluster usage (KL to uniform {choice['restart_imbalance'][r]:.4f})"
               if "restart_imbalance" in choice else f"the lowest objective on the data ({choice['restart_objective'][r]:.4f})")
        echo(f"restart {r} of {config.train.restarts} has {why}; its parameters are used", flush=True)
    summary = evaluate(config, model, params, data, workdir, rng, echo, inputs, write=write, events=events, step=step)
    summary.update(choice)
    summary.update(watch.summary(stacked, choice["chosen_restart"],
                                 step if watch.stopped and step < config.train.steps else None))
    if "early_stopping" in summary:
        e = summary["early_stopping"]
        echo(f"early stopping: outputs from the best step {e['best_step']} (validation ELBO {e['best_val_elbo']})",
             flush=True)
    events.scalars(step, {k: float(summary[k]) for k in ("acc", "majority_acc", "nmi", "ari") if k in summary},
                   "eval")
    if "validation" in summary:
        events.scalars(step, {"val_elbo": summary["validation"]["elbo"]}, "eval")
    return summary


def _split_note(split):
    return "" if split is None else f"; {len(split[1])} held out for validation"


def _samples_per_group(config, model, data):
    """How many samples per cluster (label) the plots and the TensorBoard images draw."""
    groups = max(model.num_clusters, model.num_labels, 1)
    per_group = config.eval.samples_per_cluster if data.is_image else max(1, config.eval.plot_points // groups)
    if data.is_image and groups == 1:
        per_group = config.eval.samples_per_cluster ** 2      # one square grid
    return per_group


def _silent(*args, **kwargs):
    pass


def _layout_note(layout):
    if layout.mode == "single":
        return ""
    procs = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return f"; data-parallel over {layout.n} devices{procs} ({layout.mode})"


def restore_state(ckpt, step, layout, like):
    """Restore checkpoint `step` (written by any number of devices) as host arrays shaped like
    `like`; the caller places it for its own layout."""
    restored = ckpt.restore(step, parallel.put_state(layout, like) if layout.mode == "shard_map" else like)
    return jax.tree.map(parallel.to_host, restored)


def uses_host_loop(config):
    """train.loop: "scan" runs each chunk of steps in one compiled lax.scan; "host" loops over a
    compiled step on the host; "auto" = host for convolutional networks (see steps.make_host_chunk)."""
    loop = config.train.loop
    if loop not in ("auto", "scan", "host"):
        raise ConfigError(f"unknown train.loop {loop!r}; known: ['auto', 'host', 'scan']")
    return loop == "host" or (loop == "auto" and config.model.net == "conv")


def program_key(spec):
    """What a train phase's compiled program depends on: its spec without the step count (the
    phase's start and end are traced), so phases that differ only in length share one program."""
    return json.dumps({k: v for k, v in spec.items() if k != "steps"}, sort_keys=True, default=repr)


def make_fits(phases, model, balanced=False):
    """{phase name: compiled fit} of the init_prior phases; phases with the same fit_key
    (vade_mnist5k's gmm_init2 and gmm_init3) share one program. `balanced`: the
    balanced fits (spec with balanced=True) of the phases with balanced_above, shared the same
    way; each compiles at its first call, so a run whose partitions stay even never compiles one."""
    specs = {p.name: {**p.spec, "balanced": True} if balanced else p.spec for p in phases
             if p.kind == "init_prior" and (not balanced or p.spec["balanced_above"] is not None)}
    by_key = {}
    return {name: by_key.setdefault(fit_key(spec), prior_fit(spec, model)) for name, spec in specs.items()}


def fit_key(spec):
    """What an init_prior phase's compiled fit depends on: keep_current and balanced_above are
    decided around it (balanced_above's balanced fit is compiled only where a run needs it)."""
    return program_key({k: v for k, v in spec.items() if k not in ("keep_current", "balanced_above")})


def make_runners(config, model, phases, num_examples, layout):
    """A PhaseRunner per train phase; phases with the same program_key share one compiled chunk
    (e.g. vade_mnist5k's main and main2: one compile in place of two)."""
    runners, by_key = {}, {}
    for p in phases:
        if p.kind == "train":
            key = program_key(p.spec)
            runners[p.name] = PhaseRunner(config, model, p, num_examples, layout, program=by_key.get(key))
            by_key.setdefault(key, runners[p.name])
    return runners


class PhaseRunner:
    """One train phase: its objective, optimizer and compiled chunk (compiled once). `program`,
    an earlier phase's runner with the same program_key, lends its compiled chunk, objective and
    optimizer (the phase's bounds are arguments of the chunk, not constants in it)."""

    def __init__(self, config, model, phase, num_examples, layout=None, program=None):
        self.config, self.phase = config, phase
        self.bounds = np.asarray([phase.start, phase.end], np.int32)
        self.score_step = phase.end - phase.start       # the phase's own step count at its end (choose_restart)
        self.layout = layout = layout or parallel.make_layout(config.parallel, config.train.batch_size)
        self.warmable = not uses_host_loop(config) and (layout.mode == "single" or (
            layout.mode == "shard_map" and jax.process_count() == 1))
        if program is not None:
            self.owner = program.owner
            self.loss, self.full_loss, self.tx, self.run_chunk, self.init_opt = (
                program.loss, program.full_loss, program.tx, program.run_chunk, program.init_opt)
            return
        self.owner = self                       # the runner that owns (and counts) the compiled program
        axis = layout.axis_name
        # The loss on the whole data (choose_restart) runs on one device; the step's loss per device.
        self.loss = make_objective(model, phase.spec["objective"], config.terms)
        self.full_loss = steps.make_full_loss(self.loss, config.eval.batch_size)     # choose_restart's score
        device_loss = make_objective(model, phase.spec["objective"], config.terms, axis_name=axis)
        self.tx = make_optimizer(config.optim, phase.spec["trainable"], phase.spec.get("lr"))
        self.init_opt = opt_init(self.tx)        # the phase's fresh optimizer state (create_state)
        warp = augment.make_augment(phase.spec.get("augment"))
        # Weight schedules count from the phase start (the train step passes step - start);
        # augmentation reads the per-sample keys.
        phase_loss = lambda p, b, r, s: device_loss(p, warp(b, r), r, s)
        t, batch_size = config.train, phase.spec["batch_size"]
        if batch_size % layout.n:
            raise ConfigError(f"phase {phase.name!r}: batch_size={batch_size} does not divide evenly over "
                              f"{layout.n} devices")
        # Restarts read their own data orders (train.restart_batches "own"), so they differ by more than
        # their inits; with one restart the batches are the same either way.
        own = t.restarts if t.restarts > 1 and t.restart_batches == "own" else None
        step_fn = steps.make_lifted_step(phase_loss, self.tx, t.restarts, axis_name=axis, own_batches=own is not None)
        select = steps.select_batch if axis is None else parallel.select_local_batch(layout.n)
        self.trace_count = 0

        def counted(fn):
            def traced(state, x, rng, bounds):
                self.trace_count += 1
                return fn(state, x, rng, bounds)
            return traced

        if uses_host_loop(config):
            one = steps.make_indexed_step(step_fn, num_examples=num_examples, batch_size=batch_size, select=select,
                                          restarts=own)
            self.run_chunk = steps.make_host_chunk(parallel.wrap_chunk(layout, counted(one)), chunk_len=t.log_every,
                                                   step_of=self._step_of)
        else:
            chunk = steps.make_train_chunk(step_fn, num_examples=num_examples, batch_size=batch_size,
                                           chunk_len=t.log_every, select=select, restarts=own)
            self.run_chunk = parallel.wrap_chunk(layout, counted(chunk))

    def precompile(self, params_like, x, rng, table_like=None):
        """Compile this phase's chunk ahead, from the shapes of its state (`Warmup` runs this in
        a thread while earlier phases train); the later call finds the program in JAX's cache."""
        if not self.warmable:
            return
        state_like = jax.eval_shape(lambda p, t: create_state(p, self.tx, neighbours=t), params_like, table_like)
        sharding = (jax.sharding.SingleDeviceSharding(self.layout.devices[0]) if self.layout.mode == "single"
                    else jax.sharding.NamedSharding(self.layout.mesh, jax.sharding.PartitionSpec()))
        state_like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), state_like)
        self.run_chunk.lower(state_like, x, rng, self.bounds).compile()
        self.init_opt.lower(params_like).compile()

    def precompile_full_loss(self, one_like, inputs):
        """Compile choose_restart's score of this phase ahead: `one_like` one restart's parameter
        shapes, `inputs` all the samples (the score reads one eval batch at a time)."""
        batch = min(self.config.eval.batch_size, len(jax.tree.leaves(inputs)[0]))
        batch_like = jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch, *a.shape[1:]), a.dtype), inputs)
        self.full_loss.batch_loss.lower(one_like, batch_like, self.score_step).compile()

    def _step_of(self, state):
        return int(parallel.to_host(state["step"] if self.layout.mode != "pmap" else state["step"][0]))

    def run(self, state, x, rng, ckpt, progress, watch):
        """Train to the phase's end (or until `watch`, the gmvc/monitor.py Monitor, stops early),
        logging every log_every steps and checkpointing every checkpoint_every."""
        t = self.config.train
        ckpt_every = math.ceil(t.checkpoint_every / t.log_every) * t.log_every
        step = self._step_of(state)
        while step < self.phase.end:
            state, chunk_metrics = self.run_chunk(state, x, rng, self.bounds)
            per_restart = parallel.metrics_to_host(self.layout, chunk_metrics)   # each [R]
            step = min(step + t.log_every, self.phase.end)
            _check_finite(step, per_restart)
            values = {k: float(np.mean(v)) for k, v in per_restart.items()}
            if t.restarts > 1:
                values["loss_per_restart"] = [round(float(v), 5) for v in per_restart["loss"]]
            params = state["params"] if self.layout.mode != "pmap" else jax.tree.map(lambda a: a[0], state["params"])
            stop = watch.validate(step, self.phase, params, values)
            values["steps_per_sec"] = progress(step, values, self.phase.name)
            watch.write_events(step, params, values)
            if stop or (step - self.phase.start) % ckpt_every == 0 or step == self.phase.end:
                watch.before_checkpoint(step)
                ckpt.save(step, state if self.layout.mode != "pmap" else jax.tree.map(lambda a: a[0], state))
            if stop:
                break
        return state


def prior_fit(spec, model):
    """The compiled fit(rng, restart, z, table) -> prior of an init_prior phase for restart
    `restart`, whose fit draws from fold_in(rng, restart + 1) (folded inside the program: an
    eager fold_in would compile a program of its own); `table`, the neighbour table of z's rows,
    is read only with spec["smooth"] > 0 or spec["overcluster"] > 0."""
    fit_args = dict(kmeans_iters=spec["kmeans_iters"], em_iters=spec["em_iters"] if spec["method"] == "em" else 0,
                    n_init=spec["n_init"], select=spec["select"], balanced=spec["balanced"])
    smooth, k, over = spec["smooth"], model.num_clusters, spec["overcluster"]
    key = lambda rng, restart: jax.random.fold_in(rng, restart + 1)
    if over:
        return jax.jit(lambda rng, restart, z, table: fit_diag_gmm_merged(key(rng, restart), z, table, k, over, smooth,
                                                                          **fit_args))
    if smooth:
        return jax.jit(lambda rng, restart, z, table: fit_diag_gmm_smoothed(key(rng, restart), z, table, k, smooth,
                                                                           **fit_args))
    return jax.jit(lambda rng, restart, z, table=None: fit_diag_gmm(key(rng, restart), z, k, **fit_args))


def prior_fit_rows(spec, num_train):
    """How many embeddings an init_prior phase fits."""
    return min(num_train, spec["batches"] * spec["batch_size"]) if spec["method"] == "minibatch" else num_train


def init_prior_phase(phase, model, params, x, rng, config, fit=None, table=None, echo=None, embed=None,
                     balanced_fit=None):
    """Refit each restart's mixture prior to its embeddings of the data (all of it for "em", at
    most batches * batch_size samples for "minibatch"). `fit`: prior_fit(phase.spec, model) and
    `embed`: steps.make_embed(model, config.eval.batch_size), when compiled ahead; `table`: the
    neighbour table [R, N, k] of x's rows (spec["smooth"], spec["overcluster"]). With spec["balanced_above"] = t, a
    restart whose current prior partitions its embeddings with an imbalance above t (the KL of
    the cluster sizes from the uniform, as keep_or_replace scores them) is fitted by
    `balanced_fit` (make_fits(..., balanced=True)[phase.name]; by default built here), the others
    by `fit`. With spec["keep_current"], a restart keeps its prior unless the new fit
    scores better on the same embeddings (keep_or_replace); `echo` reports each choice. The
    restarts' priors are stacked on the host (numpy)."""
    spec = phase.spec
    if spec["method"] == "minibatch":
        n = prior_fit_rows(spec, len(x))
        x = x[np.asarray(jax.random.permutation(jax.random.fold_in(rng, 0), len(x)))[:n]]
    embed = embed or steps.make_embed(model, config.eval.batch_size)
    fit = fit or prior_fit(spec, model)
    priors = []
    for r in range(config.train.restarts):
        params_r = jax.tree.map(lambda a: a[r], params)
        z = embed(params_r, x)
        current = jax.device_get(prior_report(params_r["prior"], z)) if uses_current(spec) else None
        uneven = partition_imbalance(current[0]) if spec["balanced_above"] is not None else None
        balanced = uneven is not None and uneven > spec["balanced_above"]
        if balanced:
            balanced_fit = balanced_fit or prior_fit({**spec, "balanced": True}, model)
        if uneven is not None and echo:
            echo(f"phase {phase.name!r}{f' restart {r}' if config.train.restarts > 1 else ''}: the current "
                 f"partition's imbalance {uneven:.4f} is "
                 f"{'above' if balanced else 'within'} balanced_above={spec['balanced_above']}: a "
                 f"{'balanced' if balanced else 'plain'} fit", flush=True)
        new = (balanced_fit if balanced else fit)(rng, r, z, None if table is None else np.asarray(table[r]))
        if spec["keep_current"]:
            new = keep_or_replace(phase, config, params_r["prior"], new, z, r, echo, current)
        priors.append(jax.device_get(new))
    return {**params, "prior": jax.tree.map(lambda *a: np.stack(a), *priors)}


def uses_current(spec):
    """Whether an init_prior phase scores the prior the model has (keep_current, balanced_above)."""
    return spec["keep_current"] or spec["balanced_above"] is not None


def partition_imbalance(sizes):
    """KL of a partition's cluster sizes [K] from the uniform: 0 when every component is used equally."""
    return float(kl_to_uniform(np.asarray(sizes) / np.sum(sizes)))


def keep_or_replace(phase, config, current, new, z, restart=0, echo=None, current_report=None):
    """init_prior with keep_current: `new` replaces `current` only if it scores better on the
    embeddings z by phase.spec["select"]: "balance" scores the partition (each embedding to its
    most likely component; KL of its cluster sizes from the uniform, lower is better), as
    accuracy sees it, so a prior trained toward even soft usage cannot win by components that
    overlap; "likelihood" the mean log-likelihood of z. A tie keeps `current`; a current prior
    that scores NaN gives way to a fit that does not. `current_report`: prior_report(current, z)
    where the caller has it."""
    select = phase.spec["select"]
    sizes_old, ll_old = jax.device_get(prior_report(current, z)) if current_report is None else current_report
    sizes_new, ll_new = jax.device_get(prior_report(new, z))
    if select == "balance":
        s_old, s_new = (-partition_imbalance(n) for n in (sizes_old, sizes_new))
        what = f"partition's imbalance: current {-s_old:.4f}, new fit {-s_new:.4f}"
    else:
        s_old, s_new = float(ll_old), float(ll_new)
        what = f"mean log-likelihood: current {s_old:.4f}, new fit {s_new:.4f}"
    keep = not (s_new > s_old or (math.isnan(s_old) and not math.isnan(s_new)))
    if echo:
        sizes = [sorted(np.asarray(n).astype(int).tolist(), reverse=True) for n in (sizes_old, sizes_new)]
        echo(f"phase {phase.name!r}{f' restart {restart}' if config.train.restarts > 1 else ''}: "
             f"{'kept the current prior' if keep else 'the new fit replaces the prior'} ({what}; cluster sizes of "
             f"the {len(z)} embeddings fitted: current {sizes[0]}, new fit {sizes[1]})", flush=True)
    return current if keep else new


@jax.jit
def prior_report(prior, z):
    """(cluster sizes [K] of z's partition by the prior, mean log-likelihood of z)."""
    return cluster_counts(prior, z), mean_log_likelihood(prior, z)


def neighbours_phase(phase, model, params, data, split, config, echo, embed=None):
    """The neighbour table [R, N_train, k] of each restart's embedding of the training samples."""
    rows = slice(None) if split is None else split[0]
    table = neighbour_phase(phase.spec, model, params, data.x[rows], config.eval.batch_size, embed)
    shared = "" if data.y is None else f" ({agreement(table[0], data.y[rows]):.1%} share its label; reported only)"
    echo(f"phase {phase.name!r}: {phase.spec['k']} nearest neighbours of each sample in the embedding{shared}",
         flush=True)
    return table


def restore_stacked(config, workdir, model):
    """(params of every restart [R, ...], step, phase) from the latest checkpoint of the run in
    `workdir`, or under early stopping (train.patience > 0) from its best step's parameters.
    Nothing in the run directory is written or removed."""
    config.lock()
    checkpoints = pathlib.Path(workdir) / "checkpoints"
    if not checkpoints.is_dir():
        raise CheckpointError(f"no run in {workdir}: {checkpoints} does not exist (train it first, with the same "
                              f"--config and --workdir)")
    phases = build_phases(config)
    ckpt = Checkpointer(checkpoints, config.train.max_checkpoints)
    try:
        step = ckpt.latest_step()
        if not step:
            raise CheckpointError(f"no checkpoint in {checkpoints} (train the run first)")
        like_params = init_params(model.init, jax.random.key(0), config.train.restarts)
        record = monitor.read_record(workdir, step) if config.train.patience > 0 else None
        if record and record["best_step"]:
            step = record["best_step"]
            return monitor.restore_best(workdir, step, like_params), step, phases[resume_index(phases, step)]
        phase = phases[resume_index(phases, step)]
        tx = make_optimizer(config.optim, phase.spec["trainable"], phase.spec.get("lr"))
        table_shape = ckpt.saved_shape(step, "neighbours") if uses_neighbours(phase.spec) else None
        like = create_state(like_params, tx, neighbours=None if table_shape is None else np.zeros(table_shape, np.int32))
        stacked = jax.tree.map(parallel.to_host, ckpt.restore(step, like)["params"])
    finally:
        ckpt.close()
    return stacked, step, phase


def restore_params(config, workdir, data_shape, restart=0):
    """(model, params of one restart, step) from the run in `workdir`, without its data."""
    model = make_model(config.model, data_shape)
    stacked, step, _ = restore_stacked(config, workdir, model)
    if not 0 <= restart < config.train.restarts:
        raise CheckpointError(f"run {workdir}: restart {restart} is not among its {config.train.restarts}")
    return model, jax.tree.map(lambda a: a[restart], stacked), step


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
    stacked, step, phase = restore_stacked(config, workdir, model)
    runner = PhaseRunner(config, model, phase, len(data.x))
    if step < config.train.steps:
        echo(f"note: the run in {workdir} gives its parameters of step {step} of {config.train.steps} (where it "
             f"stopped, or its best step under early stopping)", flush=True)
    inputs = model_inputs(model, data)
    if config.train.restarts > 1:
        params, _ = choose_restart(config, runner, model, stacked, inputs)
    else:
        params = jax.tree.map(lambda a: a[0], stacked)
    return Run(config, data, model, inputs, params, step)


RESTART_CHOICES = ("objective", "balance")
RESTART_BATCHES = ("own", "shared")


def choose_restart(config, runner, model, stacked_params, x):
    """Pick a restart without labels: the lowest objective of the last train phase on the whole
    data, or (train.restart_choice="balance", for data with roughly balanced classes) the most
    even cluster usage, KL(mean_n q(c | x_n) || Uniform(K)) over the whole data."""
    restarts = config.train.restarts
    unstack = lambda r: jax.tree.map(lambda a: a[r], stacked_params)
    full_loss = runner.full_loss
    step = runner.score_step
    losses = [full_loss(unstack(r), x, step) for r in range(restarts)]
    info = {"restart_objective": [round(v, 5) for v in losses]}
    scores = losses
    if config.train.restart_choice == "balance" and model.num_clusters:
        predict = steps.make_predict(model, config.eval.batch_size)
        scores = []
        for r in range(restarts):
            usage = np.exp(predict(unstack(r), x)["log_gamma"].astype(np.float64)).mean(0)
            scores.append(float(np.log(len(usage)) + np.sum(usage * np.log(np.maximum(usage, 1e-30)))))
        info["restart_imbalance"] = [round(v, 5) for v in scores]
    best = int(np.nanargmin(scores)) if np.isfinite(scores).any() else 0
    return unstack(best), {"chosen_restart": best, **info}


def evaluate(config, model, params, data, workdir, rng, echo=print, inputs=None, write=True, events=None, step=0):
    """Predict every sample, score against labels if any, write predictions and plots (`write`:
    this process writes files), and the final TensorBoard images and projector embeddings."""
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
    else:                                                    # no clusters: colour by label
        gamma, clusters = None, (data.y if data.y is not None else np.zeros(len(data.x), np.int64))
    if not write:
        return summary
    if k:
        export.write_predictions_csv(workdir / "predictions.csv", gamma, data.y)
    else:                                                    # the latent codes
        export.write_latent_csv(workdir / "predictions.csv", out["z_mean"], data.y)
    samples = np.asarray(jax.device_get(jax.jit(model.sample, static_argnums=2)(params, rng,
                                                                              _samples_per_group(config, model, data))))
    if events is not None:
        events.snapshot(step, params, out=out, samples=samples)
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
