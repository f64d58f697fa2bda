"""train_and_evaluate(config, workdir): validate, set up, run the phases, evaluate, write.

A run trains (or resumes) in `workdir`: config.json first, then checkpoints, metrics.jsonl and
TensorBoard events while the phases run, and at the end predictions.csv, the plots and
results.json. With several processes (jax.distributed), every process trains its share and
saves checkpoints together; only process 0 writes logs, events, predictions, plots and results.
"""
import contextlib
import math
import pathlib
import time
from typing import NamedTuple

import jax
import numpy as np

from gmvc import config as config_lib
from gmvc.core.k_moves import cluster_slots, on_slots
from gmvc.data import load_dataset, prepare
from gmvc.eval import clustering, evaluators, k_selection
from gmvc.eval.writer import Writer
from gmvc.eval.restarts import choose_restart, describe_choice
from gmvc.run import export
from gmvc.run import workdir as workdir_lib
from gmvc.run.checkpoint import Checkpointer
from gmvc.run.progress import attended
from gmvc.run.restore import Restored, check_run_exists, load_trained, read_results
from gmvc.training import context, interrupt, k_auto, parallel
from gmvc.training.phases import fit_reads_table, resume_index, uses_groups, uses_neighbours
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
    Outcome: the summary written to results.json, with the trained model as `.trained`. `data`:
    a Dataset to train on instead of config.data's source (the estimators' arrays);
    `write_outputs=False` skips predictions.csv, the plots and the TensorBoard images. With
    train.validation_fraction > 0 that share of the data does not train (gmvc/eval/evaluators.py);
    every output still covers all the samples. `echo` prints the run's lines (process 0 only);
    `bar`: draw a progress bar in place of the progress lines (None: where a person watches and
    `echo` is print; the estimators decide for themselves)."""
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
            writer = Writer(echo, main_process)
            return _train(plan, workdir, writer, write_outputs, bar)
    finally:
        if held is not None:
            held.release()


class Logs(NamedTuple):
    """What a train phase writes at its log steps."""
    ckpt: Checkpointer
    writer: Writer
    evaluators: list             # evaluator(step, phase, params, values) -> dict (gmvc/eval/evaluators.py)
    stopper: object              # evaluators.EarlyStopping, or None
    moves: object = None         # k_auto.KMoves with model.num_clusters=auto, or None


def _train(plan, workdir, writer, write_outputs, bar):
    config, data, scaling = plan.config, plan.data, plan.scaling
    say = writer.say

    # ------------------------------------------------------------------ data, model and programs
    # The model, the phases, each train phase's compiled chunk of steps and the training inputs
    # placed for the layout (gmvc/training/context.py, gmvc/training/program.py).
    ctx = context.build(plan, say)
    k_auto.check(config, ctx.model, ctx.streamed)
    for note in plan.notes + ([f"input: {ctx.stream_note}"] if ctx.stream_note else []):
        say(note)

    # ------------------------------------------------------------------ checkpoints
    ckpt = Checkpointer(workdir / "checkpoints", config.train.max_checkpoints)
    params_like = jax.eval_shape(lambda r: init_params(ctx.model.init, r, config.train.restarts), ctx.rngs["init"])
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(ckpt.close)                # also when a start is refused or training fails
        step = ckpt.latest_valid_step(say)
        resume_at = resume_index(ctx.phases, step) if step else -1      # a checkpoint past the phases: an error
        # The phases compile in a background thread from here on, while the parameters initialise.
        warm = start_warmup(ctx, params_like, max(resume_at, 0))
        cleanup.callback(warm.close)
        position = start(ctx, ckpt, step, resume_at, workdir, say)
        if writer.main:     # only now: a start refused by its checkpoints leaves the run's record as it was
            export.write_json(workdir / "config.json", config_lib.to_dict(config))
            if scaling.kind != "none":
                prepare.save(scaling, workdir)

        # -------------------------------------------------------------- evaluators and the writer
        # Each log step: the evaluators' values (training and validation ELBO), early stopping on
        # the validation ELBO, and the writer's metrics.jsonl, progress line and TensorBoard.
        writer.open(ctx, workdir, step, bar, images=write_outputs)
        cleanup.callback(writer.close)
        stopper = evaluators.EarlyStopping(config.train.patience) if config.train.patience > 0 else None
        if stopper is not None and step:
            stopper.resume(ckpt.meta(step).get("early_stopping"))
            if stopper.best_step is not None and stopper.best_step not in ckpt.steps():
                say(f"note: the best step's checkpoint ({stopper.best_step}) is gone: early stopping starts "
                    f"its count afresh from step {step}")
                stopper = evaluators.EarlyStopping(config.train.patience)
        moves = k_auto.KMoves(ctx, say) if config.choose_k.auto else None
        if moves is not None and step:
            moves.resume(ckpt.meta(step).get("choose_k"))
        logs = Logs(ckpt, writer, evaluators.make_evaluators(ctx), stopper, moves)

        # -------------------------------------------------------------- the phases
        t_train = time.time()
        try:
            position = run_phases(ctx, position, logs, warm)
        except TrainingError as e:
            raise TrainingError(f"{e}. {_likely_causes(config, data.x)}") from None
        train_seconds = time.time() - t_train
        params = position.params
        if stopper is not None and stopper.best_step is not None:     # the outputs come from the best step
            params = jax.tree.map(parallel.to_host, ckpt.restore_params(stopper.best_step, params))
        ckpt.close()

        # -------------------------------------------------------------- final evaluation
        warm.ready("finish")
        summary, chosen = finish(ctx, params, position.step, logs, workdir if write_outputs else None)
    summary.update({"steps": position.step, "data_shape": list(data.x.shape[1:]),
                    "input": {"scaling": scaling.kind, "why": scaling.reason, "likelihood": config.model.likelihood},
                    "train_seconds": _train_seconds(workdir, train_seconds, trained=position.step > step),
                    "compiles": sum(p.trace_count for p in ctx.programs.values() if p.owner is p),
                    "parallel": {"mode": ctx.layout.mode, "devices": ctx.layout.n,
                                 "processes": jax.process_count()}})
    if writer.main:
        export.write_json(workdir / "results.json", summary)
    say(f"results: {workdir / 'results.json'}")
    best = summary.get("early_stopping", {}).get("best_step")
    trained = Restored(config, ctx.model, chosen, best or position.step, tuple(data.x.shape[1:]), workdir,
                       summary["chosen_restart"], scaling)
    return Outcome(summary, trained)


def start(ctx, ckpt, step, resume_at, workdir, say):
    """The Position a run starts from: fresh parameters, or the checkpoint at `step`."""
    config = ctx.config
    params = jax.tree.map(np.asarray, init_params(ctx.model.init, ctx.rngs["init"], config.train.restarts))
    if not step:
        split = "" if ctx.split is None else f"; {len(ctx.split[1])} held out for validation"
        k = ctx.model.num_clusters
        clusters = f"; {k} clusters (model.num_clusters)" if k else ""
        say(f"Starting a new run in {workdir} ({len(ctx.data.x)} samples from {ctx.data.name!r}{clusters}{split}"
            f"{_layout_note(ctx.layout)})")
        return Position(0, params, None, Tables(), -1)
    phase = ctx.phases[resume_at]
    tables_like = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), ctx.tables_like(resume_at)).to_dict()
    like = create_state(params, ctx.programs[phase.name].tx)._asdict()
    if ctx.layout.mode == "shard_map":            # written by any number of devices, read for this mesh
        like, tables_like = parallel.put_state(ctx.layout, (like, tables_like))
    state, tables = jax.tree.map(parallel.to_host, ckpt.restore(step, like, tables_like))
    say(f"Resuming from checkpoint {ckpt.path(step)} (step {step} of {config.train.steps}, phase {phase.name!r})")
    return Position(step, state["params"], state["opt_state"], Tables(**tables), resume_at)


def run_phases(ctx, position, logs, warm):
    """Run every phase from where `position` stands; returns the Position after the last one."""
    say, stopped = logs.writer.say, logs.stopper is not None and logs.stopper.stopped
    if stopped:
        say(f"the run stopped early at step {position.step} (train.patience={ctx.config.train.patience}); "
            f"not training further")
    preloading = False
    for i, phase in enumerate(ctx.phases):
        if i < position.resume_at or stopped:
            continue
        if interrupt.requested():
            raise Interrupted(f"interrupted before phase {phase.name!r}: the same command resumes the run from its "
                              f"checkpoint of step {position.step}")
        warm.ready(phase.name)
        tables = position.tables
        if phase.kind == "init_prior":
            rng = jax.random.fold_in(ctx.rngs["prior"], i)
            table = tables.neighbours if fit_reads_table(phase.spec) else None
            params = ctx.embedding.init_prior(phase, position.params, ctx.x_train, rng, table, tables.groups)
            if not phase.spec["keep_current"]:     # otherwise init_prior said which prior it kept
                say(f"phase {phase.name!r}: mixture prior initialised from the embeddings ({phase.spec['method']})")
            tables = tables._replace(groups=ctx.embedding.groups)
            if phase.spec["pull"]:
                tables = tables._replace(neighbours=ctx.embedding.pull_table(ctx.y_train, phase.name))
            if logs.moves is not None:
                params, tables = logs.moves.after_fit(i, position.step, params, tables)
            position = position._replace(params=params, tables=tables)
        elif phase.kind == "neighbours":
            table = ctx.embedding.neighbours(phase, position.params, ctx.x_train, ctx.y_train)
            position = position._replace(tables=tables._replace(neighbours=table))
        else:
            if not preloading:
                export.preload()        # once the first train phase's program is ready
                preloading = True
            position = train_phase(ctx, i, position, logs)
            stopped = logs.stopper is not None and logs.stopper.stopped
    return position


def train_phase(ctx, index, position, logs):
    """One train phase from `position` (from its own checkpoint when it is the resumed phase): the
    loop over chunks of train.log_every steps, each followed by a log step (the evaluators, early
    stopping in the last phase, the writer), with a checkpoint every train.checkpoint_every
    steps, at a new best validation ELBO, at the phase's end and on Ctrl-C."""
    t, layout, stopper = ctx.config.train, ctx.layout, logs.stopper
    phase, program = ctx.phases[index], ctx.programs[ctx.phases[index].name]
    first_of_run = lambda a: a if layout.mode != "pmap" else jax.tree.map(lambda x: x[0], a)   # pmap: device 0's

    # ---- the state, the tables and the batches this phase reads
    resumed = index == position.resume_at
    state = create_state(position.params, program.tx, position.step, opt_state=position.opt_state if resumed else None,
                         init_opt=program.init_opt)
    tables = make_tables(position.tables.neighbours if uses_neighbours(phase.spec) else None,
                         position.tables.groups if uses_groups(phase.spec) else None)
    rng = ctx.rngs["train"]
    batches = program.batches(ctx.x_device, tables, rng)        # the tables this phase reads
    state, tables = parallel.put_state(layout, state), parallel.put_state(layout, tables)
    ckpt_every = math.ceil(t.checkpoint_every / t.log_every) * t.log_every
    watching = stopper is not None and phase.name == ctx.last_phase     # early stopping: the last phase only

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
            for evaluate in logs.evaluators:
                values.update(evaluate(step, phase, params, values))
            improved = watching and stopper.update(step, values["val_elbo"])
            stop = watching and stopper.stopped and step < phase.end
            if stop:
                logs.writer.say(f"early stopping at step {step}: the validation ELBO has not improved for "
                                f"{stopper.bad_count} log steps (best {stopper.best_value:.5g} at step "
                                f"{stopper.best_step})")
            if logs.moves is not None and not stop:
                state, tables = logs.moves.after_chunk(index, step, state, tables)
                params = first_of_run(state.params)
                if logs.moves.record()["path"]:
                    values["k"] = float(logs.moves.record()["path"][-1]["k"][0])     # restart 0's K
            logs.writer.log(step, phase.name, values, params)
            halt = interrupt.requested()
            if stop or halt or improved or (step - phase.start) % ckpt_every == 0 or step == phase.end:
                logs.writer.flush()
                meta = {"phase": phase.name, "data_shape": list(ctx.data.x.shape[1:])}
                if stopper is not None:
                    meta["early_stopping"] = stopper.record()
                if logs.moves is not None:
                    meta["choose_k"] = logs.moves.record()
                logs.ckpt.save(step, first_of_run(state)._asdict(), first_of_run(tables).to_dict(), meta,
                               val_elbo=values["val_elbo"] if improved else None)
            if halt:
                raise Interrupted(f"interrupted at step {step}: its checkpoint is in {logs.ckpt.path(step)}; the "
                                  f"same command resumes the run from there")
            if stop:
                break
    finally:
        batches.close()
    state = parallel.get_state(layout, state)              # one host copy between phases
    position = position._replace(step=int(state.step), params=state.params, opt_state=state.opt_state)
    if logs.moves is not None and tables.groups is not None:   # the groups the moves changed go on
        position = position._replace(tables=position.tables._replace(groups=parallel.get_state(layout, tables.groups)))
    return position


