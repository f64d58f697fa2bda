"""Nearest neighbours in the embedding, for the `neighbours` term (gmvc/objectives/terms.py).

A `neighbours` phase (config.phases entry {"kind": "neighbours", "k": 10}) embeds the training
data with each restart's current encoder and keeps, for every sample, the indices of its k
nearest other samples (Euclidean distance between latent means): a table [R, N, k] that the
train state carries (and checkpoints) through the phases that follow. In those phases each
step draws one neighbour per sample of the batch (from the sample's own key) and feeds the
neighbours' responsibilities to the objective. On small image sets the codes' neighbours share
the sample's class far more often than its cluster does (5,000 MNIST images after an augmented
autoencoder pretraining: 92% of 10 nearest neighbours, against a k-means accuracy of 0.78), so
asking a sample and its neighbour to fall in the same component moves the mixture towards the
classes. Labels are never read.
"""
import jax
import jax.numpy as jnp
import numpy as np

from gmvc.core import mixture

_SALT = 0x6E62   # folded into each sample's key to draw its neighbour


def knn_table(z, k, chunk_size=512):
    """[N, k] int32: for each row of z [N, D], the indices of its k nearest other rows, nearest
    first. Distances are taken a chunk of rows at a time, so memory is O(chunk_size * N)."""
    z = jnp.asarray(z, jnp.float32)
    n = z.shape[0]
    sq = jnp.sum(z * z, axis=1)

    @jax.jit
    def rows(start):
        block = jax.lax.dynamic_slice_in_dim(z, start, chunk_size)
        d2 = sq[None, :] - 2.0 * block @ z.T + jnp.sum(block * block, axis=1)[:, None]     # [C, N]
        own = start + jnp.arange(chunk_size)
        d2 = jnp.where(jnp.arange(n)[None, :] == own[:, None], jnp.inf, d2)            # never oneself
        return jax.lax.top_k(-d2, k)[1].astype(jnp.int32)

    chunk_size = min(chunk_size, n)
    starts = list(range(0, n - chunk_size + 1, chunk_size))
    if starts[-1] + chunk_size < n:
        starts.append(n - chunk_size)          # the last chunk slides back; its overlap is recomputed
    table = np.zeros((n, k), np.int32)
    for s in starts:
        table[s:s + chunk_size] = np.asarray(rows(s))
    return table


def draw(table, idx, rng):
    """One neighbour of each batch sample: table [N, k], idx [B] -> [B] indices, the choice made
    by the sample's key in `rng` ([B] keys, or one key for the whole batch)."""
    k = table.shape[1]
    keys = mixture.fold_in(rng, _SALT)
    if mixture.per_sample(keys):
        pick = jax.vmap(lambda r: jax.random.randint(r, (), 0, k))(keys)
    else:
        pick = jax.random.randint(keys, idx.shape, 0, k)
    return table[idx, pick]


def agreement(table, labels):
    """Share of the table's neighbours that carry the sample's own label (a diagnostic for
    benchmarks and tests; training never sees labels)."""
    table = np.asarray(table)
    return float(np.mean(np.asarray(labels)[table] == np.asarray(labels)[:, None]))
