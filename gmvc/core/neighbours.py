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
DESCENT_ABOVE = 200_000   # a neighbours phase's method "auto": knn_table up to this many samples, knn_descent above


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


def knn_descent(z, k, rng, iters=10, work=None, chunk_size=4096, settled=1e-3):
    """[N, k] int32, as knn_table, approximately and in time and memory linear in N: each row's
    `work` (default max(2 k, 16)) best candidates so far start from its neighbours in the sorted
    order of several random projections, then each round adds the candidates' own candidates
    (the neighbours of neighbours, and a sample of the rows that list it: NN-descent, Dong et
    al. 2011) and keeps the nearest `work`, for at most `iters` rounds, fewer once a round
    changes under a share `settled` of the table. Up to 8 `work` rows it is knn_table.
    A chunk of rows at a time: memory O(chunk_size * work^2 * D) beside the [N, work] table.
    benchmarks/scale.py measures its recall against knn_table."""
    z = jnp.asarray(z, jnp.float32)
    n, d = z.shape
    work = max(k, max(2 * k, 16) if work is None else work)
    if n <= 8 * work:                     # too few rows to fill every row's candidates: the exact search
        return knn_table(z, k)
    chunk_size = min(chunk_size, n)
    starts = list(range(0, n - chunk_size + 1, chunk_size))
    if starts[-1] + chunk_size < n:
        starts.append(n - chunk_size)

    def nearest(block_idx, cand):
        """The `work` nearest distinct candidates [C, work] of rows block_idx [C] among cand [C, M]."""
        cand = jnp.sort(cand, axis=1)
        dup = jnp.concatenate([jnp.zeros_like(cand[:, :1], bool), cand[:, 1:] == cand[:, :-1]], axis=1)
        diff = z[cand] - z[block_idx][:, None, :]
        d2 = jnp.where(dup | (cand == block_idx[:, None]), jnp.inf, jnp.sum(diff * diff, axis=-1))
        return jnp.take_along_axis(cand, jax.lax.top_k(-d2, work)[1], axis=1)

    # The start: each row's neighbours in the order of `proj` random projections (half before, half after).
    proj = max(2, work // 4)
    half = -(-work // (2 * proj))
    order = jnp.argsort(z @ jax.random.normal(rng, (d, proj)), axis=0)               # [N, proj]
    rank = jnp.zeros((n, proj), jnp.int32).at[order, jnp.arange(proj)].set(jnp.arange(n, dtype=jnp.int32)[:, None])
    offsets = jnp.concatenate([jnp.arange(-half, 0), jnp.arange(1, half + 1)])

    @jax.jit
    def start(s):
        idx = s + jnp.arange(chunk_size)
        pos = jnp.clip(rank[idx][:, :, None] + offsets, 0, n - 1)                      # [C, proj, 2 half]
        cand = order[pos, jnp.arange(proj)[None, :, None]].reshape(chunk_size, -1)
        return nearest(idx, jnp.concatenate([cand, jnp.broadcast_to(idx[:1], (chunk_size, work))], axis=1))

    back = max(1, work // 2)

    @jax.jit
    def reverse(table, key):
        """[N, back]: rows that list each row among their candidates (a random `back` of them, the
        highest row where two draw the same place; a row listed by fewer keeps itself in the
        free places)."""
        slot = jax.random.randint(key, table.shape, 0, back)
        own = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], table.shape)
        return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, back)).at[table, slot].max(own)

    @jax.jit
    def refine(table, rev, s):
        idx = s + jnp.arange(chunk_size)
        mine = jnp.concatenate([table[idx], rev[idx]], axis=1)                        # [C, work + back]
        cand = jnp.concatenate([mine, table[mine].reshape(chunk_size, -1)], axis=1)
        return nearest(idx, cand)

    def sweep(fn, *args):
        out = np.zeros((n, work), np.int32)
        for s in starts:
            out[s:s + chunk_size] = np.asarray(fn(*args, s))
        return jnp.asarray(out)

    table = sweep(start)
    for key in jax.random.split(jax.random.fold_in(rng, 1), iters):
        new = sweep(refine, table, reverse(table, key))
        changed = float(jnp.mean(new != table))
        table = new
        if changed < settled:
            break
    return np.asarray(table[:, :k])
