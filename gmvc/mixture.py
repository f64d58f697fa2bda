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


def reparameterize(rng, mean, log_var):
    return mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape, mean.dtype)
