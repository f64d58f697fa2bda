"""Initialising the mixture prior from embeddings, in JAX: k-means++ seeding, Lloyd iterations,
then diagonal-Gaussian EM. Pure functions returning a new prior pytree
{"logits": [K], "means": [K, D], "log_vars": [K, D]}."""
import jax
import jax.numpy as jnp

from gmvc import mixture

MIN_VAR = 1e-4   # variance floor: a component on a single point must not collapse to zero width


def _sq_dists(z, centres):
    """|z_b - c_k|^2 as [B, K] without forming [B, K, D]."""
    return jnp.sum(z**2, 1)[:, None] - 2 * z @ centres.T + jnp.sum(centres**2, 1)[None, :]


def kmeans_pp_seeds(rng, z, k):
    """k-means++: each new centre drawn with probability proportional to squared distance."""
    first = z[jax.random.randint(jax.random.fold_in(rng, 0), (), 0, len(z))]
    centres = jnp.zeros((k, z.shape[1]), z.dtype).at[0].set(first)
    d2 = jnp.sum((z - first) ** 2, 1)

    def add(i, carry):
        centres, d2 = carry
        idx = jax.random.categorical(jax.random.fold_in(rng, i), jnp.log(jnp.maximum(d2, 1e-30)))
        centres = centres.at[i].set(z[idx])
        return centres, jnp.minimum(d2, jnp.sum((z - z[idx]) ** 2, 1))

    return jax.lax.fori_loop(1, k, add, (centres, d2))[0]


def kmeans(rng, z, k, iters=50):
    """Lloyd's algorithm from k-means++ seeds; an empty cluster keeps its previous centre."""
    def step(centres, _):
        one_hot = jax.nn.one_hot(jnp.argmin(_sq_dists(z, centres), 1), k, dtype=z.dtype)   # [B, K]
        counts = one_hot.sum(0)
        new = (one_hot.T @ z) / jnp.maximum(counts, 1)[:, None]
        return jnp.where(counts[:, None] > 0, new, centres), None

    centres, _ = jax.lax.scan(step, kmeans_pp_seeds(rng, z, k), None, length=iters)
    return centres


def moments(z, resp):
    """Weighted mixture parameters from responsibilities [B, K]."""
    counts = resp.sum(0) + 1e-8                                                       # [K]
    means = (resp.T @ z) / counts[:, None]
    # E[(z - mean)^2], not E[z^2] - mean^2: the latter cancels catastrophically in float32 when the
    # embeddings sit far from zero relative to their spread.
    var = jnp.einsum("bk,bkd->kd", resp, (z[:, None] - means[None]) ** 2) / counts[:, None]
    return {"logits": jnp.log(counts / counts.sum()), "means": means,
            "log_vars": jnp.log(var + MIN_VAR)}


def fit_diag_gmm(rng, z, k, kmeans_iters=50, em_iters=0, n_init=1):
    """k-means, then `em_iters` EM steps of a diagonal GMM; returns the prior pytree. With
    n_init > 1, that many fits from different k-means++ seeds run together (vmapped) and the one
    with the highest mean log-likelihood of z is kept (no labels involved)."""
    if n_init > 1:
        fits = jax.vmap(lambda r: fit_diag_gmm(r, z, k, kmeans_iters, em_iters))(jax.random.split(rng, n_init))
        best = jnp.argmax(jax.vmap(lambda p: mean_log_likelihood(p, z))(fits))
        return jax.tree.map(lambda a: a[best], fits)
    centres = kmeans(rng, z, k, kmeans_iters)
    prior = moments(z, jax.nn.one_hot(jnp.argmin(_sq_dists(z, centres), 1), k, dtype=z.dtype))

    def em_step(prior, _):
        resp = jnp.exp(mixture.log_responsibilities(z, prior["logits"], prior["means"], prior["log_vars"]))
        return moments(z, resp), None

    prior, _ = jax.lax.scan(em_step, prior, None, length=em_iters)
    return prior


def mean_log_likelihood(prior, z):
    """Mean log-density of z under the mixture prior."""
    log_pi = jax.nn.log_softmax(prior["logits"])
    return jnp.mean(mixture.log_density(z, log_pi, prior["means"], prior["log_vars"]))
