"""The S3VDC recipe (Cao et al. 2020) on the full MNIST through tensorflow-datasets
(`tfds:mnist`) with its reference setup: convolutional networks, latent 8, K 10, batch 128,
summed-squared-error reconstruction, the inverse min-max transform before the responsibilities'
softmax. Phases: gamma-training (a VAE with KL weight 5e-4), a mini-batch GMM initialisation,
then VaDE with periodic beta-annealing of the mixture KL. The data must already be in the
tensorflow-datasets folder (`data.data_dir`).
"""
from gmvc import recipes


def get_config():
    return recipes.s3vdc_mnist()
