"""The mixture initialisation (gmvc/core/mixture_init.py): passes over chunks of the embeddings (every
row once, the same prior for any chunk size, working memory that does not grow with N), and fits of
known blobs (n_init, selection, smoothing, merging along the neighbour graph, balanced fits)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from gmvc.core import mixture, neighbours
from gmvc.core.mixture_init import fit_diag_gmm, fold_chunks, imbalance, kmeans, mean_log_likelihood
from helpers_vade import BLOB_MEANS, BLOB_STDS, BLOB_WEIGHTS, N_INIT, _blobs, _matched

MEANS = np.array([[100.0, 100.0, 100.0], [106.0, 100.0, 101.0], [100.0, 106.0, 98.0], [103.0, 103.0, 106.0]])
STDS = np.array([[0.3, 0.5, 0.4], [0.6, 0.3, 0.5], [0.4, 0.4, 0.2], [0.5, 0.6, 0.3]])


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    """Tiny programs run once or twice: XLA's backend optimisations off (same semantics)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def _far_blobs(n, seed=0):
    """Four blobs far from the origin relative to their spread (where E[z^2] - mean^2 would lose
    the variances in float32)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    return (MEANS[y] + STDS[y] * rng.standard_normal((n, 3))).astype(np.float32), y


def test_chunks_cover_every_row_once():
    z = jnp.arange(1000 * 2, dtype=jnp.float32).reshape(1000, 2)
    for chunk_size in (1, 96, 999, 1000, 5000):
        count, total = fold_chunks(z, lambda c, rows, w: (c[0] + w.sum(), c[1] + w @ rows),
                                   (jnp.zeros(()), jnp.zeros(2)), chunk_size)
        assert float(count) == 1000
        np.testing.assert_array_equal(np.asarray(total), np.asarray(z).sum(0))


@pytest.fixture(scope="module")
def fits():
    """The same fits (10 k-means and 10 EM iterations, 3 seeds) in one chunk and in chunks of 96
    rows (the last one partly covered by its neighbour)."""
    z = jnp.asarray(_far_blobs(1000)[0])
    fit = jax.jit(jax.vmap(lambda r, c: fit_diag_gmm(r, z, 4, 10, 10, chunk_size=c), in_axes=(0, None)),
                  static_argnums=1)
    keys = jax.random.split(jax.random.key(3), 3)
    return jax.device_get(fit(keys, None)), jax.device_get(fit(keys, 96))


def test_chunked_fit_equals_one_chunk(fits):
    whole, chunked = fits
    np.testing.assert_allclose(chunked["means"], whole["means"], rtol=1e-6, atol=0)   # measured 4e-7
    np.testing.assert_allclose(chunked["log_vars"], whole["log_vars"], atol=5e-5)   # measured 8e-6
    np.testing.assert_allclose(chunked["logits"], whole["logits"], atol=1e-5)


def test_chunked_fit_recovers_blobs(fits):
    """Well separated: the fit ends on each blob's own sample statistics (hard assignments)."""
    z, y = _far_blobs(1000)
    z64 = z.astype(np.float64)
    recovered = 0
    for i in range(len(fits[1]["means"])):
        means = fits[1]["means"][i]
        _, cols = optimize.linear_sum_assignment(np.linalg.norm(MEANS[:, None] - means[None], axis=-1))
        if np.abs(means[cols] - MEANS).max() > 0.2:
            continue                          # a k-means++ seeding that put two seeds in one blob
        recovered += 1
        np.testing.assert_allclose(means[cols], np.stack([z64[y == k].mean(0) for k in range(4)]), atol=2e-4)
        np.testing.assert_allclose(np.exp(fits[1]["log_vars"][i][cols]) - 1e-4,
                                   np.stack([z64[y == k].var(0) for k in range(4)]), rtol=1e-3)
        weights = np.exp(fits[1]["logits"][i][cols])
        np.testing.assert_allclose(weights / weights.sum(), np.bincount(y) / len(y), atol=1e-5)
    assert recovered >= 2


