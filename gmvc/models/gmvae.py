"""GMVAE (Dilokthanakul et al. 2016): w ~ N(0, I), c ~ Uniform(K), z | w, c ~ N(mu_c(w), sigma2_c(w)),
x | z ~ p(x | z); q(z | x), q(w | x) diagonal Gaussians from one encoder, p(c | z, w) the posterior
of the uniform-prior mixture. The prior network lives under params["net"]; params["prior"] is empty
because the mixture is produced from w rather than stored.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from gmvc.core import distributions, mixture
from gmvc.models import base
from gmvc.nets import make_decoder, make_encoder


class GMVAENet(nn.Module):
    cfg: dict  # z_dim, w_dim, prior_hidden, num_clusters
    encoder: nn.Module
    decoder: nn.Module

    def setup(self):
        c = self.cfg
        self.z_head = nn.Dense(2 * c["z_dim"])
        self.w_head = nn.Dense(2 * c["w_dim"])
        self.prior_hidden = nn.Dense(c["prior_hidden"])
        self.prior_head = nn.Dense(2 * c["num_clusters"] * c["z_dim"])

    def encode(self, x):
        h = self.encoder(x)
        z_mean, z_log_var = jnp.split(self.z_head(h), 2, axis=-1)
        w_mean, w_log_var = jnp.split(self.w_head(h), 2, axis=-1)
        return z_mean, z_log_var, w_mean, w_log_var

    def prior(self, w):
        """Component means and log-variances given w: each [B, K, Dz]."""
        h = jnp.tanh(self.prior_hidden(w))
        out = self.prior_head(h).reshape(w.shape[0], self.cfg["num_clusters"], 2, self.cfg["z_dim"])
        return out[:, :, 0], out[:, :, 1]

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x):  # used by init only: touches every submodule
        z_mean, _, w_mean, _ = self.encode(x)
        return self.prior(w_mean), self.decode(z_mean)


def make_gmvae(model_cfg, data_shape):
    base.check_model_settings(model_cfg)
    k = model_cfg.num_clusters
    net_cfg = {"z_dim": model_cfg.z_dim, "w_dim": model_cfg.w_dim, "prior_hidden": model_cfg.prior_hidden,
               "num_clusters": k}
    net = GMVAENet(cfg=net_cfg, encoder=make_encoder(model_cfg, data_shape),
                   decoder=make_decoder(model_cfg, data_shape, 2 if base.learns_variance(model_cfg) else 1))

    def init(rng):
        return {"net": net.init(rng, jnp.zeros((1, *data_shape)))["params"], "prior": {}}

    def call(params, method, *args):
        return net.apply({"params": params["net"]}, *args, method=method)

    def forward(params, x, z, w, z_mean, z_log_var, w_mean, w_log_var):
        prior_means, prior_log_vars = call(params, GMVAENet.prior, w)
        # Uniform p(c): responsibilities are the softmax of the component log-densities.
        log_gamma = jax.nn.log_softmax(mixture.diag_normal_log_prob(z[:, None, :], prior_means, prior_log_vars), -1)
        out = {"x_flat": x.reshape(x.shape[0], -1), "z": z, "z_mean": z_mean, "z_log_var": z_log_var, "w": w,
               "w_mean": w_mean, "w_log_var": w_log_var, "prior_means": prior_means,
               "prior_log_vars": prior_log_vars, "log_gamma": log_gamma}
        out.update(base.decoder_outputs(model_cfg, call(params, GMVAENet.decode, z)))
        return out

    def apply(params, x, rng):
        z_mean, z_log_var, w_mean, w_log_var = call(params, GMVAENet.encode, base.corrupt(model_cfg, x, rng))
        rng_z, rng_w = mixture.split_keys(rng)
        z = mixture.reparameterize(rng_z, z_mean, z_log_var)
        w = mixture.reparameterize(rng_w, w_mean, w_log_var)
        return forward(params, x, z, w, z_mean, z_log_var, w_mean, w_log_var)

    def predict(params, x):
        z_mean, z_log_var, w_mean, w_log_var = call(params, GMVAENet.encode, x)
        out = forward(params, x, z_mean, w_mean, z_mean, z_log_var, w_mean, w_log_var)
        return {"log_gamma": out["log_gamma"], "z_mean": z_mean}

    def embed(params, x):
        return call(params, GMVAENet.encode, x)[0]

    def decode(params, z, labels=None):
        return base.decoded_mean(base.decoder_outputs(model_cfg, call(params, GMVAENet.decode, z))).reshape(
            z.shape[0], *data_shape)

    def centres(params):
        """The components' means at w = 0, the mode of p(w)."""
        return call(params, GMVAENet.prior, jnp.zeros((1, model_cfg.w_dim)))[0][0]

    def prior_at_w0(params):
        """p(z | w = 0): the K components at the mode of p(w), equally weighted (p(c) is uniform)."""
        means, log_vars = call(params, GMVAENet.prior, jnp.zeros((1, model_cfg.w_dim)))
        return distributions.diag_mixture(distributions.uniform_logits(k), means[0], log_vars[0])

    def load_prior(params, fitted):
        """params whose prior network gives the fitted components at every w: the output layer's
        bias holds their means and log-variances, its kernel is zeroed (training learns w's part
        from there). p(c) stays uniform: the fit's weights are not read."""
        head = params["net"]["prior_head"]
        bias = jnp.stack([fitted["means"], fitted["log_vars"]], axis=1).reshape(head["bias"].shape)
        net = {**params["net"], "prior_head": {"kernel": jnp.zeros_like(head["kernel"]),
                                               "bias": bias.astype(head["bias"].dtype)}}
        return {**params, "net": net}

    def sample(params, rng, n):
        rng_w, rng_z = jax.random.split(rng)
        w = jax.random.normal(rng_w, (n, model_cfg.w_dim))
        means, log_vars = call(params, GMVAENet.prior, w)            # [n, K, Dz]
        z = mixture.reparameterize(rng_z, means, log_vars).swapaxes(0, 1).reshape(k * n, -1)
        x = base.decoded_mean(base.decoder_outputs(model_cfg, call(params, GMVAENet.decode, z)))
        return x.reshape(k, n, *data_shape)

    return base.Model(init=init, apply=apply, predict=predict, sample=sample, num_clusters=k, embed=embed,
                      decode=decode, centres=centres, elbo_terms=("recon", "cond_prior", "w_prior", "c_prior"),
                      prior_distribution=prior_at_w0, load_prior=load_prior)
