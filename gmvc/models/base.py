"""What every model provides, and the observation likelihoods they share."""
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmvc.core import mixture
from gmvc.errors import ConfigError
from gmvc.core.mixture import LOG_2PI

# Bounds of a learned Gaussian output log-variance, by parametrisation rather than clipping:
# log_var = LO + (HI - LO) * sigmoid(raw); starts at sigma ~ 0.1, never below sigma = 0.01.
_LEARNED_LOG_VAR_LO, _LEARNED_LOG_VAR_HI = 2 * jnp.log(0.01), 0.0

LIKELIHOODS = ("bernoulli", "gaussian")
_DROPOUT_SALT = 0x6470   # folded into the keys of the input dropout (`corrupt`)


class Model(NamedTuple):
    """`inputs` below is the data array x [B, *data_shape], or {"x": x, "y": int labels [B]} for a
    model that needs labels (num_labels > 0, the CVAE)."""
    init: Callable      # rng -> params
    apply: Callable     # (params, inputs, rng) -> out: the one shared forward pass, a dict of arrays
    predict: Callable   # (params, inputs) -> {"z_mean": [B, Dz]} (+ "log_gamma": [B, K] if clustering)
    sample: Callable    # (params, rng, n) -> x [G, n, *data_shape]: n samples per cluster / label
                        # (G = num_clusters, or num_labels, or 1)
    num_clusters: int   # 0 for models that do not cluster (VAE, CVAE)
    embed: Callable = None     # (params, inputs) -> z_mean [B, Dz]
    decode: Callable = None    # (params, z [B, Dz], labels [B] or None) -> the mean of p(x | z) [B, *data_shape]
    centres: Callable = None   # params -> [K, Dz]: each cluster's centre in the latent space
    stored_prior: bool = False   # the mixture lives in params["prior"] (an init_prior phase can refit it)
    num_labels: int = 0          # > 0: inputs carry labels (conditioning)
    elbo_terms: tuple = ()       # the objective terms whose sum is the negative ELBO (free bits off)
    prior_distribution: Callable = None   # params -> p(z) as a distrax distribution (sample, log_prob)
    load_prior: Callable = None  # (params, fitted {"logits", "means", "log_vars"}) -> params whose mixture
                                 # is the fitted one (a model without a stored prior: its prior network)


class GaussianEncoderDecoder(nn.Module):
    """x -> (z_mean, z_log_var) by encoder + dense head; z -> raw decoder output."""
    z_dim: int
    encoder: nn.Module
    decoder: nn.Module

    def setup(self):
        self.z_head = nn.Dense(2 * self.z_dim)

    def encode(self, x):
        return jnp.split(self.z_head(self.encoder(x)), 2, axis=-1)

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x, z_extra=None):  # used by init only
        z = self.encode(x)[0]
        return self.decode(z if z_extra is None else jnp.concatenate([z, z_extra], -1))


def check_model_settings(model_cfg):
    """The settings every model reads: the likelihood and the input dropout."""
    if model_cfg.likelihood not in LIKELIHOODS:
        raise ConfigError(f"unknown likelihood {model_cfg.likelihood!r}; known: {list(LIKELIHOODS)}")
    p = model_cfg.input_dropout
    if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
        raise ConfigError(f"model.input_dropout must be a number in [0, 1); got {p!r}")


def corrupt(model_cfg, x, rng):
    """The encoder's input in training: each value of x zeroed with probability
    model.input_dropout and the rest scaled by 1 / (1 - p) (a denoising autoencoder's masking
    noise; the reconstruction target stays x). Its own draws (per sample with per-sample keys),
    not the model's noise. The identity at p = 0; prediction and embedding read x as it is."""
    p = float(model_cfg.input_dropout)
    if p == 0.0:
        return x
    keep = 1.0 - p
    rng = mixture.fold_in(rng, _DROPOUT_SALT)
    draw = lambda key, shape: jax.random.bernoulli(key, keep, shape)
    mask = jax.vmap(lambda key: draw(key, x.shape[1:]))(rng) if mixture.per_sample(rng) else draw(rng, x.shape)
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


def learns_variance(model_cfg):
    """A Gaussian likelihood with sigma <= 0 learns a log-variance per output."""
    return model_cfg.likelihood == "gaussian" and model_cfg.sigma <= 0


def decoder_outputs(model_cfg, raw):
    """Split raw decoder output [B, W] into the likelihood's parameters."""
    if model_cfg.likelihood == "bernoulli":
        return {"x_logits": raw}
    if not learns_variance(model_cfg):
        return {"x_loc": raw, "x_log_var": jnp.full_like(raw, 2 * jnp.log(model_cfg.sigma))}
    loc, raw_log_var = jnp.split(raw, 2, axis=-1)
    span = _LEARNED_LOG_VAR_HI - _LEARNED_LOG_VAR_LO
    return {"x_loc": loc, "x_log_var": _LEARNED_LOG_VAR_LO + span * jax.nn.sigmoid(raw_log_var)}


@jax.custom_jvp
def softplus(x):
    """log(1 + e^x) as max(x, 0) + log1p(e^-|x|): the value of jax.nn.softplus (logaddexp(x, 0)),
    and its derivative sigmoid(x) from the same e^-|x|, so value and gradient take one
    exponential."""
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    return jnp.maximum(x, 0) + jnp.log1p(e), jnp.where(x >= 0, 1.0, e) / (1.0 + e) * dx


def log_likelihood(x_flat, out):
    """log p(x | z) summed over data dimensions: [B]."""
    if "x_logits" in out:
        logits = out["x_logits"]
        # x log sigmoid(l) + (1 - x) log sigmoid(-l) with one softplus, as log sigmoid(-l) =
        # log sigmoid(l) - l: one exp and one log1p a pixel in place of two of each
        return jnp.sum(x_flat * logits - softplus(logits), -1)
    log_var = out["x_log_var"]
    return -0.5 * jnp.sum(LOG_2PI + log_var + (x_flat - out["x_loc"]) ** 2 * jnp.exp(-log_var), -1)


def decoded_mean(out):
    """The mean of p(x | z): what a sample or a reconstruction shows."""
    return jax.nn.sigmoid(out["x_logits"]) if "x_logits" in out else out["x_loc"]