def test_working_memory_does_not_grow_with_n():
    """XLA's temporary buffers for k-means over 20,000 and 200,000 rows in chunks of 1,024: the
    same (the embeddings are an input, not a temporary)."""
    def temp_bytes(n):
        z = jax.ShapeDtypeStruct((n, 10), jnp.float32)
        compiled = jax.jit(lambda r, z: kmeans(r, z, 10, 2, chunk_size=1024)).lower(jax.random.key(0), z).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(20_000), temp_bytes(200_000)
    assert large <= small * 1.05 and large < 1e6, (small, large)     # ~0.5 MB, vs 8 MB for one [N, K] pass


def test_imbalance_of_even_and_uneven_use():
    """0 when the components are used equally; log(K / (K - 1)) when one of K is never used."""
    z = jnp.asarray(_far_blobs(1000)[0])
    far = {"logits": jnp.zeros(4), "means": jnp.asarray(MEANS, jnp.float32), "log_vars": jnp.zeros((4, 3))}
    y = _far_blobs(1000)[1]
    usage = np.bincount(y) / len(y)
    expected = np.log(4) + np.sum(usage * np.log(usage))                    # the blobs' own (uneven) counts
    np.testing.assert_allclose(float(imbalance(far, z, chunk_size=96)), expected, atol=1e-5)
    unused = {**far, "means": far["means"].at[3].set(1e4)}                  # component 3 sits far from all data
    assert float(imbalance(unused, z)) > expected + 0.1


def test_balance_selection_keeps_the_most_even_fit():
    """select="balance" keeps, of the n_init fits, the one with the lowest imbalance, and on four
    equal blobs that is a fit with one component per blob (while a single seeding often merges)."""
    z = jnp.asarray(_far_blobs(2000)[0])
    key = jax.random.key(7)
    fits = jax.vmap(lambda r: fit_diag_gmm(r, z, 4, 10, 10))(jax.random.split(key, 6))
    scores = np.asarray(jax.vmap(lambda p: imbalance(p, z))(fits))
    chosen = fit_diag_gmm(key, z, 4, 10, 10, n_init=6, select="balance")
    np.testing.assert_array_equal(np.asarray(chosen["means"]), np.asarray(fits["means"][np.argmin(scores)]))
    _, cols = optimize.linear_sum_assignment(np.linalg.norm(MEANS[:, None] - np.asarray(chosen["means"])[None], axis=-1))
    assert np.abs(np.asarray(chosen["means"])[cols] - MEANS).max() < 0.2
    assert scores.min() < 0.01
    with pytest.raises(ValueError, match="unknown mixture-fit selection 'best'"):
        fit_diag_gmm(key, z, 4, select="best")


def test_more_fits_extend_the_fewer():
    """n_init fits draw from split(key, n_init), whose first keys are split(key, m)'s for m <
    n_init: raising n_init (vade_mnist5k: 10 to 30) adds candidates to the same ones, so the
    balance choice among more fits is never less even than among fewer."""
    key = jax.random.key(11)
    assert np.array_equal(jax.random.key_data(jax.random.split(key, 9))[:3],
                          jax.random.key_data(jax.random.split(key, 3)))
    z = jnp.asarray(_far_blobs(1500, seed=2)[0])
    few, many = (fit_diag_gmm(key, z, 4, 10, 10, n_init=n, select="balance") for n in (3, 9))
    assert float(imbalance(many, z)) <= float(imbalance(few, z)) + 1e-6


# ---------------------------------------------------------------- fits of known, weighted blobs

def _empirical(z, y):
    """Per-label weights, means and (biased) variances of a sample: what hard assignments give."""
    z = z.astype(np.float64)
    return (np.bincount(y, minlength=4) / len(y), np.stack([z[y == k].mean(0) for k in range(4)]),
            np.stack([z[y == k].var(0) for k in range(4)]))


N_KEYS = {1: 24, N_INIT: 8}   # seeds per n_init: enough single fits to see a bad seeding


@functools.lru_cache(maxsize=None)
def _all_blob_fits():
    """fit_diag_gmm (20 k-means steps, 20 EM steps) on 2000 blob points, vmapped over the first
    N_KEYS[n] of the same seeds, for n_init = 1 and N_INIT (one compiled program)."""
    z = jnp.asarray(_blobs(2000)[0])
    keys = jax.random.split(jax.random.key(0), 24)

    def fits(keys):
        return {n: jax.vmap(lambda r: fit_diag_gmm(r, z, 4, 20, 20, n))(keys[:N_KEYS[n]]) for n in N_KEYS}
    return jax.device_get(jax.jit(fits)(keys))


