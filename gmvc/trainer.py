"""train_and_evaluate(config, workdir): validate, set up, run the phases, evaluate, write.

A run trains (or resumes) in `workdir`: config.json first, then checkpoints, metrics.jsonl and
TensorBoard events while the phases run, and at the end predictions.csv, the plots and
results.json. With several processes (jax.distributed), every process trains its share and
saves checkpoints together; only process 0 writes logs, events, predictions, plots and results.
"""
import contextlib
import math
import pathlib
import sys
import time
from typing import NamedTuple

import jax
import numpy as np

from gmvc import config as config_lib
from gmvc.data import load_dataset, prepare
from gmvc.eval import clustering, monitor
from gmvc.eval.events import open_events
from gmvc.eval.restarts import choose_restart, describe_choice
from gmvc.run import export
from gmvc.run import workdir as workdir_lib
from gmvc.run.checkpoint import Checkpointer
from gmvc.run.progress import Progress, attended
from gmvc.run.restore import Restored, check_run_exists, load_trained, read_results
from gmvc.training import context, interrupt, parallel
from gmvc.training.phases import fit_reads_table, neighbour_k, resume_index, uses_groups, uses_neighbours
from gmvc.training.state import Tables, create_state, init_params, make_tables
from gmvc.training.warmup import start_warmup
from gmvc.errors import CheckpointError, Interrupted, TrainingError
from gmvc.validate import build_plan


class Position(NamedTuple):
    """Where a run stands between phases: host copies of its state."""
    step: int
    params: dict            # [R, ...]
    opt_state: object       # the resumed phase's optimizer state, else None
    tables: Tables          # the per-sample tables the phases so far made (host arrays)
    resume_at: int          # index of the phase a checkpoint resumes, or -1 for a new run


class Outcome(dict):
    """What train_and_evaluate returns: the summary written to results.json (this dict), and
    `trained`, the trained model as gmvc.run.restore.load_trained would give it (config, model,
    the chosen restart's parameters, step, scaling), so nothing needs reading back."""

    def __init__(self, summary, trained):
        super().__init__(summary)
        self.trained = trained


def train_and_evaluate(config, workdir, echo=print, data=None, write_outputs=True, bar=None):
    """Train (or resume) the run in `workdir` through its phases, then evaluate; returns the
    Outcome: the summary written to results.json, with the trained model as `.trained`. `data`: a Dataset to train on instead of config.data's
    source (the estimators' arrays); `write_outputs=False` skips predictions.csv, the plots and
    the TensorBoard images. With train.validation_fraction > 0 that share of the data does not
    train (gmvc/eval/monitor.py); every output still covers all the samples. `bar`: draw a
    progress bar in place of the progress lines (None: where a person watches and `echo` is
    print; the estimators decide for themselves)."""
    config.lock()
    workdir = pathlib.Path(workdir)
    main_process = jax.process_index() == 0
    plan = build_plan(config, load_dataset(config.data, config.seed) if data is None else data)
    held = workdir_lib.lock(workdir) if main_process else None      # one run at a time in a workdir
    try:
        if main_process:
            workdir_lib.check_same_config(workdir, config_lib.to_dict(plan.config))
        with interrupt.graceful(jax.process_count() == 1):
            bar = (echo is print and attended()) if bar is None else bar
            return _train(plan, workdir, echo if main_process else _silent, write_outputs, bar and main_process)
    finally:
        if held is not None:
            held.release()


