"""An objective is a weighted sum of ELBO terms: `{"recon": 1.0, "cv": 2.0, ...}` in the config.
Weights may be schedules of the step (gmvc/core/schedules.py)."""
import jax
import jax.numpy as jnp

from gmvc.core.inputs import as_values
from gmvc.errors import ConfigError
from gmvc.objectives.terms import (BATCH_TERMS, GROUP_TERMS, NEIGHBOUR_TERMS, TERMS, c_marginal_target,
                                   neighbour_options)
from gmvc.core.schedules import make_schedule


def make_batch(data, neighbours=None, groups=None):
    """The one shape of batch an objective reads: {"data": the model's inputs of the batch (an
    array [B, ...], or {"x", "y"} for a model conditioned on labels), "neighbours": the inputs of
    one nearest neighbour of each sample (the same shape), or None, "groups": each sample's group
    [B] in the last init_prior phase's partition (the `pin` term), or None}."""
    data, neighbours = jax.tree.map(as_values, (data, neighbours))      # uint8 as value / 255
    return {"data": data, "neighbours": neighbours, "groups": groups}


def make_objective(model, weights, term_options, axis_name=None):
    """Return loss_fn(params, batch, rng, step) -> (loss, aux) with one forward pass per call.

    aux holds every term's unweighted value under its own name, plus "loss". `axis_name`: the
    data axis when the loss runs per device on a slice of the batch; whole-batch statistics
    (BATCH_TERMS) then gather the batch over it. `batch` is make_batch's; with neighbours, their
    responsibilities join `out` as "nbr_log_gamma"; without (a score on the whole data, the
    validation ELBO) the NEIGHBOUR_TERMS are left out, and without groups the GROUP_TERMS.
    """
    weights, term_options = dict(weights), {k: dict(v) for k, v in dict(term_options).items()}
    unknown = sorted(set(weights) - set(TERMS))
    if unknown:
        raise ConfigError(f"unknown objective term(s) {unknown}; known terms: {sorted(TERMS)}")
    unknown_opts = sorted(set(term_options) - set(TERMS))
    if unknown_opts:
        raise ConfigError(f"options given for unknown term(s) {unknown_opts}; known terms: {sorted(TERMS)}")
    if "c_marginal" in weights and c_marginal_target(term_options.get("c_marginal", {})) == "prior" \
            and not getattr(model, "stored_prior", False):
        raise ConfigError("c_marginal: target 'prior' reads the mixture's weights, which this model computes from w "
                          "(GMVAE): use target 'uniform'")
    terms = {name: (TERMS[name](term_options.get(name, {}), axis_name=axis_name) if name in BATCH_TERMS
                    else TERMS[name](term_options.get(name, {}))) for name in weights}
    schedules = {name: make_schedule(w, f"objective.{name}") for name, w in weights.items()}

    wants_neighbours = bool(set(terms) & NEIGHBOUR_TERMS)
    fixed_neighbours = wants_neighbours and neighbour_options(term_options.get("neighbours", {}))["stop_gradient"]

    def loss_fn(params, batch, rng, step):
        nbr = batch["neighbours"]
        out = model.apply(params, batch["data"], rng)
        if nbr is not None and wants_neighbours:
            nbr_params = jax.lax.stop_gradient(params) if fixed_neighbours else params
            out["nbr_log_gamma"] = model.predict(nbr_params, nbr)["log_gamma"]
        if batch.get("groups") is not None:
            out["groups"] = batch["groups"]
        loss, aux = jnp.float32(0.0), {}
        for name, term in terms.items():
            if (name in NEIGHBOUR_TERMS and "nbr_log_gamma" not in out) or (name in GROUP_TERMS and "groups" not in out):
                continue
            value, term_aux = term(params, batch, out, rng)
            loss = loss + schedules[name](step) * value
            aux[name] = value
            aux.update(term_aux)
        aux["loss"] = loss
        return loss, aux

    return loss_fn


def make_elbo(model, axis_name=None):
    """loss_fn whose loss is the negative ELBO of `model` (the sum of model.elbo_terms, free bits
    off): the bound itself, without the regularisers that only steer training."""
    return make_objective(model, {t: 1.0 for t in model.elbo_terms}, {"c_prior": {"free_bits": 0.0}}, axis_name)


def infovae_weights(alpha, lam):
    """InfoVAE (Zhao et al. 2017) as term weights:
    -E[log p(x|z)] + (1 - alpha) KL(q(z|x) || p(z)) + (alpha + lambda - 1) MMD(q(z) || p(z)).
    alpha = 0, lambda = 1 is the VAE; alpha = 1 leaves no per-sample KL (MMD-VAE)."""
    if lam <= 0:
        raise ConfigError(f"InfoVAE: lambda must be positive, got {lam}")
    if alpha + lam - 1 < 0:
        raise ConfigError(f"InfoVAE: alpha + lambda - 1 must be >= 0 (a negative MMD weight rewards mismatch); "
                          f"got alpha={alpha}, lambda={lam}")
    return {"recon": 1.0, "kl_z": 1.0 - alpha, "mmd": alpha + lam - 1.0}
