"""Batched application of a model to data of any size: fixed-size batches (the last one padded)
so one compiled program serves any N and memory stays bounded by the batch."""
import jax
import numpy as np


def tree_len(inputs):
    """Number of samples in an inputs pytree (an array, or {"x": ..., "y": ...})."""
    return len(jax.tree.leaves(inputs)[0])


def tree_slice(inputs, start, stop):
    return jax.tree.map(lambda a: a[start:stop], inputs)


def make_embed(model, batch_size):
    """embed(params, x) -> z [N, Dz] (numpy) for one restart's params, in batches of `batch_size`
    (the last one padded; fewer samples than a batch are one batch as they are): one compiled
    program for any N above a batch (`embed.batch`, for gmvc.training.warmup), memory bounded by the
    batch, and no other op dispatched (each would compile)."""
    batch_embed = jax.jit(model.embed)

    def embed(params, x):
        n, parts = tree_len(x), []
        for start in range(0, n, batch_size):
            rows = tree_slice(x, start, start + batch_size)
            pad = batch_size - tree_len(rows) if n > batch_size else 0
            if pad:
                rows = jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]), rows)
            parts.append(np.asarray(batch_embed(params, rows))[: batch_size - pad])
        return np.concatenate(parts)

    embed.batch = batch_embed
    return embed


def make_predict(model, batch_size):
    """predict(params, inputs) -> numpy {"log_gamma": [N, K], "z_mean": [N, Dz]}, in fixed-size batches
    (the last one padded) so one compiled program serves any N and memory stays bounded."""
    predict_batch = jax.jit(model.predict)

    def predict(params, x):
        parts = []
        for start in range(0, tree_len(x), batch_size):
            chunk = tree_slice(x, start, start + batch_size)
            pad = batch_size - tree_len(chunk)
            if pad:
                chunk = jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]), chunk)
            out = jax.device_get(predict_batch(params, chunk))
            parts.append(jax.tree.map(lambda a: a[: batch_size - pad], out))
        return jax.tree.map(lambda *a: np.concatenate(a), *parts)

    return predict


def to_host(a):
    """A replicated array as numpy, also when other processes hold devices of it."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return np.asarray(a.addressable_data(0))
    return np.asarray(a)
