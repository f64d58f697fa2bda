"""Initialising the mixture prior from embeddings, in JAX: k-means++ seeding, Lloyd iterations,
then diagonal-Gaussian EM. Pure functions returning a new prior pytree
{"logits": [K], "means": [K, D], "log_vars": [K, D]}.

Every pass over the embeddings z [N, D] runs over fixed-size chunks of rows (a fori_loop of
dynamic slices; no [N, K] or [N, K, D] array, no padded copy of z), accumulating sufficient
statistics: the working memory is O(chunk_size * K * D) whatever N is, so a million embeddings
need little more than the embeddings themselves. The result does not depend on the chunk size
beyond float summation order (tests/test_mixture_init.py holds them to it)."""
import jax
import jax.numpy as jnp

from gmvc.core import mixture

MIN_VAR = 1e-4       # variance floor: a component on a single point must not collapse to zero width
CHUNK_SIZE = 8192    # rows per step of a pass; embeddings of up to this many rows are one chunk


def _sq_dists(z, centres):
    """|z_b - c_k|^2 as [B, K] without forming [B, K, D]."""
    return jnp.sum(z**2, 1)[:, None] - 2 * z @ centres.T + jnp.sum(centres**2, 1)[None, :]


def _chunking(n, chunk_size):
    """(number of chunks, rows per chunk): as few chunks as chunk_size allows, of equal size."""
    num = -(-n // max(1, min(chunk_size or CHUNK_SIZE, n)))
    return num, -(-n // num)


def fold_chunks(z, fn, init, chunk_size=None):
    """fn(carry, rows [C, D], w [C]) folded over the chunks of z. The last chunk is slid back to
    end at row N (no padding copy of z); its rows the previous chunk already covered get w = 0."""
    n = z.shape[0]
    num, size = _chunking(n, chunk_size)
    if num == 1:
        return fn(init, z, jnp.ones(n, z.dtype))

    def body(i, carry):
        start = jnp.minimum(i * size, n - size)
        rows = jax.lax.dynamic_slice_in_dim(z, start, size)
        w = (start + jnp.arange(size) >= i * size).astype(z.dtype)
        return fn(carry, rows, w)

    return jax.lax.fori_loop(0, num, body, init)


def iterate(step, x0, iters):
    """`step` applied `iters` times, stopping early at an exact fixed point: step is a pure
    function of x, so once step(x) == x bit for bit every further step returns x again and the
    result is the same as with all `iters` steps."""
    def cond(carry):
        i, _, changed = carry
        return (i < iters) & changed

    def body(carry):
        i, x, _ = carry
        new = step(x)
        changed = jnp.any(jnp.stack([jnp.any(a != b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(x))]))
        return i + 1, new, changed

    return jax.lax.while_loop(cond, body, (jnp.int32(0), x0, jnp.array(iters > 0)))[1]


def kmeans_pp_seeds(rng, z, k, chunk_size=None):
    """k-means++: each new centre drawn with probability proportional to the squared distance to
    the nearest centre so far, by inverse CDF (u * total against the running sum, two passes per
    centre), so the draw is the same for any chunking."""
    first = z[jax.random.randint(jax.random.fold_in(rng, 0), (), 0, len(z))]
    centres = jnp.zeros((k, z.shape[1]), z.dtype).at[0].set(first)

    def d2(rows, w, centres, i):
        """Weighted squared distance to the nearest of centres[:i]: [C]. By the expansion (one
        matmul, not [C, K, D]) about the first centre, so that its rounding is relative to the
        data's spread rather than to its distance from the origin."""
        dist = jnp.maximum(_sq_dists(rows - first, centres - first), 0.0)                  # [C, K]
        dist = jnp.min(jnp.where(jnp.arange(k)[None] < i, dist, jnp.inf), 1)
        return w * jnp.maximum(dist, 1e-30)

    def add(i, centres):
        total = fold_chunks(z, lambda t, rows, w: t + jnp.sum(d2(rows, w, centres, i)), jnp.zeros((), z.dtype),
                            chunk_size)
        target = jax.random.uniform(jax.random.fold_in(rng, i), (), z.dtype) * total

        def search(carry, rows, w):
            running, found, chosen, last = carry
            p = d2(rows, w, centres, i)
            cum = running + jnp.cumsum(p)                                                  # [C]
            before = jnp.concatenate([running[None], cum[:-1]])
            hit = (cum > target) & (before <= target) & ~found      # where the running sum passes the target
            pick = jnp.argmax(hit)
            chosen = jnp.where(hit[pick], rows[pick], chosen)
            last_pos = jnp.argmax(jnp.where(p > 0, jnp.arange(p.shape[0]), -1))
            last = jnp.where(p[last_pos] > 0, rows[last_pos], last)
            return cum[-1], found | hit[pick], chosen, last

        blank = jnp.zeros(z.shape[1], z.dtype)
        _, found, chosen, last = fold_chunks(z, search, (jnp.zeros((), z.dtype), jnp.array(False), blank, blank),
                                             chunk_size)
        # Rounding can leave u * total just past the running sum's end: then the last point it saw.
        return centres.at[i].set(jnp.where(found, chosen, last))

    return jax.lax.fori_loop(1, k, add, centres)


def _assign(rows, centres):
    return jax.nn.one_hot(jnp.argmin(_sq_dists(rows, centres), 1), centres.shape[0], dtype=rows.dtype)   # [C, K]


def kmeans(rng, z, k, iters=50, chunk_size=None):
    """Lloyd's algorithm from k-means++ seeds; an empty cluster keeps its previous centre. Stops
    early once the centres no longer change (same result as all `iters` steps)."""
    def step(centres):
        def acc(carry, rows, w):
            one_hot = _assign(rows, centres) * w[:, None]
            return carry[0] + one_hot.sum(0), carry[1] + one_hot.T @ rows

        counts, sums = fold_chunks(z, acc, (jnp.zeros(k, z.dtype), jnp.zeros((k, z.shape[1]), z.dtype)), chunk_size)
        new = sums / jnp.maximum(counts, 1)[:, None]
        return jnp.where(counts[:, None] > 0, new, centres)

    return iterate(step, kmeans_pp_seeds(rng, z, k, chunk_size), iters)


def _merge_moments(stats, resp, rows):
    """Add a chunk (responsibilities [C, K], rows [C, D]) to running (counts [K], means [K, D],
    M2 [K, D]) by Chan et al.'s pairwise update: each chunk is centred on its own means, so there
    is no E[z^2] - mean^2 cancellation (float32 loses everything that way when the embeddings sit
    far from zero relative to their spread)."""
    n, mean, m2 = stats
    cnt = resp.sum(0)                                                                    # [K]
    chunk_mean = (resp.T @ rows) / jnp.maximum(cnt, 1e-30)[:, None]                      # [K, D]
    chunk_m2 = jnp.einsum("bk,bkd->kd", resp, (rows[:, None] - chunk_mean[None]) ** 2)   # [C, K, D] per chunk only
    total = n + cnt
    delta = chunk_mean - mean
    frac = (cnt / jnp.maximum(total, 1e-30))[:, None]
    return total, mean + delta * frac, m2 + chunk_m2 + delta**2 * (n[:, None] * frac)


def moments(z, resp_fn, k, chunk_size=None):
    """Weighted mixture parameters from responsibilities: resp_fn(rows [C, D]) -> [C, K]."""
    d = z.shape[1]
    init = (jnp.zeros(k, z.dtype), jnp.zeros((k, d), z.dtype), jnp.zeros((k, d), z.dtype))
    n, means, m2 = fold_chunks(z, lambda s, rows, w: _merge_moments(s, resp_fn(rows) * w[:, None], rows), init,
                               chunk_size)
    counts = n + 1e-8                                                                    # [K]
    return {"logits": jnp.log(counts / counts.sum()), "means": means, "log_vars": jnp.log(m2 / counts[:, None] + MIN_VAR)}


SELECTIONS = ("likelihood", "balance", "modularity")   # "modularity": over-clustered fits only (fit_diag_gmm_merged)
LINKAGES = ("average", "modularity", "both")            # fit_diag_gmm_merged's merges (merge_by_neighbours)


def check_selection(select):
    """A ValueError naming an unknown n_init selection (the fits check it before any work)."""
    if select not in SELECTIONS:
        raise ValueError(f"unknown mixture-fit selection {select!r}; known: {list(SELECTIONS)}")


BALANCE_ITERS = 30    # fixed-point steps of balanced_logits per E-step


def mean_usage(logits, prior, z, chunk_size=None):
    """mean_n p(c | z_n) [K] under `prior` with its mixture logits replaced by `logits`."""
    k = logits.shape[0]
    total = fold_chunks(z, lambda t, rows, w: t + jnp.sum(w[:, None] * jnp.exp(mixture.log_responsibilities(
        rows, logits, prior["means"], prior["log_vars"])), 0), jnp.zeros((k,), z.dtype), chunk_size)
    return total / z.shape[0]


def balanced_logits(prior, z, iters=BALANCE_ITERS, chunk_size=None):
    """Mixture logits under which the components' mean responsibility over z is (nearly) uniform:
    each of `iters` steps moves a component's logit by log(1/K) - log(its usage), a pass over z
    (memory bounded by the chunk, so a balanced EM step costs `iters` passes). The E-step of a
    balanced fit, for data whose clusters are about equally large: where clusters overlap, it
    keeps a component from taking more than its share. It moves weights, not means: a component
    far from the points it would need (two clusters merged in one component, a third split in
    two, with gaps between them) stays where it is."""
    k = prior["logits"].shape[0]

    def step(logits):
        usage = mean_usage(logits, prior, z, chunk_size)
        new = logits - jnp.log(jnp.maximum(usage, 1e-30) * k)
        return new - jnp.max(new)

    return jax.lax.fori_loop(0, iters, lambda _, lg: step(lg), jax.nn.log_softmax(prior["logits"]))


def fit_diag_gmm(rng, z, k, kmeans_iters=50, em_iters=0, n_init=1, chunk_size=None, select="likelihood",
                 balanced=False):
    """k-means, then `em_iters` EM steps of a diagonal GMM (either stops early at an exact fixed
    point, which gives the same result as running on); returns the prior pytree. With
    n_init > 1, that many fits from different k-means++ seeds run together (vmapped) and one is
    kept, without labels: `select="likelihood"` the highest mean log-likelihood of z,
    `select="balance"` the most even use of the components (the lowest
    KL(mean_n p(c | z_n) || Uniform(K)); for data whose clusters are roughly balanced, where a
    fit that merges two clusters and splits a third is both likely and uneven). `chunk_size`:
    rows per step of each pass over z (default CHUNK_SIZE); memory is bounded by it, not by N.
    `balanced`: each E-step computes the responsibilities under mixture weights that make every
    component's mean responsibility equal (balanced_logits), so the fit's partition stays even;
    the prior returned has the weights of its last M-step (close to uniform)."""
    check_selection(select)
    if select == "modularity":
        raise ValueError("select 'modularity' scores merged partitions: fit_diag_gmm_merged only")
    if n_init > 1:
        fits = jax.vmap(lambda r: fit_diag_gmm(r, z, k, kmeans_iters, em_iters, 1, chunk_size, balanced=balanced))(
            jax.random.split(rng, n_init))
        return select_fit(fits, z, select, chunk_size)
    centres = kmeans(rng, z, k, kmeans_iters, chunk_size)
    prior = moments(z, lambda rows: _assign(rows, centres), k, chunk_size)

    def em_step(prior):
        logits = balanced_logits(prior, z, chunk_size=chunk_size) if balanced else prior["logits"]
        resp = lambda rows: jnp.exp(mixture.log_responsibilities(rows, logits, prior["means"], prior["log_vars"]))
        return moments(z, resp, k, chunk_size)

    return iterate(em_step, prior, em_iters)


def select_fit(fits, z, select, chunk_size=None):
    """The one of the stacked priors `fits` (leaves [n, ...]) kept by `select` on z: "balance" the
    lowest imbalance, "likelihood" the highest mean log-likelihood (the first on a tie)."""
    return jax.tree.map(lambda a: a[select_index(fits, z, select, chunk_size)], fits)


def select_index(fits, z, select, chunk_size=None):
    """The index of the fit select_fit keeps."""
    if select == "balance":
        return jnp.argmin(jax.vmap(lambda p: imbalance(p, z, chunk_size))(fits))
    return jnp.argmax(jax.vmap(lambda p: mean_log_likelihood(p, z, chunk_size))(fits))


def mean_log_likelihood(prior, z, chunk_size=None):
    """Mean log-density of z under the mixture prior."""
    log_pi = jax.nn.log_softmax(prior["logits"])
    total = fold_chunks(z, lambda t, rows, w: t + jnp.sum(w * mixture.log_density(rows, log_pi, prior["means"],
                                                                                   prior["log_vars"])),
                        jnp.zeros((), z.dtype), chunk_size)
    return total / z.shape[0]


def imbalance(prior, z, chunk_size=None):
    """KL(mean_n p(c | z_n) || Uniform(K)): 0 when every component is used equally."""
    return kl_to_uniform(mean_usage(prior["logits"], prior, z, chunk_size))


def kl_to_uniform(usage):
    """KL(usage || Uniform(K)) of a distribution over the K components, [K]."""
    return jnp.log(usage.shape[-1]) + jnp.sum(usage * jnp.log(jnp.maximum(usage, 1e-30)), -1)


def cluster_counts(prior, z, chunk_size=None):
    """How many of z each component takes when each embedding goes to its most likely one: [K]."""
    k = prior["logits"].shape[0]

    def add(total, rows, w):
        best = jnp.argmax(mixture.log_responsibilities(rows, prior["logits"], prior["means"], prior["log_vars"]), 1)
        return total + jnp.sum(w[:, None] * jax.nn.one_hot(best, k, dtype=z.dtype), 0)

    return fold_chunks(z, add, jnp.zeros((k,), z.dtype), chunk_size)


def smooth_embeddings(z, table, times):
    """Each embedding replaced `times` times by the mean of itself and its k nearest neighbours
    (table [N, k] of row indices, gmvc/core/neighbours.py): a step of diffusion along the
    neighbour graph, which pulls a cluster's points together where most neighbours share it.
    Working memory: a few [N, D] arrays (the neighbours are summed one column at a time)."""
    def once(_, zs):
        total = jax.lax.fori_loop(0, table.shape[1], lambda j, t: t + zs[table[:, j]], zs)
        return total / (table.shape[1] + 1)

    return jax.lax.fori_loop(0, times, once, z)


def fit_diag_gmm_smoothed(rng, z, table, k, smooth, chunk_size=None, **fit_kwargs):
    """fit_diag_gmm on the embeddings smoothed along their neighbour graph (smooth_embeddings),
    then one M-step on the embeddings themselves with the responsibilities the fit gives their
    smoothed copies: the prior keeps the fit's partition, with the means and widths of the
    points the model will see."""
    zs = smooth_embeddings(z, table, smooth)
    fit = fit_diag_gmm(rng, zs, k, chunk_size=chunk_size, **fit_kwargs)
    resp = lambda rows: jnp.exp(mixture.log_responsibilities(rows, fit["logits"], fit["means"], fit["log_vars"]))
    return moments_of_raw(zs, z, resp, k, chunk_size)


def moments_of_raw(zs, z, resp_fn, k, chunk_size=None):
    """The M-step on the embeddings z with the responsibilities resp_fn gives their smoothed copies
    zs (rows [C, D] -> [C, K]): one pass over both side by side."""
    d = z.shape[1]
    both = moments(jnp.concatenate([zs, z], axis=1), lambda rows: resp_fn(rows[:, :d]), k, chunk_size)   # smoothed | raw
    return {"logits": both["logits"], "means": both["means"][:, d:], "log_vars": both["log_vars"][:, d:]}


def merge_by_neighbours(assign, table, k_from, k, linkage="average"):
    """Agglomerate a partition into k groups along the neighbour graph: `assign` [N] labels in
    [0, k_from), `table` [N, n] the rows' nearest neighbours. Each of k_from - k steps merges the
    two groups with the highest score (an empty group merges first). linkage "average": the
    neighbour links per pair of their members, L_ij / (n_i n_j); "modularity": the links beyond
    what the groups' degrees predict, L_ij / M - d_i d_j / M^2 (greedy modularity on the graph of
    the k_from components: L_ij the links between groups i and j, d_i the links of group i's
    components to other components, M their sum). Average linkage is slow to merge a small group
    that few links reach; modularity merges it early and holds back the merge of two large
    groups. Returns [k_from] -> group in [0, k), numbered in order of the groups' lowest label.
    The neighbour graph tells apart classes that a Gaussian fit of the embedding splits across
    the middle: on 5,000 MNIST codes 4s and 9s are 97% linearly separable and 93% of their
    neighbours share their digit, while every 2-component fit of the pair cuts it into two
    halves of mixed digits (docs/results.md)."""
    if linkage not in ("average", "modularity"):
        raise ValueError(f"unknown linkage {linkage!r}; known: ['average', 'modularity']")
    eye = jnp.eye(k_from, dtype=bool)
    links = jnp.zeros((k_from, k_from), jnp.float32).at[assign[:, None], assign[table]].add(1.0)
    links = jnp.where(eye, 0.0, links + links.T)
    sizes = jnp.zeros(k_from, jnp.float32).at[assign].add(1.0)
    degrees = links.sum(axis=1)                   # a merged group's is the sum of its parts'
    total = jnp.maximum(degrees.sum(), 1.0)

    def merge(_, carry):
        links, sizes, degrees, alive, group = carry
        pair = alive[:, None] & alive[None, :] & ~eye
        empty = (sizes[:, None] == 0) | (sizes[None, :] == 0)
        if linkage == "modularity":
            score = links / total - degrees[:, None] * degrees[None, :] / total ** 2
        else:
            score = links / jnp.maximum(sizes[:, None] * sizes[None, :], 1.0)
        score = jnp.where(empty, jnp.inf, score)
        flat = jnp.argmax(jnp.where(pair, score, -jnp.inf))
        i, j = jnp.minimum(flat // k_from, flat % k_from), jnp.maximum(flat // k_from, flat % k_from)
        links = links.at[i].add(links[j]).at[:, i].add(links[:, j])
        links = jnp.where(eye, 0.0, links.at[j].set(0.0).at[:, j].set(0.0))
        sizes = sizes.at[i].add(sizes[j]).at[j].set(0.0)
        degrees = degrees.at[i].add(degrees[j]).at[j].set(0.0)
        return links, sizes, degrees, alive.at[j].set(False), jnp.where(group == j, i, group)

    carry = (links, sizes, degrees, jnp.ones(k_from, bool), jnp.arange(k_from))
    _, _, _, alive, group = jax.lax.fori_loop(0, k_from - k, merge, carry)
    return (jnp.cumsum(alive) - 1)[group]


def partition_modularity(groups, table, k):
    """The modularity of a partition `groups` [N] (labels in [0, k)) of the neighbour graph
    `table` [N, n]: the share of links that stay within a group, less the share the group sizes
    predict, sum_g (n_g / N)^2. High when the groups keep their links inside without being one
    big group; it assumes no group sizes."""
    inside = (groups[table] == groups[:, None]).astype(jnp.float32)
    share = jnp.zeros(k, jnp.float32).at[groups].add(1.0) / groups.shape[0]
    return jnp.mean(inside) - jnp.sum(share ** 2)


def fit_diag_gmm_merged(rng, z, table, k, over, smooth=0, n_init=1, select="likelihood", chunk_size=None,
                        with_groups=False, linkage="average", **fit_kwargs):
    """A k-component prior from an over-clustered fit: a diagonal GMM of `over` > k components on
    the embeddings (smoothed `smooth` times along the neighbour graph, as fit_diag_gmm_smoothed),
    its components merged into k groups along the neighbour graph (merge_by_neighbours with
    `linkage`, each embedding counted in its most likely component), then one M-step on the
    embeddings themselves with each group's responsibility the sum of its components'. With
    n_init > 1, that many such fits run together and one is kept by `select` on z, as in
    fit_diag_gmm, or with select="modularity" the one whose merged partition has the highest
    partition_modularity on the neighbour graph. linkage="both" merges each fit both ways, which
    makes 2 n_init candidates.
    `with_groups`: also return the kept fit's merged partition [N] (each embedding's group), which
    follows the neighbour graph where the k Gaussians of the prior cannot (two moons).
    Memory: beside the passes bounded by the chunk, the hard assignment reads the [N, over]
    responsibilities at once, as the neighbour table [N, k] is held whole anyway."""
    check_selection(select)
    if linkage not in LINKAGES:
        raise ValueError(f"unknown linkage {linkage!r}; known: {list(LINKAGES)}")
    zs = smooth_embeddings(z, table, smooth) if smooth else z
    ways = ("average", "modularity") if linkage == "both" else (linkage,)

    def one(key):
        fit = fit_diag_gmm(key, zs, over, n_init=1, chunk_size=chunk_size, **fit_kwargs)
        log_resp = lambda rows: mixture.log_responsibilities(rows, fit["logits"], fit["means"], fit["log_vars"])
        best = jnp.argmax(log_resp(zs), axis=1)
        out = []
        for way in ways:
            to_group = jax.nn.one_hot(merge_by_neighbours(best, table, over, k, way), k, dtype=z.dtype)   # [over, k]
            out.append((moments_of_raw(zs, z, lambda rows: jnp.exp(log_resp(rows)) @ to_group, k, chunk_size),
                        jnp.argmax(to_group, axis=1)[best]))
        return jax.tree.map(lambda *a: jnp.stack(a), *out)

    fits, groups = jax.vmap(one)(jax.random.split(rng, n_init))      # [n_init, ways, ...]
    fits, groups = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), (fits, groups))
    if select == "modularity":
        i = jnp.argmax(jax.vmap(lambda g: partition_modularity(g, table, k))(groups))
    else:
        i = select_index(fits, z, select, chunk_size)
    prior = jax.tree.map(lambda a: a[i], fits)
    return (prior, groups[i]) if with_groups else prior
