"""Streamed training input: the batches assembled on the host and sent to the device ahead of the
step, for data larger than the device should hold (`parallel.stream`, `parallel.device_budget_mb`).

The in-memory path puts every training sample on the device once and each step selects its batch
there (steps.make_train_chunk). The streamed path keeps the samples on the host. For each chunk of
`train.log_every` steps, a small compiled program (make_plan) computes the rows every step of the
chunk reads: the batch (steps.make_epoch_order, the same permutation per epoch) and, where the
phase reads neighbours, each sample's drawn neighbour (neighbours.draw with the same per-sample
keys). The host gathers those rows and transfers them while the previous chunk trains (a
background thread: double buffering), and make_streamed_chunk trains on them. Each step then
sees the same rows and the same noise as the in-memory path, so the two give the same parameters
(tests/test_stream.py checks them bit for bit).

Data placement: one device, or shard_map over the devices of one or several processes (each
device receives its share of every batch; each process reads only the rows its own devices
train on). Host memory holds the training samples as loaded (Rows read from a file hold only
the rows in use: gmvc/data/rows.py); the device holds two chunks of batches.
"""
import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gmvc.errors import ConfigError
from gmvc.objectives import make_batch
from gmvc.training import steps
from gmvc.training.parallel import AXIS, local_share, process_block, to_host

STREAM_CHOICES = ("auto", "on", "off")


def decide(parallel_cfg, nbytes, layout, host_loop):
    """(stream?, reason): whether the training inputs (`nbytes` as they would sit on the device)
    are streamed. "auto" streams above parallel.device_budget_mb; "on" always (an error where
    the streamed path does not run); "off" never."""
    mode, budget = parallel_cfg.stream, parallel_cfg.device_budget_mb
    size = f"{nbytes / 2 ** 20:,.1f} MB of training inputs"
    unsupported = _unsupported(layout, host_loop)
    if mode == "off":
        return False, None
    if mode == "on":
        if unsupported:
            raise ConfigError(f"parallel.stream='on' {unsupported}")
        return True, f"streamed from the host: {size}, parallel.stream='on'"
    if nbytes <= budget * 2 ** 20:
        return False, None
    if unsupported:
        return False, f"{size} exceed parallel.device_budget_mb={budget:g}, but the streamed path {unsupported}: " \
                      f"the data goes on the device"
    return True, f"streamed from the host: {size} exceed parallel.device_budget_mb={budget:g}"


def _unsupported(layout, host_loop):
    if host_loop:
        return "does not run with the host loop of convolutional networks (train.loop='host' or a conv net)"
    if layout.mode == "pmap":
        return "does not run with parallel.mode='pmap' (use shard_map)"
    return None


