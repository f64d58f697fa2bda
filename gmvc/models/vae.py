"""The VAE (Kingma & Welling 2014) and the conditional VAE (Sohn et al. 2015).

VAE: z ~ N(0, I), x | z ~ p(x | z); q(z | x) a diagonal Gaussian. Its objective is chosen in the
config from the shared terms: recon + kl_z (VAE), recon + (1 - alpha) kl_z + (alpha + lambda - 1)
mmd (InfoVAE), recon + mmd (MMD-VAE).

CVAE: the same with a label y (num_labels = model.num_clusters classes) one-hot into both the
encoder (concatenated to the input: to the flat vector, or as constant channels of an image) and
the decoder (concatenated to z). Inputs are {"x": x, "y": labels}; samples are grouped by label.
Neither model clusters (num_clusters = 0); params["prior"] is empty.
"""
import jax
import jax.numpy as jnp

from gmvc.core import distributions, mixture
from gmvc.models import base
from gmvc.nets import make_decoder, make_encoder

Net = base.GaussianEncoderDecoder


def with_condition(x, onehot):
    """Concatenate a one-hot label to each sample: to the last axis of flat data, or as extra
    constant channels of an image."""
    if x.ndim == 2:
        return jnp.concatenate([x, onehot], -1)
    tiled = jnp.broadcast_to(onehot[:, None, None, :], (*x.shape[:-1], onehot.shape[-1]))
    return jnp.concatenate([x, tiled], -1)


def _make(model_cfg, data_shape, num_labels):
    base.check_model_settings(model_cfg)
    z_dim = model_cfg.z_dim
    enc_shape = (*data_shape[:-1], data_shape[-1] + num_labels)
    net = Net(z_dim=z_dim, encoder=make_encoder(model_cfg, enc_shape),
              decoder=make_decoder(model_cfg, data_shape, 2 if base.learns_variance(model_cfg) else 1))

    def split(inputs):
        if not num_labels:
            return inputs, None
        return inputs["x"], jax.nn.one_hot(inputs["y"], num_labels)

    def enc_input(x, onehot):
        return x if onehot is None else with_condition(x, onehot)

    def dec_input(z, onehot):
        return z if onehot is None else jnp.concatenate([z, onehot], -1)

    def init(rng):
        x = jnp.zeros((1, *data_shape))
        onehot = jnp.zeros((1, num_labels)) if num_labels else None
        return {"net": net.init(rng, enc_input(x, onehot), onehot)["params"], "prior": {}}

    def call(params, method, *args):
        return net.apply({"params": params["net"]}, *args, method=method)

    def apply(params, inputs, rng):
        x, onehot = split(inputs)
        z_mean, z_log_var = call(params, Net.encode, enc_input(base.corrupt(model_cfg, x, rng), onehot))
        z = mixture.reparameterize(rng, z_mean, z_log_var)
        out = {"x_flat": x.reshape(x.shape[0], -1), "z": z, "z_mean": z_mean, "z_log_var": z_log_var}
        out.update(base.decoder_outputs(model_cfg, call(params, Net.decode, dec_input(z, onehot))))
        return out

    def embed(params, inputs):
        x, onehot = split(inputs)
        return call(params, Net.encode, enc_input(x, onehot))[0]

    def predict(params, inputs):
        return {"z_mean": embed(params, inputs)}

    def decode(params, z, labels=None):
        onehot = jax.nn.one_hot(labels, num_labels) if num_labels else None
        raw = call(params, Net.decode, dec_input(z, onehot))
        return base.decoded_mean(base.decoder_outputs(model_cfg, raw)).reshape(z.shape[0], *data_shape)

    def sample(params, rng, n):
        groups = max(num_labels, 1)
        z = jax.random.normal(rng, (groups * n, z_dim))
        labels = jnp.repeat(jnp.arange(groups), n) if num_labels else None
        return decode(params, z, labels).reshape(groups, n, *data_shape)

    return base.Model(init=init, apply=apply, predict=predict, sample=sample, num_clusters=0, embed=embed,
                      decode=decode, num_labels=num_labels, elbo_terms=("recon", "kl_z"),
                      prior_distribution=lambda params: distributions.standard_normal(model_cfg.z_dim))


def make_vae(model_cfg, data_shape):
    return _make(model_cfg, data_shape, 0)


def make_cvae(model_cfg, data_shape):
    return _make(model_cfg, data_shape, model_cfg.num_clusters)
