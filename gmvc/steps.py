"""Pure step factories. The train step is a per-device body: on several devices its gradients
and metrics are averaged over the named data axis with pmean."""
import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_train_step(loss_fn, tx, axis_name=None):
    """train_step(state, batch, rng) -> (state, aux)."""

    def train_step(state, batch, rng):
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, rng, state["step"])
        if axis_name is not None:
            grads, aux = jax.lax.pmean((grads, aux), axis_name)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        aux["grad_norm"] = optax.global_norm(grads)
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state}
        return new_state, aux

    return train_step


def make_batch_indices(rng, num_examples, batch_size):
    """indices(step) -> [batch_size] sample indices: epoch e is a permutation drawn from
    fold_in(rng, e), cut into batches (the remainder is dropped). A function of the step alone,
    so a resumed run reads exactly the batches an uninterrupted run would."""
    steps_per_epoch = num_examples // batch_size

    def indices(step):
        perm = jax.random.permutation(jax.random.fold_in(rng, step // steps_per_epoch), num_examples)
        return jax.lax.dynamic_slice_in_dim(perm, (step % steps_per_epoch) * batch_size, batch_size)

    return indices


def make_train_chunk(train_step, *, num_examples, batch_size, chunk_len, total_steps, rng):
    """chunk(state, x) -> (state, metrics): `chunk_len` steps in one lax.scan on device, with the
    metrics averaged over the chunk. Steps at or past `total_steps` leave the state unchanged, so
    every chunk has the same shape and the program compiles once."""
    data_rng, step_rng = jax.random.split(rng)
    batch_indices = make_batch_indices(data_rng, num_examples, batch_size)

    def chunk(state, x):
        def run(s):
            step = s["step"]
            return train_step(s, x[batch_indices(step)], jax.random.fold_in(step_rng, step))

        aux_shape = jax.eval_shape(lambda s: run(s)[1], state)

        def body(s, _):
            active = s["step"] < total_steps
            skip = lambda s: (s, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shape))
            s, aux = jax.lax.cond(active, run, skip, s)
            return s, (aux, active)

        state, (aux, active) = jax.lax.scan(body, state, None, length=chunk_len)
        count = jnp.maximum(jnp.sum(active), 1)
        metrics = jax.tree.map(lambda a: jnp.sum(jnp.where(active, a, 0.0)) / count, aux)
        return state, metrics

    return chunk


def make_predict(model, batch_size):
    """predict(params, x) -> numpy {"log_gamma": [N, K], "z_mean": [N, Dz]}, in fixed-size batches
    (the last one padded) so one compiled program serves any N and memory stays bounded."""
    predict_batch = jax.jit(model.predict)

    def predict(params, x):
        parts = []
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size]
            pad = batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out = jax.device_get(predict_batch(params, chunk))
            parts.append(jax.tree.map(lambda a: a[: batch_size - pad], out))
        return jax.tree.map(lambda *a: np.concatenate(a), *parts)

    return predict
