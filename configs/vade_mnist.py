"""VaDE on the full MNIST through tensorflow-datasets (`tfds:mnist`) with the reference
hyperparameters of Jiang et al. (2017): dense 784-500-500-2000, latent 10, K 10, Bernoulli
likelihood, batch 100, Adam lr 0.002 (epsilon 1e-4) x 0.9 every 10 epochs, floor 0.0002. The
reference shipped pretrained autoencoder weights; here the first phase pretrains it, then EM fits
the GMM, then VaDE trains 300 epochs. The data must already be in the tensorflow-datasets folder
(`data.data_dir`).
"""
from gmvc import recipes


def get_config():
    return recipes.vade_mnist()
