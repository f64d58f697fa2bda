"""Pure Gaussian-mixture maths, all in log space.

Shapes: z [B, D]; means / log_vars [K, D] (shared mixture) or [B, K, D] (per-sample mixture,
as in GMVAE where the prior network maps w to K components); log_pi [K].
"""
import jax
import jax.numpy as jnp

LOG_2PI = jnp.log(2.0 * jnp.pi)


def diag_normal_log_prob(x, mean, log_var):
    """log N(x; mean, diag exp(log_var)), summed over the last axis."""
    return -0.5 * jnp.sum(LOG_2PI + log_var + (x - mean) ** 2 * jnp.exp(-log_var), axis=-1)


def component_log_probs(z, means, log_vars):
    """log N(z_b | mu_k, sigma2_k) for every sample and component: [B, K]."""
    return diag_normal_log_prob(z[:, None, :], means, log_vars)


def log_joint(z, log_pi, means, log_vars):
    """log pi_k + log N(z_b | k): [B, K]."""
    return jax.nn.log_softmax(log_pi) + component_log_probs(z, means, log_vars)


def log_responsibilities(z, log_pi, means, log_vars):
    """log q(c = k | z): log-softmax of the log-joint over k, [B, K]."""
    return jax.nn.log_softmax(log_joint(z, log_pi, means, log_vars), axis=-1)


def log_density(z, log_pi, means, log_vars):
    """log sum_k pi_k N(z | k): [B]."""
    return jax.nn.logsumexp(log_joint(z, log_pi, means, log_vars), axis=-1)


def kl_diag_normals(mean_q, log_var_q, mean_p, log_var_p):
    """KL(N(mean_q, exp log_var_q) || N(mean_p, exp log_var_p)), summed over the last axis."""
    return 0.5 * jnp.sum(
        log_var_p - log_var_q + (jnp.exp(log_var_q) + (mean_q - mean_p) ** 2) * jnp.exp(-log_var_p) - 1.0,
        axis=-1,
    )


def kl_standard_normal(mean, log_var):
    """KL(N(mean, exp log_var) || N(0, I)) = -1/2 sum(1 + log_var - mean^2 - exp(log_var))."""
    return -0.5 * jnp.sum(1.0 + log_var - mean**2 - jnp.exp(log_var), axis=-1)


def categorical_entropy(log_p):
    """H(p) from log-probabilities over the last axis (0 * log 0 handled as 0)."""
    finite_log_p = jnp.where(jnp.isneginf(log_p), 0.0, log_p)
    return -jnp.sum(jnp.exp(log_p) * finite_log_p, axis=-1)


def per_sample(rng):
    """True for a batch of keys (one per sample, the training step's noise: the noise of sample i
    does not depend on how the batch is split over devices), False for one key."""
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng.ndim >= 1
    return rng.ndim >= 2                     # raw uint32 keys: [2] one key, [B, 2] a batch


def split_keys(rng, n=2):
    """n independent keys, or n batches of per-sample keys."""
    if per_sample(rng):
        keys = jax.vmap(lambda r: jax.random.split(r, n))(rng)
        return [keys[:, i] for i in range(n)]
    return list(jax.random.split(rng, n))


def fold_in(rng, data):
    return jax.vmap(lambda r: jax.random.fold_in(r, data))(rng) if per_sample(rng) else jax.random.fold_in(rng, data)


def normal(rng, shape, dtype=jnp.float32):
    """N(0, 1) of `shape`; with per-sample keys shape[0] is the batch and row i uses key i."""
    if per_sample(rng):
        return jax.vmap(lambda r: jax.random.normal(r, shape[1:], dtype))(rng)
    return jax.random.normal(rng, shape, dtype)


def reparameterize(rng, mean, log_var):
    return mean + jnp.exp(0.5 * log_var) * normal(rng, mean.shape, mean.dtype)
