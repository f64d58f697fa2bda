"""The mixture initialisation's passes over chunks of the embeddings: every row counted once, the
same prior for any chunk size, known blobs recovered, and working memory that does not grow with
the number of embeddings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from gmvc.core.mixture_init import fit_diag_gmm, fold_chunks, imbalance, kmeans

MEANS = np.array([[100.0, 100.0, 100.0], [106.0, 100.0, 101.0], [100.0, 106.0, 98.0], [103.0, 103.0, 106.0]])
STDS = np.array([[0.3, 0.5, 0.4], [0.6, 0.3, 0.5], [0.4, 0.4, 0.2], [0.5, 0.6, 0.3]])


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    """Tiny programs run once or twice: XLA's backend optimisations off (same semantics)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def _blobs(n, seed=0):
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
    z = jnp.asarray(_blobs(1000)[0])
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
    z, y = _blobs(1000)
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
    z = jnp.asarray(_blobs(1000)[0])
    far = {"logits": jnp.zeros(4), "means": jnp.asarray(MEANS, jnp.float32), "log_vars": jnp.zeros((4, 3))}
    y = _blobs(1000)[1]
    usage = np.bincount(y) / len(y)
    expected = np.log(4) + np.sum(usage * np.log(usage))                    # the blobs' own (uneven) counts
    np.testing.assert_allclose(float(imbalance(far, z, chunk_size=96)), expected, atol=1e-5)
    unused = {**far, "means": far["means"].at[3].set(1e4)}                  # component 3 sits far from all data
    assert float(imbalance(unused, z)) > expected + 0.1


def test_balance_selection_keeps_the_most_even_fit():
    """select="balance" keeps, of the n_init fits, the one with the lowest imbalance, and on four
    equal blobs that is a fit with one component per blob (while a single seeding often merges)."""
    z = jnp.asarray(_blobs(2000)[0])
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
    z = jnp.asarray(_blobs(1500, seed=2)[0])
    few, many = (fit_diag_gmm(key, z, 4, 10, 10, n_init=n, select="balance") for n in (3, 9))
    assert float(imbalance(many, z)) <= float(imbalance(few, z)) + 1e-6