def _blob_fits(n_init):
    """Leaves [N_KEYS[n_init], ...]."""
    return _all_blob_fits()[n_init]


def _fit_i(fits, i):
    return jax.tree.map(lambda a: a[i], fits)


def _mean_errors(prior):
    return np.abs(_matched(prior)[1] - BLOB_MEANS).max()


def test_fit_diag_gmm_recovers_blobs():
    z, y = _blobs(2000)
    emp_w, emp_m, emp_v = _empirical(z, y)
    fits = _blob_fits(N_INIT)
    for i in range(N_KEYS[N_INIT]):
        weights, means, variances = _matched(_fit_i(fits, i))
        np.testing.assert_allclose(means, BLOB_MEANS, atol=0.1)
        np.testing.assert_allclose(weights, BLOB_WEIGHTS, atol=0.05)
        np.testing.assert_allclose(variances, BLOB_STDS**2, rtol=0.2)
        # Well separated: EM ends on the hard per-blob statistics of the sample itself.
        np.testing.assert_allclose(weights, emp_w, atol=1e-4)
        np.testing.assert_allclose(means, emp_m, atol=1e-3)
        np.testing.assert_allclose(variances, emp_v, rtol=1e-2)


def test_n_init_keeps_the_most_likely_fit():
    """A single k-means++ seeding sometimes splits one blob and merges two (Lloyd and EM cannot undo
    that); n_init fits from different seeds, keeping the most likely, recover the blobs every time."""
    single, best = _blob_fits(1), _blob_fits(N_INIT)
    errors = np.array([_mean_errors(_fit_i(single, i)) for i in range(N_KEYS[1])])
    assert np.sum(errors > 1.0) >= 1 and np.sum(errors < 0.1) >= N_KEYS[1] // 2, errors
    errors_best = np.array([_mean_errors(_fit_i(best, i)) for i in range(N_KEYS[N_INIT])])
    assert np.all(errors_best < 0.1), errors_best
    # Kept by likelihood: every right fit reaches the same moments, a wrong one is less likely.
    z = jnp.asarray(_blobs(2000)[0])
    ll = jax.jit(jax.vmap(mean_log_likelihood, in_axes=(0, None)))
    ll_single, ll_best = np.asarray(ll(single, z)), np.asarray(ll(best, z))
    np.testing.assert_allclose(ll_best, ll_best.max(), rtol=1e-5)
    assert np.all(ll_best >= ll_single[:N_KEYS[N_INIT]] - 1e-4 * np.abs(ll_best))
    assert np.all(ll_single[errors > 1.0] < ll_best.max() - 0.1)


