"""The latent prior as a distrax distribution: what a user samples from or scores with
(`log_prob`, `sample`), built from the same parameters gmvc's own mixture maths reads. distrax
(and the TensorFlow Probability substrate under it, about 2 s of imports) loads on first use."""
import jax
import jax.numpy as jnp


def diag_mixture(logits, means, log_vars):
    """p(z) = sum_k softmax(logits)_k N(z; means_k, diag exp(log_vars_k)): logits [K], means and
    log_vars [K, D]."""
    import distrax
    return distrax.MixtureSameFamily(distrax.Categorical(logits=logits),
                                     distrax.MultivariateNormalDiag(means, jnp.exp(0.5 * log_vars)))


def standard_normal(dim):
    import distrax
    return distrax.MultivariateNormalDiag(jnp.zeros(dim), jnp.ones(dim))


def uniform_logits(k):
    return jax.nn.log_softmax(jnp.zeros(k))