def _train(plan, workdir, echo, write_outputs, bar):
    main_process = jax.process_index() == 0
    config, data, scaling = plan.config, plan.data, plan.scaling

    # ------------------------------------------------------------------ data, model and programs
    # The model, the phases, each train phase's compiled chunk of steps and the training inputs
    # placed for the layout (gmvc/training/context.py, gmvc/training/program.py).
    ctx = context.build(plan)
    for note in plan.notes + ([f"input: {ctx.stream_note}"] if ctx.stream_note else []):
        echo(note, flush=True)

    # ------------------------------------------------------------------ checkpoints
    ckpt = Checkpointer(workdir / "checkpoints", config.train.max_checkpoints)
    step = ckpt.latest_valid_step(echo)
    resume_at = resume_index(ctx.phases, step) if step else -1          # a checkpoint past the phases: an error
    params_like = jax.eval_shape(lambda r: init_params(ctx.model.init, r, config.train.restarts), ctx.rngs["init"])
    with contextlib.ExitStack() as cleanup:
        # The phases compile in a background thread from here on, while the parameters initialise.
        warm = start_warmup(ctx, params_like, max(resume_at, 0))
        cleanup.callback(warm.close)
        position = start(ctx, ckpt, step, resume_at, workdir, echo)
        if main_process:    # only now: a start refused by its checkpoints leaves the run's record as it was
            export.write_json(workdir / "config.json", config_lib.to_dict(config))
            if scaling.kind != "none":
                prepare.save(scaling, workdir)

        # -------------------------------------------------------------- evaluators
        # The progress line and metrics.jsonl, TensorBoard events, and the validation split
        # with early stopping (gmvc/eval/monitor.py).
        progress = Progress(workdir / "metrics.jsonl", step, config.train.steps, echo, write=main_process,
                            bar=sys.stdout if bar else None)
        cleanup.callback(progress.close)
        echo = progress.say                                              # above the bar, if any
        events = cleanup.enter_context(contextlib.closing(open_events(ctx, workdir, step, main_process,
                                                                      images=write_outputs)))
        watch = monitor.Monitor(ctx, events, echo)
        watch.resume(ckpt.meta(step) if step else {})

        # -------------------------------------------------------------- the phases
        t_train = time.time()
        try:
            position = run_phases(ctx, position, (ckpt, progress, watch), warm, echo)
        except TrainingError as e:
            raise TrainingError(f"{e}. {_likely_causes(config, data.x)}") from None
        train_seconds = time.time() - t_train
        params = watch.final_params(position.params, ckpt)             # the best step's under early stopping
        ckpt.close()

        # -------------------------------------------------------------- final evaluation
        warm.ready("finish")
        summary, chosen = finish(ctx, params, position.step, (workdir, main_process and write_outputs),
                                 (events, watch), echo)
    summary.update({"steps": position.step, "data_shape": list(data.x.shape[1:]),
                    "input": {"scaling": scaling.kind, "why": scaling.reason, "likelihood": config.model.likelihood},
                    "train_seconds": _train_seconds(workdir, train_seconds, trained=position.step > step),
                    "compiles": sum(p.trace_count for p in ctx.programs.values() if p.owner is p),
                    "parallel": {"mode": ctx.layout.mode, "devices": ctx.layout.n,
                                 "processes": jax.process_count()}})
    if main_process:
        export.write_json(workdir / "results.json", summary)
    echo(f"results: {workdir / 'results.json'}", flush=True)
    best = summary.get("early_stopping", {}).get("best_step")
    trained = Restored(config, ctx.model, chosen, best or position.step, tuple(data.x.shape[1:]), workdir,
                       summary["chosen_restart"], scaling)
    return Outcome(summary, trained)


def start(ctx, ckpt, step, resume_at, workdir, echo):
    """The Position a run starts from: fresh parameters, or the checkpoint at `step`."""
    config = ctx.config
    params = jax.tree.map(np.asarray, init_params(ctx.model.init, ctx.rngs["init"], config.train.restarts))
    if not step:
        split = "" if ctx.split is None else f"; {len(ctx.split[1])} held out for validation"
        k = ctx.model.num_clusters
        clusters = f"; {k} clusters (model.num_clusters)" if k else ""
        echo(f"Starting a new run in {workdir} ({len(ctx.data.x)} samples from {ctx.data.name!r}{clusters}{split}"
             f"{_layout_note(ctx.layout)})", flush=True)
        return Position(0, params, None, Tables(), -1)
    phase = ctx.phases[resume_at]
    restarts, n = config.train.restarts, len(ctx.x_train)
    tables_like = Tables(
        np.zeros((restarts, n, neighbour_k(ctx.phases, resume_at)), np.int32) if uses_neighbours(phase.spec) else None,
        np.zeros((restarts, n), np.int32) if uses_groups(phase.spec) else None).to_dict()
    like = create_state(params, ctx.programs[phase.name].tx)._asdict()
    state, tables = restore_state(ckpt, step, ctx.layout, like, tables_like)
    echo(f"Resuming from checkpoint {ckpt.path(step)} (step {step} of {config.train.steps}, "
         f"phase {phase.name!r})", flush=True)
    return Position(step, state["params"], state["opt_state"], Tables(**tables), resume_at)


def restore_state(ckpt, step, layout, like, tables_like):
    """(state, tables) of checkpoint `step` (written by any number of devices) as host arrays shaped
    like the dicts `like` and `tables_like`; placed for the layout by the phase that reads them."""
    if layout.mode == "shard_map":
        like, tables_like = parallel.put_state(layout, (like, tables_like))
    return jax.tree.map(parallel.to_host, ckpt.restore(step, like, tables_like))