def check_finite(step, per_restart):
    bad = {k: np.asarray(v).tolist() for k, v in per_restart.items() if not np.isfinite(v).all()}
    if bad:
        raise TrainingError(f"non-finite values at step {step} in term(s) {sorted(bad)} (values per restart: "
                            f"{bad}); no checkpoint was written for this chunk")


def finish(ctx, stacked, step, logs, outputs):
    """Choose the restart, evaluate it on every sample, report validation and early stopping;
    returns (summary, the chosen restart's parameters). `outputs`: the workdir to write
    predictions, plots and images to (process 0), or None."""
    config, model, writer, stopper = ctx.config, ctx.model, logs.writer, logs.stopper
    params, choice = choose_restart(config, ctx.programs[ctx.last_phase], model, stacked, ctx.inputs)
    if config.train.restarts > 1:
        writer.say(describe_choice(choice, config.train.restarts))
    slots = cluster_slots(config, model, params)             # auto: the live slots are the clusters
    out = on_slots(clustering.predict_all(model, params, ctx.inputs, config.eval.batch_size), slots)
    summary, clusters = clustering.score(model, out, ctx.data.y)
    if "acc" in summary:
        writer.say("clustering: " + " ".join(f"{m}={summary[m]:.4f}" for m in clustering.SCORES))
    if outputs is not None and writer.main:
        samples = clustering.draw_samples(config, model, params, ctx.rngs["sample"], ctx.data.is_image)
        if len(slots) < model.num_clusters:                  # auto: the live slots' rows
            samples = samples[slots]
        writer.snapshot(step, params, out=out, samples=samples)
        summary["files"] = clustering.write_outputs(outputs, config, model, ctx.data, out, clusters, samples)
        for name, path in summary["files"].items():
            writer.say(f"wrote {name}: {path}")
    summary.update(choice)
    if logs.moves is not None:
        summary["choose_k"] = logs.moves.summary(params, choice["chosen_restart"])
        writer.say(k_selection.report(summary["choose_k"]))
        if outputs is not None and writer.main:
            summary.setdefault("files", {})["k_selection"] = str(k_selection.plot(summary["choose_k"], outputs))
    validation = [e for e in logs.evaluators if isinstance(e, evaluators.Validation)]
    if validation:
        summary["validation"] = validation[0].final(stacked, choice["chosen_restart"])
    if stopper is not None:
        summary["early_stopping"] = stopper.summary(step if stopper.stopped and step < config.train.steps else None)
        e = summary["early_stopping"]
        writer.say(f"early stopping: outputs from the best step {e['best_step']} (validation ELBO "
                   f"{e['best_val_elbo']})")
    writer.scalars(step, {k: float(summary[k]) for k in clustering.SCORES if k in summary}, "eval")
    if "validation" in summary:
        writer.scalars(step, {"val_elbo": summary["validation"]["elbo"]}, "eval")
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


def _layout_note(layout):
    if layout.mode == "single":
        return ""
    procs = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return f"; data-parallel over {layout.n} devices{procs} ({layout.mode})"
