"""VaDE (Jiang et al. 2017): c ~ Cat(pi), z | c ~ N(mu_c, diag sigma2_c), x | z ~ p(x | z);
q(z | x) a diagonal Gaussian, q(c | x) = p(c | z) under the mixture prior. The mixture lives in
params["prior"] as {"logits": [K], "means": [K, Dz], "log_vars": [K, Dz]}.
"""
import jax
import jax.numpy as jnp

from gmvc.core import distributions, mixture
from gmvc.models import base
from gmvc.nets import make_decoder, make_encoder
from gmvc.errors import ConfigError

GAMMA_TRANSFORMS = ("none", "inverse_minmax")


VaDENet = base.GaussianEncoderDecoder


def inverse_minmax_log_gamma(log_joint):
    """S3VDC's guard: rescale s = -log_joint over the whole [B, K] tensor to [-20, 0] before the
    softmax, so no logit can overflow. The min and max are over the batch, so the soft
    responsibilities depend on the batch a sample is in (their argmax does not)."""
    s = -log_joint
    scaled = (s - s.min()) / (s.max() - s.min() + 1e-12) * (-20.0)
    return jax.nn.log_softmax(scaled, axis=-1)


def init_prior(k, z_dim):
    """Uniform weights, unit variances, zero means (init draws the means from N(0, I)); an
    init_prior phase replaces these from the embeddings."""
    return {"logits": jnp.zeros((k,)), "means": jnp.zeros((k, z_dim)), "log_vars": jnp.zeros((k, z_dim))}


def make_vade(model_cfg, data_shape):
    base.check_model_settings(model_cfg)
    if model_cfg.gamma_transform not in GAMMA_TRANSFORMS:
        raise ConfigError(f"unknown model.gamma_transform {model_cfg.gamma_transform!r}; known: {GAMMA_TRANSFORMS}")
    k, z_dim = model_cfg.num_clusters, model_cfg.z_dim
    net = VaDENet(z_dim=z_dim, encoder=make_encoder(model_cfg, data_shape),
                  decoder=make_decoder(model_cfg, data_shape, 2 if base.learns_variance(model_cfg) else 1))

    def init(rng):
        rng_net, rng_means = jax.random.split(rng)
        prior = init_prior(k, z_dim)
        prior["means"] = jax.random.normal(rng_means, (k, z_dim))
        return {"net": net.init(rng_net, jnp.zeros((1, *data_shape)))["params"], "prior": prior}

    def call(params, method, *args):
        return net.apply({"params": params["net"]}, *args, method=method)

    def responsibilities(prior, z):
        log_joint = mixture.log_joint(z, prior["logits"], prior["means"], prior["log_vars"])    # [B, K]
        if model_cfg.gamma_transform == "inverse_minmax":
            return inverse_minmax_log_gamma(log_joint)
        return jax.nn.log_softmax(log_joint, axis=-1)

    def apply(params, x, rng):
        z_mean, z_log_var = call(params, VaDENet.encode, base.corrupt(model_cfg, x, rng))
        z = mixture.reparameterize(rng, z_mean, z_log_var)
        prior = params["prior"]
        out = {"x_flat": x.reshape(x.shape[0], -1), "z": z, "z_mean": z_mean, "z_log_var": z_log_var,
               "prior_means": prior["means"], "prior_log_vars": prior["log_vars"],
               "log_pi": jax.nn.log_softmax(prior["logits"]), "log_gamma": responsibilities(prior, z)}
        out.update(base.decoder_outputs(model_cfg, call(params, VaDENet.decode, z)))
        return out

    def predict(params, x):
        z_mean, _ = call(params, VaDENet.encode, x)
        return {"log_gamma": responsibilities(params["prior"], z_mean), "z_mean": z_mean}

    def embed(params, x):
        return call(params, VaDENet.encode, x)[0]

    def decode(params, z, labels=None):
        return base.decoded_mean(base.decoder_outputs(model_cfg, call(params, VaDENet.decode, z))).reshape(
            z.shape[0], *data_shape)

    def sample(params, rng, n):
        prior = params["prior"]
        eps = jax.random.normal(rng, (k, n, z_dim))
        z = prior["means"][:, None] + jnp.exp(0.5 * prior["log_vars"])[:, None] * eps    # [K, n, Dz]
        x = base.decoded_mean(base.decoder_outputs(model_cfg, call(params, VaDENet.decode, z.reshape(k * n, -1))))
        return x.reshape(k, n, *data_shape)

    return base.Model(init=init, apply=apply, predict=predict, sample=sample, num_clusters=k, embed=embed,
                      decode=decode, centres=lambda params: params["prior"]["means"], stored_prior=True,
                      elbo_terms=("recon", "vade_kl"),
                      prior_distribution=lambda params: distributions.diag_mixture(**params["prior"]))