def run_phases(ctx, position, logs, warm, echo):
    """Run every phase from where `position` stands; returns the Position after the last one.
    `logs`: (checkpointer, progress, monitor), which the train phases write at log steps."""
    watch = logs[2]
    if watch.stopped:
        echo(f"the run stopped early at step {position.step} (train.patience={ctx.config.train.patience}); "
             f"not training further", flush=True)
    preloading = False
    for i, phase in enumerate(ctx.phases):
        if i < position.resume_at or watch.stopped:
            continue
        if interrupt.requested():
            raise Interrupted(f"interrupted before phase {phase.name!r}: the same command resumes the run from its "
                              f"checkpoint of step {position.step}")
        warm.ready(phase.name)
        tables = position.tables
        if phase.kind == "init_prior":
            rng = jax.random.fold_in(ctx.rngs["prior"], i)
            table = tables.neighbours if fit_reads_table(phase.spec) else None
            params = ctx.embedding.init_prior(phase, position.params, ctx.x_train, rng, table, echo, tables.groups)
            if not phase.spec["keep_current"]:     # otherwise init_prior said which prior it kept
                echo(f"phase {phase.name!r}: mixture prior initialised from the embeddings "
                     f"({phase.spec['method']})", flush=True)
            tables = tables._replace(groups=ctx.embedding.groups)
            if phase.spec["pull"]:
                tables = tables._replace(neighbours=ctx.embedding.pull_table(ctx.y_train, echo, phase.name))
            position = position._replace(params=params, tables=tables)
        elif phase.kind == "neighbours":
            table = ctx.embedding.neighbours(phase, position.params, ctx.x_train, ctx.y_train, echo)
            position = position._replace(tables=tables._replace(neighbours=table))
        else:
            if not preloading:
                export.preload()        # once the first train phase's program is ready
                preloading = True
            position = train_phase(ctx, i, position, logs)
    return position


def train_phase(ctx, index, position, logs):
    """One train phase from `position` (from its own checkpoint when it is the resumed phase): the
    loop over chunks of train.log_every steps, with the progress line, validation and early
    stopping, and a checkpoint every train.checkpoint_every steps, at the phase's end and on
    Ctrl-C. `logs`: (checkpointer, progress, monitor)."""
    (ckpt, progress, watch), t, layout = logs, ctx.config.train, ctx.layout
    phase, program = ctx.phases[index], ctx.programs[ctx.phases[index].name]
    first_of_run = lambda a: a if layout.mode != "pmap" else jax.tree.map(lambda x: x[0], a)   # pmap: device 0's

    # ---- the state, the tables and the batches this phase reads
    resumed = index == position.resume_at
    state = create_state(position.params, program.tx, position.step, opt_state=position.opt_state if resumed else None,
                         init_opt=program.init_opt)
    tables = make_tables(position.tables.neighbours if uses_neighbours(phase.spec) else None,
                         position.tables.groups if uses_groups(phase.spec) else None)
    state, tables = parallel.put_state(layout, state), parallel.put_state(layout, tables)
    rng = ctx.rngs["train"]
    batches = program.batches(ctx.x_device, position.tables, rng, position.step)
    ckpt_every = math.ceil(t.checkpoint_every / t.log_every) * t.log_every

    # ---- the loop: one compiled chunk of steps, then the log step
    step = position.step
    try:
        while step < phase.end:
            state, chunk_metrics = program.chunk(state, tables, batches.feed(step), rng, program.bounds)
            step = min(step + t.log_every, phase.end)
            per_restart = parallel.metrics_to_host(layout, chunk_metrics)   # each [R]
            check_finite(step, per_restart)
            values = {k: float(np.mean(v)) for k, v in per_restart.items()}
            if t.restarts > 1:
                values["loss_per_restart"] = [round(float(v), 5) for v in per_restart["loss"]]
            params = first_of_run(state.params)
            stop = watch.validate(step, phase, params, values)
            values["steps_per_sec"] = progress(step, values, phase.name)
            watch.write_events(step, params, values)
            halt = interrupt.requested()
            if stop or halt or watch.improved or (step - phase.start) % ckpt_every == 0 or step == phase.end:
                notes, best = watch.before_checkpoint()
                ckpt.save(step, first_of_run(state)._asdict(), first_of_run(tables).to_dict(),
                          {"phase": phase.name, "data_shape": list(ctx.data.x.shape[1:]), **notes}, val_elbo=best)
            if halt:
                raise Interrupted(f"interrupted at step {step}: its checkpoint is in {ckpt.path(step)}; the same "
                                  f"command resumes the run from there")
            if stop:
                break
    finally:
        batches.close()
    state = parallel.get_state(layout, state)              # one host copy between phases
    return position._replace(step=int(state.step), params=state.params, opt_state=state.opt_state)