def test_smooth_embeddings_is_the_mean_with_the_neighbours():
    from gmvc.core.mixture_init import smooth_embeddings
    rng = np.random.default_rng(0)
    z = rng.standard_normal((50, 3)).astype(np.float32)
    table = rng.integers(0, 50, (50, 4)).astype(np.int32)
    expected = z.astype(np.float64)
    for _ in range(2):
        expected = (expected + expected[table].sum(1)) / 5
    np.testing.assert_allclose(smooth_embeddings(jnp.asarray(z), jnp.asarray(table), 2), expected, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(smooth_embeddings(jnp.asarray(z), jnp.asarray(table), 0), z)


def test_smoothed_fit_recovers_overlapping_blobs_a_plain_fit_blurs():
    """Four blobs 2 apart with standard deviation 0.8 overlap; with neighbours from each point's
    own blob (a graph whose edges all agree with the labels), the smoothed fit partitions the
    smoothed points exactly and its M-step on the points themselves returns each blob's own mean
    and variance. A plain fit on the points mixes the blobs' tails."""
    from gmvc.core.mixture_init import fit_diag_gmm_smoothed
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    y = np.repeat(np.arange(4), 250)
    z = (centres[y] + 0.8 * rng.standard_normal((1000, 2))).astype(np.float32)
    table = np.stack([rng.choice(np.flatnonzero((y == y[i]) & (np.arange(1000) != i)), 8, replace=False)
                      for i in range(1000)]).astype(np.int32)
    own_means = np.stack([z[y == c].mean(0) for c in range(4)])
    own_vars = np.stack([z[y == c].var(0) for c in range(4)])

    def errors(prior):
        means = np.asarray(prior["means"])
        _, cols = optimize.linear_sum_assignment(np.linalg.norm(own_means[:, None] - means[None], axis=-1))
        variances = np.exp(np.asarray(prior["log_vars"]))[cols]
        return np.abs(means[cols] - own_means).max(), np.abs(variances / own_vars - 1).max()

    smoothed = fit_diag_gmm_smoothed(jax.random.key(0), jnp.asarray(z), jnp.asarray(table), 4, 1,
                                     kmeans_iters=50, em_iters=20, n_init=5)
    plain = fit_diag_gmm(jax.random.key(0), jnp.asarray(z), 4, 50, 20, 5)
    mean_err, var_err = errors(smoothed)
    assert mean_err < 0.01 and var_err < 0.01                    # measured: 1e-4 and 2e-4
    np.testing.assert_allclose(np.exp(np.asarray(smoothed["logits"])), 0.25, atol=0.005)
    plain_mean_err, plain_var_err = errors(plain)
    assert plain_mean_err > 0.05 and plain_var_err > 0.1        # measured: 0.097 and 0.12


def test_merge_by_neighbours_joins_the_groups_the_graph_links():
    """Five labels, one of them (3) empty, merged into three groups, then two: the empty label
    goes first (into label 0), then 0 with 1 (4 links over 2 x 2 members), then 2 with 4 (1 link
    over 2 x 1); the groups are numbered by their lowest label."""
    from gmvc.core.mixture_init import merge_by_neighbours
    assign = jnp.array([0, 0, 1, 1, 2, 2, 4])
    table = jnp.array([[2], [3], [0], [1], [5], [4], [4]])       # 0-1 linked four times, 2-4 once, 1-2 never
    np.testing.assert_array_equal(merge_by_neighbours(assign, table, 5, 3), [0, 0, 1, 0, 2])
    np.testing.assert_array_equal(merge_by_neighbours(assign, table, 5, 2), [0, 0, 1, 0, 1])


def test_overclustered_fit_follows_the_graph_where_a_plain_fit_cuts_across():
    """Two long strips (x uniform over 12, y 2.5 apart with standard deviation 0.25): a 2-component
    fit cuts both across the middle (measured: 0.52 of the points with their strip), while 16
    components merged along the 10-nearest-neighbour graph give one component per strip."""
    from gmvc.core.mixture_init import fit_diag_gmm_merged
    rng = np.random.default_rng(0)
    n = 400
    y = np.repeat([0, 1], n)
    z = np.c_[rng.uniform(-6, 6, 2 * n), 2.5 * y + 0.25 * rng.standard_normal(2 * n)].astype(np.float32)
    table = neighbours.knn_table(z, 10)

    def agreement(prior):
        a = np.asarray(jnp.argmax(mixture.log_joint(jnp.asarray(z), jax.nn.log_softmax(prior["logits"]),
                                                    prior["means"], prior["log_vars"]), -1))
        return max(np.mean(a == y), np.mean(a != y))

    merged = fit_diag_gmm_merged(jax.random.key(0), jnp.asarray(z), jnp.asarray(table), 2, 16, n_init=3,
                                 select="balance")
    assert agreement(merged) == 1.0
    np.testing.assert_allclose(np.asarray(merged["means"])[:, 1], [0.0, 2.5] if merged["means"][0, 1] < 1 else
                               [2.5, 0.0], atol=0.05)
    assert agreement(fit_diag_gmm(jax.random.key(0), jnp.asarray(z), 2, em_iters=20, n_init=3, select="balance")) < 0.6


def test_balanced_fit_uses_its_components_equally():
    """Four equal blobs 2 apart (standard deviation 0.8) overlap: plain EM lets one component take
    more than its share (measured: 283-292 of 1,000 points, weight 0.28-0.29); with
    `balanced` each E-step's weights make the mean responsibilities equal, so every fit ends with
    weights of 0.25 and hard counts within a few points of 250. balanced_logits itself makes the
    usage of any prior uniform."""
    from gmvc.core.mixture_init import balanced_logits, cluster_counts, mean_usage
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    z = jnp.asarray((centres[np.repeat(np.arange(4), 250)] + 0.8 * rng.standard_normal((1000, 2))).astype(np.float32))
    keys = jax.random.split(jax.random.key(1), 6)
    fits = jax.jit(lambda keys: {b: jax.vmap(lambda r: fit_diag_gmm(r, z, 4, 50, 20, 1, balanced=b))(keys)
                                 for b in (False, True)})(keys)
    counts = {b: np.stack([np.asarray(cluster_counts(_fit_i(fits[b], i), z)) for i in range(6)]) for b in fits}
    assert counts[False].max(1).min() > 270
    assert np.abs(counts[True] - 250).max() <= 10                                        # measured: 4
    np.testing.assert_allclose(np.exp(np.asarray(fits[True]["logits"])), 0.25, atol=0.002)
    uneven = {**_fit_i(fits[False], 0), "logits": jnp.log(jnp.array([0.55, 0.25, 0.15, 0.05]))}
    assert np.abs(np.asarray(mean_usage(uneven["logits"], uneven, z)) - 0.25).max() > 0.1
    np.testing.assert_allclose(mean_usage(balanced_logits(uneven, z), uneven, z), 0.25, atol=1e-3)


def test_cluster_counts_do_not_depend_on_the_chunking():
    from gmvc.core.mixture_init import cluster_counts
    z, _ = _blobs(1000, seed=4)
    prior = fit_diag_gmm(jax.random.key(1), jnp.asarray(z), 4, em_iters=5)
    whole = np.asarray(cluster_counts(prior, jnp.asarray(z)))
    np.testing.assert_array_equal(np.asarray(cluster_counts(prior, jnp.asarray(z), chunk_size=300)), whole)
    assert whole.sum() == 1000 and whole.min() > 150


def test_partition_modularity_counts_the_links_kept_within_against_the_sizes():
    from gmvc.core.mixture_init import partition_modularity
    # rows 0-2 link among themselves, rows 3-5 too, except row 2's second link and row 5's, which cross
    table = jnp.array([[1, 2], [0, 2], [0, 3], [4, 5], [3, 5], [3, 0]])
    groups = jnp.array([0, 0, 0, 1, 1, 1])
    assert float(partition_modularity(groups, table, 2)) == pytest.approx(10 / 12 - 0.5)
    assert float(partition_modularity(groups, table, 3)) == pytest.approx(10 / 12 - 0.5)   # an empty group adds 0
    assert float(partition_modularity(jnp.array([0, 1, 0, 1, 0, 1]), table, 2)) == pytest.approx(4 / 12 - 0.5)
    assert float(partition_modularity(jnp.zeros(6, jnp.int32), table, 2)) == pytest.approx(0.0)   # one group


def test_modularity_linkage_holds_back_what_average_linkage_merges_first():
    """Four components: A and B one row each, linked to each other (2 links per pair of members:
    average linkage 2); C and D ten rows each, each row linking once inside its own component and
    once to the other (20 links, 0.2 per pair). Average linkage joins A and B; modularity, which
    weighs the links against the components' degrees (3, 3, 21, 21 of 48), joins C and D."""
    from gmvc.core.mixture_init import merge_by_neighbours
    c, d = np.arange(2, 12), np.arange(12, 22)
    table = np.zeros((22, 2), np.int32)
    table[0], table[1] = [1, 2], [0, 12]
    table[c] = np.stack([np.roll(c, 1), d], 1)
    table[d] = np.stack([np.roll(d, 1), c], 1)
    assign = jnp.asarray(np.r_[0, 1, np.full(10, 2), np.full(10, 3)])
    average = np.asarray(merge_by_neighbours(assign, jnp.asarray(table), 4, 3, "average"))
    modular = np.asarray(merge_by_neighbours(assign, jnp.asarray(table), 4, 3, "modularity"))
    assert average.tolist() == [0, 0, 1, 2] and modular.tolist() == [0, 1, 2, 2]
    with pytest.raises(ValueError, match="unknown linkage 'single'"):
        merge_by_neighbours(assign, jnp.asarray(table), 4, 3, "single")