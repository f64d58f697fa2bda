"""A train phase's compiled program and its loop: the objective, the optimizer and the chunk of
steps (one lax.scan on device, or a host loop for convolutional networks), run from the phase's
first step to its last with a progress line, validation and a checkpoint at the log steps."""
import math

import jax
import numpy as np

from gmvc.errors import Interrupted, TrainingError
from gmvc.objectives import make_objective
from gmvc.training import augment, interrupt, parallel, steps, stream
from gmvc.training.phases import program_key
from gmvc.training.state import create_state, make_optimizer, opt_init


def chunks(run_chunk, state, args, start, end, chunk_len):
    """The training loop: run_chunk(state, *args) -> (state, metrics) from step `start` until
    `end`, `chunk_len` steps a call; yields (state, metrics, step) after each chunk. The caller
    stops early by leaving the loop."""
    step = start
    while step < end:
        state, metrics = run_chunk(state, *args)
        step = min(step + chunk_len, end)
        yield state, metrics, step


def check_finite(step, per_restart):
    bad = {k: np.asarray(v).tolist() for k, v in per_restart.items() if not np.isfinite(v).all()}
    if bad:
        raise TrainingError(f"non-finite values at step {step} in term(s) {sorted(bad)} (values per restart: "
                            f"{bad}); no checkpoint was written for this chunk")


def uses_host_loop(config):
    """train.loop: "scan" runs each chunk of steps in one compiled lax.scan; "host" loops over a
    compiled step on the host; "auto" = host for convolutional networks (see steps.make_host_chunk)."""
    loop = config.train.loop
    return loop == "host" or (loop == "auto" and config.model.net == "conv")


def make_runners(config, model, phases, num_examples, layout, streamed=False):
    """A PhaseRunner per train phase; phases with the same program_key share one compiled chunk
    (e.g. vade_mnist5k's main and main2: one compile in place of two). `streamed`: the batches come
    from the host (gmvc/training/stream.py)."""
    runners, by_key = {}, {}
    for p in phases:
        if p.kind == "train":
            key = program_key(p.spec)
            runners[p.name] = PhaseRunner(config, model, p, num_examples, layout, program=by_key.get(key),
                                          streamed=streamed)
            by_key.setdefault(key, runners[p.name])
    return runners


class PhaseRunner:
    """One train phase: its objective, optimizer and compiled chunk (compiled once). `program`,
    an earlier phase's runner with the same program_key, lends its compiled chunk, objective and
    optimizer (the phase's bounds are arguments of the chunk, not constants in it)."""

    def __init__(self, config, model, phase, num_examples, layout=None, program=None, streamed=False):
        self.config, self.phase, self.streamed = config, phase, streamed
        self.bounds = np.asarray([phase.start, phase.end], np.int32)
        self.score_step = phase.end - phase.start       # the phase's own step count at its end (choose_restart)
        self.layout = layout = layout or parallel.make_layout(config.parallel)
        self.warmable = not streamed and not uses_host_loop(config) and (layout.mode == "single" or (
            layout.mode == "shard_map" and jax.process_count() == 1))
        if program is not None:
            self.owner = program.owner
            self.loss, self.full_loss, self.tx, self.run_chunk, self.init_opt, self.plan, self.own = (
                program.loss, program.full_loss, program.tx, program.run_chunk, program.init_opt, program.plan,
                program.own)
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
        # Restarts read their own data orders (train.restart_batches "own"), so they differ by more than
        # their inits; with one restart the batches are the same either way.
        own = t.restarts if t.restarts > 1 and t.restart_batches == "own" else None
        step_fn = steps.make_lifted_step(phase_loss, self.tx, t.restarts, axis_name=axis, own_batches=own is not None)
        select = steps.select_batch if axis is None else parallel.select_local_batch(layout.n)
        self.trace_count = 0
        self.plan, self.own = None, own is not None

        def counted(fn):
            def traced(state, x, rng, bounds):
                self.trace_count += 1
                return fn(state, x, rng, bounds)
            return traced

        if streamed:
            self.plan = stream.make_plan(num_examples=num_examples, batch_size=batch_size, chunk_len=t.log_every,
                                         restarts=own)
            chunk = stream.make_streamed_chunk(step_fn, batch_size=batch_size, chunk_len=t.log_every,
                                               devices=1 if axis is None else layout.n)
            self.run_chunk = stream.wrap(layout, counted(chunk), own=own is not None)
        elif uses_host_loop(config):
            one = steps.make_indexed_step(step_fn, num_examples=num_examples, batch_size=batch_size, select=select,
                                          restarts=own)
            self.run_chunk = steps.make_host_chunk(parallel.wrap_chunk(layout, counted(one)), chunk_len=t.log_every,
                                                   step_of=self._step_of)
        else:
            chunk = steps.make_train_chunk(step_fn, num_examples=num_examples, batch_size=batch_size,
                                           chunk_len=t.log_every, select=select, restarts=own)
            self.run_chunk = parallel.wrap_chunk(layout, counted(chunk))

    def precompile(self, params_like, x, rng, table_like=None, groups_like=None):
        """Compile this phase's chunk ahead, from the shapes of its state (`Warmup` runs this in
        a thread while earlier phases train); the later call finds the program in JAX's cache."""
        if not self.warmable:
            return
        state_like = jax.eval_shape(lambda p, t, g: create_state(p, self.tx, neighbours=t, groups=g), params_like,
                                    table_like, groups_like)
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
        """Train to the phase's end (or until `watch`, the gmvc/eval/monitor.py Monitor, stops early),
        logging every log_every steps and checkpointing every checkpoint_every."""
        t = self.config.train
        start, run_chunk, feeder = self._step_of(state), self.run_chunk, None
        if self.streamed:
            table = state.get("neighbours")
            feeder = stream.Feeder(x, self.plan, table, rng, self.layout, step=start, end=self.phase.end,
                                   chunk_len=t.log_every, own=self.own)
            run_chunk = feeder(self.run_chunk)
        try:
            return self._run(state, x, rng, ckpt, progress, watch, start, run_chunk)
        finally:
            if feeder is not None:
                feeder.close()

    def _run(self, state, x, rng, ckpt, progress, watch, start, run_chunk):
        t = self.config.train
        ckpt_every = math.ceil(t.checkpoint_every / t.log_every) * t.log_every
        for state, chunk_metrics, step in chunks(run_chunk, state, (x, rng, self.bounds), start, self.phase.end,
                                                 t.log_every):
            per_restart = parallel.metrics_to_host(self.layout, chunk_metrics)   # each [R]
            check_finite(step, per_restart)
            values = {k: float(np.mean(v)) for k, v in per_restart.items()}
            if t.restarts > 1:
                values["loss_per_restart"] = [round(float(v), 5) for v in per_restart["loss"]]
            params = state["params"] if self.layout.mode != "pmap" else jax.tree.map(lambda a: a[0], state["params"])
            stop = watch.validate(step, self.phase, params, values)
            values["steps_per_sec"] = progress(step, values, self.phase.name)
            watch.write_events(step, params, values)
            halt = interrupt.requested()
            if stop or halt or (step - self.phase.start) % ckpt_every == 0 or step == self.phase.end:
                watch.before_checkpoint(step)
                ckpt.save(step, state if self.layout.mode != "pmap" else jax.tree.map(lambda a: a[0], state))
            if halt:
                raise Interrupted(f"interrupted at step {step}: its checkpoint is in {ckpt.path(step)}; the same "
                                  f"command resumes the run from there")
            if stop:
                break
        return state
