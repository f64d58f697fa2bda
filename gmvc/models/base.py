"""What every model provides, and the observation likelihoods they share."""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from gmvc.errors import ConfigError
from gmvc.mixture import LOG_2PI

# Bounds of a learned Gaussian output log-variance, by parametrisation rather than clipping:
# log_var = LO + (HI - LO) * sigmoid(raw); starts at sigma ~ 0.1, never below sigma = 0.01.
_LEARNED_LOG_VAR_LO, _LEARNED_LOG_VAR_HI = 2 * jnp.log(0.01), 0.0

LIKELIHOODS = ("bernoulli", "gaussian")


class Model(NamedTuple):
    init: Callable      # rng -> params
    apply: Callable     # (params, x, rng) -> out: the one shared forward pass, a dict of arrays
    predict: Callable   # (params, x) -> {"log_gamma": [B, K], "z_mean": [B, Dz]}, deterministic
    sample: Callable    # (params, rng, n) -> x [K, n, *data_shape], n samples per cluster
    num_clusters: int
    embed: Callable = None   # (params, x) -> z_mean [B, Dz]; models with a stored mixture prior have it


def check_likelihood(model_cfg):
    if model_cfg.likelihood not in LIKELIHOODS:
        raise ConfigError(f"unknown likelihood {model_cfg.likelihood!r}; known: {list(LIKELIHOODS)}")


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


def log_likelihood(x_flat, out):
    """log p(x | z) summed over data dimensions: [B]."""
    if "x_logits" in out:
        logits = out["x_logits"]
        return jnp.sum(x_flat * jax.nn.log_sigmoid(logits) + (1 - x_flat) * jax.nn.log_sigmoid(-logits), -1)
    log_var = out["x_log_var"]
    return -0.5 * jnp.sum(LOG_2PI + log_var + (x_flat - out["x_loc"]) ** 2 * jnp.exp(-log_var), -1)


def decoded_mean(out):
    """The mean of p(x | z): what a sample or a reconstruction shows."""
    return jax.nn.sigmoid(out["x_logits"]) if "x_logits" in out else out["x_loc"]
