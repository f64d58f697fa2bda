"""ELBO terms. Each factory takes the term's options and returns
`term(params, batch, out, rng) -> (scalar, aux)`, where `out` is the model's one shared forward pass.
Every term is a per-sample quantity averaged over the batch, so weights are comparable across
batch sizes. Names here are the names used in configs, aux dicts and logs.
"""
import jax
import jax.numpy as jnp

from gmvc.core import mixture
from gmvc.errors import ConfigError
from gmvc.models.base import log_likelihood

MMD_KERNELS = ("rbf", "imq")
MMD_PRIORS = ("normal", "mixture")


def make_recon(opts):
    """-E_q(z|x)[log p(x | z)] with the model's likelihood."""
    def recon(params, batch, out, rng):
        return -jnp.mean(log_likelihood(out["x_flat"], out)), {}
    return recon


def make_kl_z(opts):
    """KL(q(z | x) || N(0, I)) in closed form (the VAE's prior term)."""
    def kl_z(params, batch, out, rng):
        return jnp.mean(mixture.kl_standard_normal(out["z_mean"], out["z_log_var"])), {}
    return kl_z


def make_cond_prior(opts):
    """GMVAE conditional prior: E_{q(w|x) p(c|z,w)} KL(q(z | x) || p(z | w, c))."""
    def cond_prior(params, batch, out, rng):
        return jnp.mean(_expected_component_kl(out)), {}
    return cond_prior


def make_w_prior(opts):
    """GMVAE w-prior: KL(q(w | x) || N(0, I))."""
    def w_prior(params, batch, out, rng):
        return jnp.mean(mixture.kl_standard_normal(out["w_mean"], out["w_log_var"])), {}
    return w_prior


def _kl_gamma_prior(out):
    """KL(q(c | x) || p(c)) per sample: p(c) from out["log_pi"], uniform when the model has none."""
    log_gamma = out["log_gamma"]
    log_pi = out.get("log_pi", -jnp.log(log_gamma.shape[-1]))
    return -mixture.categorical_entropy(log_gamma) - jnp.sum(jnp.exp(log_gamma) * log_pi, axis=-1)


def _expected_component_kl(out):
    """sum_k q(c = k | x) KL(q(z | x) || N(mu_k, sigma2_k)) per sample: [B]."""
    kl = mixture.kl_diag_normals(out["z_mean"][:, None], out["z_log_var"][:, None],
                                 out["prior_means"], out["prior_log_vars"])   # [B, K]
    return jnp.sum(jnp.exp(out["log_gamma"]) * kl, axis=-1)


def make_c_prior(opts, axis_name=None):
    """c-prior: E[KL(q(c | x) || p(c))] (GMVAE: p(c | z, w) against Uniform(K)), active only above
    the free-bits threshold lambda (Dilokthanakul et al.'s minimum information constraint). The
    threshold applies to the batch mean, so on several devices the mean is taken over all of them."""
    free_bits = float(opts.get("free_bits", 0.0))

    def c_prior(params, batch, out, rng):
        kl = jnp.mean(_kl_gamma_prior(out))
        if axis_name is not None:
            kl = jax.lax.pmean(kl, axis_name)
        return jnp.maximum(kl, free_bits), {"c_prior_kl": kl}
    return c_prior


def make_vade_kl(opts):
    """VaDE's mixture KL, KL(q(z, c | x) || p(z, c)) =
    sum_k gamma_k KL(q(z | x) || N(mu_k, sigma2_k)) + KL(gamma || pi), per sample, averaged."""
    def vade_kl(params, batch, out, rng):
        return jnp.mean(_expected_component_kl(out) + _kl_gamma_prior(out)), {}
    return vade_kl


def make_cv(opts):
    """Consistency violation: E[H(p(c | z, w))], the mean entropy of the responsibilities."""
    def cv(params, batch, out, rng):
        return jnp.mean(mixture.categorical_entropy(out["log_gamma"])), {}
    return cv


def gather_batch(a, axis_name):
    """The whole batch of a per-device slice (data-parallel steps), or `a` itself on one device."""
    return a if axis_name is None else jax.lax.all_gather(a, axis_name, tiled=True)


C_MARGINAL_TARGETS = ("uniform", "prior")