def make_plan(*, num_examples, batch_size, chunk_len, restarts=None):
    """plan(step0, table, rng) -> {"idx": [L, B] (or [L, R, B] with `restarts`, each restart's own
    order), "nbr": [L, R, B] (only with a neighbour table [R, N, k])}: the rows of the L steps from
    step0, as make_train_chunk selects them (its epoch order, its per-sample keys)."""

    def plan(step0, table, rng):
        data_rng, step_rng = jax.random.split(rng)
        steps_per_epoch, order = steps.make_epoch_order(data_rng, num_examples, batch_size, restarts)

        def body(perm, step):
            perm = steps.epoch_perm(order, perm, step, steps_per_epoch)
            out = {"idx": steps.batch_rows(perm, step, steps_per_epoch, batch_size)}
            if table is not None:
                out["nbr"] = steps.draw_neighbours(table, out["idx"], steps.step_keys(step_rng, step, batch_size))
            return perm, out

        _, out = jax.lax.scan(body, order(step0 // steps_per_epoch), step0 + jnp.arange(chunk_len))
        return out

    return jax.jit(plan)


def make_streamed_chunk(train_step, *, batch_size, chunk_len, devices=1):
    """chunk(state, tables, feed, rng, bounds) -> (state, metrics), make_train_chunk's contract
    with the rows given: feed {"idx": [L, B] (or [L, R, B]), "rows": the inputs of those rows [L, B, ...]
    (or [L, R, B, ...]), "nbr_rows": the drawn neighbours' inputs [L, R, B, ...] (with a neighbour
    table)}. Under shard_map (`devices` n > 1) it is the per-device body and receives its 1/n of
    each batch."""

    def chunk(state, tables, feed, rng, bounds):
        start, end = bounds[0], bounds[1]
        _, step_rng = jax.random.split(rng)
        last = jnp.minimum(end, state.step + chunk_len) - 1

        @jax.jit
        def one_step(s, tables, item, step_rng, start, last):
            step = s.step
            keys = steps.step_keys(step_rng, step, batch_size)
            keys = keys if devices == 1 else local_share(keys, devices)      # the feed is this device's share
            groups = None
            if tables.groups is not None:
                rows = steps.per_restart(item["idx"], tables.groups.shape[0])
                groups = jax.vmap(lambda g, i: g[i])(tables.groups, rows)
            batch = make_batch(item["rows"], item.get("nbr_rows"), groups)
            return train_step(s, batch, keys, start, step == last)

        first = jax.tree.map(lambda a: a[0], feed)
        aux_shape = jax.eval_shape(lambda s: one_step(s, tables, first, step_rng, start, last)[1], state)

        def body(s, item):
            skip = lambda s, item: (s, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shape))
            active = s.step < end
            s, aux = jax.lax.cond(active, lambda s, item: one_step(s, tables, item, step_rng, start, last), skip,
                                  s, item)
            return s, (aux, active)

        state, (aux, active) = jax.lax.scan(body, state, feed)
        return state, steps.chunk_metrics(aux, active)

    return chunk


def feed_spec(neighbours, own=False):
    """The shard_map spec of a streamed feed: each leaf split over its batch axis."""
    keys = ("idx", "rows") + ("nbr_rows",) * neighbours
    return {k: P(*([None] * _batch_axis(k, own)), AXIS) for k in keys}


def _batch_axis(key, own):
    return 2 if key == "nbr_rows" or own else 1


class StreamedBatches:
    """A batch source (gmvc/training/program.py) that streams: gathers each chunk's rows from the
    host inputs `x` (an array, or {"x", "y"}) and places them for the layout, the next chunk in a
    background thread while the current one trains. feed(step) is the feed of the chunk from
    `step` (make_streamed_chunk's)."""

    def __init__(self, x, plan, table, rng, layout, *, end, chunk_len, own=False):
        # The plan runs on the host's CPU device, with its own copy of the neighbour table (the
        # state's is donated to the chunk): on an accelerator it does not queue behind training.
        cpu = jax.local_devices(backend="cpu")[0]
        self.x, self.plan, self.layout = x, plan, layout
        self.rng = jax.device_put(rng, cpu)
        self.table = None if table is None else jax.device_put(to_host(table), cpu)
        self.share = None                       # several processes: this one's columns of each batch
        if layout.mode != "single" and jax.process_count() > 1:
            self.share = process_block(layout)
        self.end, self.chunk_len, self.own = end, chunk_len, own
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gmvc-stream")
        self.pending = None                     # (step, the rows of the chunk from there, loading)

    def fetch(self, step0):
        """The feed of the chunk from step0, on the device(s)."""
        plan = jax.device_get(self.plan(np.int32(step0), self.table, self.rng))     # on the CPU device
        full = {"idx": plan["idx"].shape, "nbr_rows": plan["nbr"].shape if "nbr" in plan else None}
        if self.share is not None:              # only the rows of this process's devices are read
            plan = {k: self._mine(v, _batch_axis("nbr_rows" if k == "nbr" else "idx", self.own))
                    for k, v in plan.items()}
        take = lambda index: jax.tree.map(lambda a: np.take(a, index, axis=0), self.x)
        feed = {"idx": plan["idx"], "rows": take(plan["idx"])}
        if "nbr" in plan:
            feed["nbr_rows"] = take(plan["nbr"])
        if self.layout.mode == "single":
            return jax.device_put(feed, self.layout.devices[0])
        sharding = {k: NamedSharding(self.layout.mesh, P(*([None] * _batch_axis(k, self.own)), AXIS))
                    for k in feed}
        if self.share is None:
            return {k: jax.device_put(v, sharding[k]) for k, v in feed.items()}
        lead = lambda k: full["nbr_rows" if k == "nbr_rows" else "idx"]
        glob = lambda k, a: lead(k) + a.shape[len(lead(k)):]
        return {k: jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding[k], a, glob(k, a)), v)
                for k, v in feed.items()}

    def _mine(self, a, axis):
        """This process's columns of a plan array along its batch axis (its devices hold
        contiguous shares in mesh order)."""
        share = a.shape[axis] // self.layout.n
        return np.take(a, np.arange(self.share[0] * share, self.share[1] * share), axis=axis)

    def feed(self, step):
        """The chunk's feed from `step` (loaded ahead where the last call queued it); queues the
        next chunk's."""
        ahead, self.pending = self.pending, None
        feed = ahead[1].result() if ahead is not None and ahead[0] == step else self.fetch(step)
        following = min(step + self.chunk_len, self.end)
        if following < self.end:
            self.pending = (following, self.pool.submit(self.fetch, following))
        return feed

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
