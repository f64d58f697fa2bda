"""A train phase's compiled program: its objective, its optimizer, and its chunk of
`train.log_every` steps compiled for the layout, with the batch source that feeds it. The loop
that calls the chunk is the trainer's (gmvc/trainer.py)."""
import jax
import numpy as np

from gmvc.objectives import make_objective
from gmvc.training import augment, parallel, steps, stream
from gmvc.training.phases import program_key, uses_neighbours
from gmvc.training.state import create_state, make_optimizer, opt_init


LOOPS = ("auto", "scan", "host")                 # train.loop
RESTART_BATCHES = ("own", "shared")              # train.restart_batches


def uses_host_loop(config):
    """train.loop: "scan" runs each chunk of steps in one compiled lax.scan; "host" loops over a
    compiled step on the host; "auto" = host for convolutional networks (see steps.make_host_chunk)."""
    loop = config.train.loop
    return loop == "host" or (loop == "auto" and config.model.net == "conv")


def make_programs(config, model, phases, num_examples, layout, streamed=False):
    """A Program per train phase; phases with the same program_key share one compiled chunk (e.g.
    vade_mnist5k's main and main2: one compile in place of two). `streamed`: the batches come from
    the host (gmvc/training/stream.py)."""
    programs, by_key = {}, {}
    for p in phases:
        if p.kind == "train":
            key = program_key(p.spec)
            programs[p.name] = Program(config, model, p, num_examples, layout, shared=by_key.get(key),
                                       streamed=streamed)
            by_key.setdefault(key, programs[p.name])
    return programs


class DeviceBatches:
    """The batch source of the in-memory path: every training sample sits on the device(s) and each
    step of a chunk selects its batch there (steps.make_train_chunk)."""

    def __init__(self, x_device):
        self.x = x_device

    def feed(self, step):
        return self.x

    def close(self):
        pass


class Program:
    """One train phase's objective, optimizer and compiled chunk (compiled once): chunk(state,
    tables, feed, rng, bounds) -> (state, metrics). `shared`, an earlier phase's Program with the
    same program_key, lends its chunk, objective and optimizer (the phase's bounds are arguments of
    the chunk, not constants in it)."""

    def __init__(self, config, model, phase, num_examples, layout, shared=None, streamed=False):
        self.config, self.phase, self.layout, self.streamed = config, phase, layout, streamed
        self.bounds = np.asarray([phase.start, phase.end], np.int32)
        self.score_step = phase.end - phase.start       # the phase's own step count at its end (choose_restart)
        self.warmable = not streamed and not uses_host_loop(config) and (layout.mode == "single" or (
            layout.mode == "shard_map" and jax.process_count() == 1))
        if shared is not None:
            self.owner = shared.owner
            self.loss, self.full_loss, self.tx, self.chunk, self.init_opt, self.plan, self.own = (
                shared.loss, shared.full_loss, shared.tx, shared.chunk, shared.init_opt, shared.plan, shared.own)
            return
        self.owner = self                       # the Program that owns (and counts) the compiled chunk
        self.trace_count = 0
        t, batch_size, axis = config.train, phase.spec["batch_size"], layout.axis_name
        # The loss on the whole data (choose_restart) runs on one device; the step's loss per device.
        self.loss = make_objective(model, phase.spec["objective"], config.terms)
        self.full_loss = steps.make_full_loss(self.loss, config.eval.batch_size)
        device_loss = make_objective(model, phase.spec["objective"], config.terms, axis_name=axis)
        self.tx = make_optimizer(config.optim, phase.spec["trainable"], phase.spec.get("lr"))
        self.init_opt = opt_init(self.tx)        # the phase's fresh optimizer state (create_state)
        warp = augment.make_augment(phase.spec.get("augment"))
        # Weight schedules count from the phase start (the step passes step - start); augmentation
        # reads the per-sample keys.
        phase_loss = lambda p, b, r, s: device_loss(p, warp(b, r), r, s)
        # Restarts read their own data orders (train.restart_batches "own"), so they differ by more
        # than their inits; with one restart the batches are the same either way.
        own = t.restarts if t.restarts > 1 and t.restart_batches == "own" else None
        self.own = own is not None
        step_fn = steps.make_lifted_step(phase_loss, self.tx, t.restarts, axis_name=axis, own_batches=self.own)
        select = steps.select_batch if axis is None else parallel.select_local_batch(layout.n)
        self.plan = None
        if streamed:
            self.plan = stream.make_plan(num_examples=num_examples, batch_size=batch_size, chunk_len=t.log_every,
                                         restarts=own)
            body = stream.make_streamed_chunk(step_fn, batch_size=batch_size, chunk_len=t.log_every,
                                              devices=1 if axis is None else layout.n)
            self.chunk = parallel.wrap_chunk(layout, self._counted(body),
                                             stream.feed_spec(uses_neighbours(phase.spec), self.own))
        elif uses_host_loop(config):
            one = steps.make_indexed_step(step_fn, num_examples=num_examples, batch_size=batch_size, select=select,
                                          restarts=own)
            self.chunk = steps.make_host_chunk(parallel.wrap_chunk(layout, self._counted(one)),
                                               chunk_len=t.log_every, step_of=self.step_of)
        else:
            body = steps.make_train_chunk(step_fn, num_examples=num_examples, batch_size=batch_size,
                                          chunk_len=t.log_every, select=select, restarts=own)
            self.chunk = parallel.wrap_chunk(layout, self._counted(body))

    def _counted(self, fn):
        def traced(*args):
            self.trace_count += 1
            return fn(*args)
        return traced

    def batches(self, x, tables, rng):
        """The phase's batch source: DeviceBatches of the placed inputs `x`, or (streamed) a
        StreamedBatches reading the host inputs `x` and drawing neighbours from `tables`."""
        if not self.streamed:
            return DeviceBatches(x)
        return stream.StreamedBatches(x, self.plan, tables.neighbours, rng, self.layout, end=self.phase.end,
                                      chunk_len=self.config.train.log_every, own=self.own)

    def step_of(self, state):
        return int(parallel.to_host(state.step if self.layout.mode != "pmap" else state.step[0]))

    def precompile(self, params_like, x, rng, tables_like):
        """Compile this phase's chunk ahead, from the shapes of its state (`Warmup` runs this in a
        thread while earlier phases train); the later call finds the program in JAX's cache."""
        if not self.warmable:
            return
        state_like = jax.eval_shape(lambda p: create_state(p, self.tx), params_like)
        sharding = (jax.sharding.SingleDeviceSharding(self.layout.devices[0]) if self.layout.mode == "single"
                    else jax.sharding.NamedSharding(self.layout.mesh, jax.sharding.PartitionSpec()))
        place = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)
        self.chunk.lower(jax.tree.map(place, state_like), jax.tree.map(place, tables_like), x, rng,
                         self.bounds).compile()
        self.init_opt.lower(params_like).compile()

    def precompile_full_loss(self, one_like, inputs):
        """Compile choose_restart's score of this phase ahead: `one_like` one restart's parameter
        shapes, `inputs` all the samples (the score reads one eval batch at a time)."""
        batch = min(self.config.eval.batch_size, len(jax.tree.leaves(inputs)[0]))
        batch_like = jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch, *a.shape[1:]), a.dtype), inputs)
        self.full_loss.batch_loss.lower(one_like, batch_like, self.score_step).compile()