def c_marginal_target(opts):
    """The `c_marginal` term's option "target": "uniform" (the default) or "prior"."""
    unknown = sorted(set(opts) - {"target"})
    if unknown:
        raise ConfigError(f"c_marginal: unknown option(s) {unknown}; it takes 'target' ({list(C_MARGINAL_TARGETS)})")
    target = opts.get("target", "uniform")
    if target not in C_MARGINAL_TARGETS:
        raise ConfigError(f"c_marginal: unknown target {target!r}; known: {list(C_MARGINAL_TARGETS)}")
    return target


def make_c_marginal(opts, axis_name=None):
    """KL(mean_b q(c | x_b) || p(c)): how far the batch's cluster usage is from a target p(c), the
    uniform (target "uniform", the default) or the mixture's own weights, held fixed for the
    term (target "prior": the shares of the partition the prior was fitted to, as VaDE trains
    them; it assumes no cluster sizes). The per-sample c-prior cannot see one cluster taking all
    the data; this term can. A statistic of the whole batch: on several devices it is computed
    on the gathered batch."""
    target = c_marginal_target(opts)

    def c_marginal(params, batch, out, rng):
        log_gamma = gather_batch(out["log_gamma"], axis_name)
        log_marginal = jax.nn.logsumexp(log_gamma, axis=0) - jnp.log(log_gamma.shape[0])   # [K]
        if target == "uniform":
            return jnp.log(log_marginal.shape[0]) - mixture.categorical_entropy(log_marginal), {}
        log_p = jax.nn.log_softmax(jax.lax.stop_gradient(params["prior"]["logits"]))
        finite = jnp.where(jnp.isneginf(log_marginal), log_p, log_marginal)      # 0 * log 0 as 0
        return jnp.sum(jnp.exp(log_marginal) * (finite - log_p)), {}
    return c_marginal


def _squared_distances(a, b):
    return jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2.0 * a @ b.T


def mmd_kernel(kind, dim, scale=1.0):
    """k(a, b) from squared distances. rbf: exp(-|a-b|^2 / (2 s^2)) with s^2 = scale * dim;
    imq: C / (C + |a-b|^2) with C = 2 * scale * dim. For two N(0, I) draws E|a-b|^2 = 2 dim,
    so scale 1 puts the kernel's width at the prior's own scale."""
    if kind not in MMD_KERNELS:
        raise ConfigError(f"mmd: unknown kernel {kind!r}; known: {list(MMD_KERNELS)}")
    if kind == "rbf":
        return lambda d2: jnp.exp(-d2 / (2.0 * scale * dim))
    c = 2.0 * scale * dim
    return lambda d2: c / (c + d2)


def mmd_unbiased(a, b, kernel):
    """The unbiased estimate of MMD^2 between samples a [n, D] and b [m, D]: the within-sample
    means exclude the diagonal (k(a_i, a_i)), so its expectation is exactly MMD^2 (zero when
    the two distributions are the same; single estimates may be negative)."""
    n, m = a.shape[0], b.shape[0]
    kaa, kbb, kab = kernel(_squared_distances(a, a)), kernel(_squared_distances(b, b)), kernel(_squared_distances(a, b))
    within_a = (jnp.sum(kaa) - jnp.sum(jnp.diagonal(kaa))) / (n * (n - 1))
    within_b = (jnp.sum(kbb) - jnp.sum(jnp.diagonal(kbb))) / (m * (m - 1))
    return within_a + within_b - 2.0 * jnp.mean(kab)


def sample_prior(rng, out, n, which):
    """n draws from the latent prior: N(0, I), or the model's stored mixture (VaDE). With
    per-sample keys (n of them), draw i uses key i."""
    z_dim = out["z"].shape[-1]
    if which == "normal":
        return mixture.normal(rng, (n, z_dim))
    if "log_pi" not in out:
        raise ConfigError("mmd: prior 'mixture' needs a model with a stored mixture prior (vade)")
    rng_c, rng_z = mixture.split_keys(rng)
    if mixture.per_sample(rng_c):
        c = jax.vmap(lambda r: jax.random.categorical(r, out["log_pi"]))(rng_c)
    else:
        c = jax.random.categorical(rng_c, out["log_pi"], shape=(n,))
    return mixture.reparameterize(rng_z, out["prior_means"][c], out["prior_log_vars"][c])