def check_finite(step, per_restart):
    bad = {k: np.asarray(v).tolist() for k, v in per_restart.items() if not np.isfinite(v).all()}
    if bad:
        raise TrainingError(f"non-finite values at step {step} in term(s) {sorted(bad)} (values per restart: "
                            f"{bad}); no checkpoint was written for this chunk")


def finish(ctx, stacked, step, where, watchers, echo):
    """Choose the restart, evaluate it on every sample, report validation and early stopping.
    `where`: (workdir, whether this process writes the files); `watchers`: (events, monitor)."""
    (workdir, write), (events, watch) = where, watchers
    config, model = ctx.config, ctx.model
    params, choice = choose_restart(config, ctx.programs[ctx.last_phase], model, stacked, ctx.inputs)
    if config.train.restarts > 1:
        echo(describe_choice(choice, config.train.restarts), flush=True)
    out = clustering.predict_all(model, params, ctx.inputs, config.eval.batch_size)
    summary, clusters = clustering.score(model, out, ctx.data.y)
    if "acc" in summary:
        echo("clustering: " + " ".join(f"{m}={summary[m]:.4f}" for m in clustering.SCORES), flush=True)
    if write:
        samples = clustering.draw_samples(config, model, params, ctx.rngs["sample"], ctx.data.is_image)
        events.snapshot(step, params, out=out, samples=samples)
        summary["files"] = clustering.write_outputs(workdir, config, model, ctx.data, out, clusters, samples)
        for name, path in summary["files"].items():
            echo(f"wrote {name}: {path}", flush=True)
    summary.update(choice)
    summary.update(watch.summary(stacked, choice["chosen_restart"],
                                 step if watch.stopped and step < config.train.steps else None))
    if "early_stopping" in summary:
        e = summary["early_stopping"]
        echo(f"early stopping: outputs from the best step {e['best_step']} (validation ELBO {e['best_val_elbo']})",
             flush=True)
    events.scalars(step, {k: float(summary[k]) for k in clustering.SCORES if k in summary}, "eval")
    if "validation" in summary:
        events.scalars(step, {"val_elbo": summary["validation"]["elbo"]}, "eval")
    return summary, params


class Run(NamedTuple):
    config: object
    data: object
    model: object
    inputs: object
    params: dict       # one restart's parameters: the one training chose
    step: int
    scaling: object    # gmvc.data.prepare.Scaling: how the run read its data (data is already read so)


def load_run(config, workdir, echo=print):
    """The trained run in `workdir` with its data (for generation and the notebooks), restored
    by gmvc.run.restore.load_trained. Nothing in the run directory is written or removed."""
    config.lock()
    check_run_exists(workdir)
    plan = build_plan(config, load_dataset(config.data, config.seed))      # the data as the run read it
    config, data = plan.config, plan.data
    trained = load_trained(workdir, config, echo, data_shape=data.x.shape[1:])
    return Run(config, data, trained.model, context.model_inputs(trained.model, data), trained.params, trained.step,
               trained.scaling)


def _likely_causes(config, x):
    """What to try after a non-finite step, true for the data at hand: its scale only when its
    values are far from a unit scale."""
    lo, hi = prepare.bounds(x)
    rate = f"the learning rate (optim.lr={config.optim.lr}): try a lower one"
    if -10.0 <= lo and hi <= 10.0:
        return f"The data is on a unit scale already (values in [{lo:.3g}, {hi:.3g}]); likely cause: {rate}"
    return (f"Likely causes: the data's scale (values in [{lo:.3g}, {hi:.3g}]: scale them to [0, 1] or to unit "
            f"variance, e.g. --config.data.scaling=auto) or {rate}")


def _train_seconds(workdir, seconds, trained):
    """The run's training time: this call's, or where this call trained nothing (the run had
    finished), the time its results.json records."""
    if not trained:
        try:
            earlier = read_results(workdir).get("train_seconds")
        except CheckpointError:           # a results.json it cannot read: this call's time
            earlier = None
        if isinstance(earlier, (int, float)):
            return earlier
    return round(seconds, 2)


def _silent(*args, **kwargs):
    pass


def _layout_note(layout):
    if layout.mode == "single":
        return ""
    procs = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return f"; data-parallel over {layout.n} devices{procs} ({layout.mode})"
