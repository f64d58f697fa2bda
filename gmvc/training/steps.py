"""Pure step factories. The train step is a per-device body: on several devices its gradients
and metrics are averaged over the named data axis with pmean. A step reads a TrainState and
returns the next; the per-sample tables (Tables) are a step input that no step changes."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmvc.core import mixture, neighbours
from gmvc.core.batching import tree_len, tree_slice
from gmvc.objectives import make_batch
from gmvc.training.state import TrainState


def make_train_step(loss_fn, tx, axis_name=None):
    """train_step(state, batch, rng, start=0, measure=True, hyper=()) -> (state, aux) on a
    TrainState; the loss reads the step counted from `start` (a phase's first step: its weight
    schedules count from there), then `hyper`, extra loss arguments (a sweep's loss settings).
    aux["grad_norm"] is the global gradient norm where `measure` (a bool, may be traced) holds,
    else 0: make_train_chunk measures the chunk's last step only, as the norm reads every
    gradient once more beside the optimizer's update."""

    def train_step(state, batch, rng, start=0, measure=True, hyper=()):
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng, state.step - start,
                                                                   *hyper)
        if axis_name is not None:
            grads, aux = jax.lax.pmean((grads, aux), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if measure is True:
            aux["grad_norm"] = optax.tree.norm(grads)
        else:
            norm = jax.eval_shape(optax.tree.norm, grads)
            aux["grad_norm"] = jax.lax.cond(measure, optax.tree.norm, lambda g: jnp.zeros(norm.shape, norm.dtype),
                                            grads)
        return TrainState(state.step + 1, params, opt_state), aux

    return train_step


def make_restarts_step(train_step, restarts, own_batches=False, sweep=None):
    """Lift train_step to a TrainState whose params and opt_state carry a leading [R] axis
    (independent restarts) while the step counter is shared: one vmapped program trains all R.
    The batch is shared, or with `own_batches` each restart's own (every leaf [R, B, ...], see
    make_train_chunk's `restarts`); a batch's neighbours and groups are each restart's own
    [R, B, ...]. Restart r draws its noise from fold_in(rng, r). `sweep` = (hyper [R, ...],
    noise_ids [R]), a sweep's per-run loss settings (the loss's extra argument, vmapped like the
    parameters) and noise seeds (runs that share an id share their noise)."""
    hyper, ids = (None, None) if sweep is None else sweep

    def restarts_step(state, batch, rng, start=0, measure=True):
        def one(params, opt_state, hyper_r, rng_r, batch_r):
            new, aux = train_step(TrainState(state.step, params, opt_state), batch_r, rng_r, start, measure,
                                  () if hyper_r is None else (hyper_r,))
            return new.params, new.opt_state, aux

        noise_ids = jnp.arange(restarts) if ids is None else ids
        rngs = jax.vmap(lambda r: mixture.fold_in(rng, r))(noise_ids)     # [R] keys, or [R, B] per sample
        batch_axes = 0 if own_batches else {"data": None, "neighbours": 0, "groups": 0}
        params, opt_state, aux = jax.vmap(one, in_axes=(0, 0, 0, 0, batch_axes))(
            state.params, state.opt_state, hyper, rngs, batch)
        return TrainState(state.step + 1, params, opt_state), aux      # aux leaves [R]

    return restarts_step


def make_lifted_step(loss_fn, tx, restarts, axis_name=None, own_batches=False):
    """The train step of a state whose params and opt_state carry a leading [R] restart axis
    (make_restarts_step's contract). With R > 1 it is make_restarts_step's vmap. With one restart
    the loss reads params[0] (and the batch's neighbours [1, B, ...] row 0), and the optimizer
    updates the [1, ...] arrays as they are, without vmap: the weight gradients then leave XLA's
    dots in the parameters' own layout (under vmap they come out transposed and are read strided
    by the update). The noise keys are the vmapped step's: restart 0 draws from fold_in(rng, 0).
    `own_batches` (each restart's own batch) only means something with R > 1; a sweep goes
    through make_restarts_step itself."""
    if restarts > 1:
        return make_restarts_step(make_train_step(loss_fn, tx, axis_name=axis_name), restarts,
                                  own_batches=own_batches)

    def first(params, batch, rng, step):
        return loss_fn(jax.tree.map(lambda a: a[0], params), batch, rng, step)

    one = make_train_step(first, tx, axis_name=axis_name)

    def single_step(state, batch, rng, start=0, measure=True):
        batch = {**batch, **{key: jax.tree.map(lambda a: a[0], batch[key]) for key in ("neighbours", "groups")}}
        new_state, aux = one(state, batch, mixture.fold_in(rng, 0), start, measure)
        return new_state, jax.tree.map(lambda a: a[None], aux)      # aux leaves [1], as the vmapped step's

    return single_step


def make_epoch_order(rng, num_examples, batch_size, restarts=None):
    """Returns (steps_per_epoch, order(epoch) -> [N] permutation drawn from fold_in(rng, epoch)).
    Epoch e is that permutation cut into batches (the remainder dropped): the batch of a step is a
    function of the step alone, so a resumed run reads exactly what an uninterrupted one would.
    With `restarts` R, order(epoch) is [R, N], one permutation per restart: row 0 is the one
    above (restart 0 reads what a run with one restart would), row r > 0 is drawn from
    fold_in(fold_in(rng, epoch), r)."""
    steps_per_epoch = num_examples // batch_size

    def one(key):
        # argsort of uniforms: one sort, much cheaper on CPU than jax.random.permutation.
        return jnp.argsort(jax.random.uniform(key, (num_examples,)))

    def order(epoch):
        key = jax.random.fold_in(rng, epoch)
        if restarts is None:
            return one(key)
        keys = jnp.stack([key] + [jax.random.fold_in(key, r) for r in range(1, restarts)])
        return jax.vmap(one)(keys)

    return steps_per_epoch, order


def epoch_perm(order, perm, step, steps_per_epoch):
    """The data order at `step`: drawn anew (make_epoch_order's order) at an epoch's first step,
    else `perm`, the order the step before read."""
    return jax.lax.cond(step % steps_per_epoch == 0, lambda: order(step // steps_per_epoch), lambda: perm)


def batch_rows(perm, step, steps_per_epoch, batch_size):
    """The rows [B] (or [R, B], one order per restart) that `step` reads from its epoch's order."""
    return jax.lax.dynamic_slice_in_dim(perm, (step % steps_per_epoch) * batch_size, batch_size, axis=-1)


def per_restart(idx, restarts):
    """Batch rows [R, B]: `idx` as it is when each restart has its own batch, else repeated."""
    return idx if idx.ndim == 2 else jnp.broadcast_to(idx, (restarts,) + idx.shape)


def draw_neighbours(table, idx, keys):
    """[R, B]: one neighbour of each batch row per restart from its table [R, N, k]
    (neighbours.draw, by the samples' keys)."""
    return jax.vmap(lambda t, i: neighbours.draw(t, i, keys))(table, per_restart(idx, table.shape[0]))


def select_batch(x, idx, keys):
    """One device: the batch's rows and the per-sample noise keys as they are."""
    return jax.tree.map(lambda a: a[idx], x), keys


def assemble_batch(tables, x, idx, keys, select):
    """(batch, this device's keys) for the global batch `idx` [B] and its per-sample keys; the
    batch is objectives.make_batch's: its rows, and where `tables` (Tables) has a neighbour table
    [R, N, k] (gmvc/core/neighbours.py) one drawn neighbour of each row per restart [R, B, ...]
    (else None), and where it has groups [R, N] (the `pin` term) each row's group [R, B].
    `idx` [R, B], one batch per restart, gives rows [R, B, ...] as well (make_restarts_step's
    `own_batches`)."""
    own = idx.ndim == 2
    if own:
        batch, local_keys = jax.vmap(lambda i: select(x, i, keys), out_axes=(0, None))(idx)
    else:
        batch, local_keys = select(x, idx, keys)
    nbr = groups = None
    if tables.neighbours is not None:
        nbr = jax.vmap(lambda i: select(x, i, keys)[0])(draw_neighbours(tables.neighbours, idx, keys))
    if tables.groups is not None:
        rows = per_restart(idx, tables.groups.shape[0])
        # select slices per-sample arrays given in place of the keys to this device's share of the batch
        groups = jax.vmap(lambda g, i: select(x, i, g[i])[1])(tables.groups, rows)                       # [R, b]
    return make_batch(batch, nbr, groups), local_keys


def step_keys(step_rng, step, batch_size):
    """One key per sample of the step's batch: sample i's noise is the same however the batch is
    split over devices."""
    return jax.random.split(jax.random.fold_in(step_rng, step), batch_size)


def make_train_chunk(train_step, *, num_examples, batch_size, chunk_len, total_steps=None, select=select_batch,
                     restarts=None):
    """chunk(state, tables, x, rng[, bounds]) -> (state, metrics): `chunk_len` steps in one lax.scan on device, with
    the metrics averaged over the chunk's active steps (grad_norm: its last active step's). Steps
    at or past `total_steps` leave the state unchanged, so every chunk has the same shape and the
    program compiles once. `rng` is the run's training key: data order and step noise are folded
    in from it by epoch and by step. `select(x, idx, keys)` gives this device's part of the batch
    (gmvc/training/parallel.py). `bounds`, an int32 [2] array (start, end), replaces (0, total_steps) with
    traced values: phases that differ only in their steps then share one compiled program.
    `restarts` R: each restart reads its own data order (make_epoch_order), and train_step takes
    batches [R, B, ...] (make_restarts_step with own_batches)."""

    def chunk(state, tables, x, rng, bounds=None):
        start, end = (0, total_steps) if bounds is None else (bounds[0], bounds[1])
        data_rng, step_rng = jax.random.split(rng)
        steps_per_epoch, order = make_epoch_order(data_rng, num_examples, batch_size, restarts)

        @jax.jit
        def one_step(s, perm, tables, x, step_rng, start, last):
            step = s.step
            idx = batch_rows(perm, step, steps_per_epoch, batch_size)
            batch, keys = assemble_batch(tables, x, idx, step_keys(step_rng, step, batch_size), select)
            return train_step(s, batch, keys, start, step == last)

        # A jitted step with every array an argument is traced once: the shape query below and
        # the scan's cond reuse that trace (the step traced twice took a second more per program).
        # The chunk's last active step measures the gradient norm (make_train_step).
        last = jnp.minimum(end, state.step + chunk_len) - 1
        run = lambda s, perm: one_step(s, perm, tables, x, step_rng, start, last)
        perm0 = order(state.step // steps_per_epoch)
        aux_shape = jax.eval_shape(lambda s: run(s, perm0)[1], state)

        def body(carry, _):
            s, perm = carry
            step = s.step
            perm = epoch_perm(order, perm, step, steps_per_epoch)
            skip = lambda s, perm: (s, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shape))
            active = step < end
            s, aux = jax.lax.cond(active, run, skip, s, perm)
            return (s, perm), (aux, active)

        (state, _), (aux, active) = jax.lax.scan(body, (state, perm0), None, length=chunk_len)
        return state, chunk_metrics(aux, active)

    return chunk


def chunk_metrics(aux, active):
    """A chunk's metrics from its steps' aux (leaves [steps, ...]) and `active` [steps] bools, the
    active steps first: each the mean over the active steps, any trailing axes kept; grad_norm the
    last active step's (the scanned chunk measures it there only, make_train_step)."""
    count = jnp.maximum(jnp.sum(active), 1)
    mean = lambda a: jnp.sum(jnp.where(active.reshape((-1,) + (1,) * (a.ndim - 1)), a, 0.0), axis=0) / count
    return {k: jax.tree.map(lambda a: a[count - 1] if k == "grad_norm" else mean(a), v) for k, v in aux.items()}


def make_indexed_step(train_step, *, num_examples, batch_size, select=select_batch, restarts=None):
    """step(state, tables, x, rng, bounds) -> (state, aux): one train step on the batch its step number
    selects (the same batch as in make_train_chunk, `restarts` as there); of `bounds` (start, end)
    only the start is read."""

    def step_fn(state, tables, x, rng, bounds):
        data_rng, step_rng = jax.random.split(rng)
        steps_per_epoch, order = make_epoch_order(data_rng, num_examples, batch_size, restarts)
        step = state.step
        idx = batch_rows(order(step // steps_per_epoch), step, steps_per_epoch, batch_size)
        batch, keys = assemble_batch(tables, x, idx, step_keys(step_rng, step, batch_size), select)
        return train_step(state, batch, keys, bounds[0])

    return step_fn


def make_host_chunk(compiled_step, *, chunk_len, step_of=lambda state: int(state.step)):
    """The make_train_chunk contract with the loop on the host: `compiled_step` (a jitted
    make_indexed_step) called once per step. XLA:CPU runs convolutions inside a compiled loop
    several times slower than outside one, so convolutional networks train this way (train.loop
    "auto"). `bounds`: the phase's (start, end)."""

    def chunk(state, tables, x, rng, bounds):
        start = step_of(state)
        auxes = []
        for _ in range(max(0, min(chunk_len, int(bounds[1]) - start))):
            state, aux = compiled_step(state, tables, x, rng, bounds)
            auxes.append(aux)
        if not auxes:
            return state, {}
        return state, chunk_metrics(jax.tree.map(lambda *a: jnp.stack(a), *auxes), jnp.ones(len(auxes), bool))

    return chunk


def make_full_loss(loss_fn, batch_size):
    """full_loss(params, x) -> the objective averaged over every full batch of x, with fixed noise:
    a label-free score to choose between restarts."""
    batch_loss = jax.jit(lambda params, rows, step: loss_fn(params, make_batch(rows), jax.random.key(0), step)[0])

    def full_loss(params, x, step):
        n = max(1, tree_len(x) // batch_size)
        return float(np.mean([batch_loss(params, tree_slice(x, i * batch_size, (i + 1) * batch_size), step)
                              for i in range(n)]))

    full_loss.batch_loss = batch_loss           # the compiled part, for gmvc.training.warmup
    return full_loss