def make_mmd(opts, axis_name=None):
    """MMD^2(q(z) || p(z)) between the batch's codes (samples of the aggregate posterior) and as
    many prior samples, unbiased estimator. Options: kernel "rbf" | "imq" (default imq), scale
    (kernel width, default 1), prior "normal" | "mixture" (the model's stored mixture)."""
    kind, scale, which = opts.get("kernel", "imq"), float(opts.get("scale", 1.0)), opts.get("prior", "normal")
    unknown = sorted(set(opts) - {"kernel", "scale", "prior"})
    if unknown:
        raise ConfigError(f"mmd: unknown option(s) {unknown}; options are ['kernel', 'prior', 'scale']")
    if which not in MMD_PRIORS:
        raise ConfigError(f"mmd: unknown prior {which!r}; known: {list(MMD_PRIORS)}")
    mmd_kernel(kind, 1)                      # checks the name before any tracing

    def mmd(params, batch, out, rng):
        z = out["z"]
        prior = sample_prior(mixture.fold_in(rng, 0x6D6D64), out, z.shape[0], which)   # not the model's noise
        z, prior = gather_batch(z, axis_name), gather_batch(prior, axis_name)          # a two-sample statistic
        return mmd_unbiased(z, prior, mmd_kernel(kind, z.shape[-1], scale)), {}
    return mmd


NEIGHBOUR_OPTIONS = ("stop_gradient",)


def neighbour_options(opts):
    """The `neighbours` term's options: {"stop_gradient": bool}. With stop_gradient the
    neighbour's q(c | n) is a fixed target for the sample (no gradient flows through the
    neighbour's encoder pass, so a step skips its backward pass)."""
    opts = dict(opts)
    unknown = sorted(set(opts) - set(NEIGHBOUR_OPTIONS))
    if unknown:
        raise ConfigError(f"neighbours: unknown option(s) {unknown}; known: {list(NEIGHBOUR_OPTIONS)}")
    if not isinstance(opts.get("stop_gradient", False), bool):
        raise ConfigError(f"neighbours: stop_gradient must be true or false, got {opts['stop_gradient']!r}")
    return {"stop_gradient": opts.get("stop_gradient", False)}


def make_neighbours(opts):
    """-log sum_k q(c = k | x) q(c = k | n): the log-probability that a sample x and one of its
    nearest neighbours n in the embedding (gmvc/core/neighbours.py) fall in the same component. It
    is 0 when both are certain of the same component; its minimum alone would be one cluster
    for everything, so it is used with c_marginal. Options: neighbour_options."""
    neighbour_options(opts)

    def neighbours(params, batch, out, rng):
        agree = jax.nn.logsumexp(out["log_gamma"] + out["nbr_log_gamma"], axis=-1)    # [B]
        return -jnp.mean(agree), {}
    return neighbours


def make_pin(opts):
    """-log q(c = g | x): the cross-entropy of a sample's responsibilities to its group g in the
    partition the last init_prior phase found (its merged groups where it over-clustered, else
    each embedding's most likely component; EmbeddingPhases.groups). Group g is the prior's
    component g, so the term holds each group in its own component while VaDE trains, where the
    `neighbours` term alone lets two groups drift into one component."""
    def pin(params, batch, out, rng):
        log_gamma = out["log_gamma"]
        picked = jnp.take_along_axis(log_gamma, out["groups"][:, None].astype(jnp.int32), axis=-1)[:, 0]
        return -jnp.mean(picked), {}
    return pin


NEIGHBOUR_TERMS = {"neighbours"}   # need a batch with neighbours; left out of whole-data scores
GROUP_TERMS = {"pin"}              # need a batch with groups; left out of whole-data scores
BATCH_TERMS = ("c_marginal", "mmd", "c_prior")   # statistics of the whole batch, not per-sample means

TERMS = {"recon": make_recon, "kl_z": make_kl_z, "cond_prior": make_cond_prior, "w_prior": make_w_prior,
         "c_prior": make_c_prior, "cv": make_cv, "c_marginal": make_c_marginal,
         "vade_kl": make_vade_kl, "mmd": make_mmd, "neighbours": make_neighbours, "pin": make_pin}
