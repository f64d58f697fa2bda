"""gmvae_paper_mnist5k.py with convolutional networks: stride-2 convolutions with filters [32, 64, 128]
and kernels [5, 5, 3] (the S3VDC encoder), a dense layer of 500, and the mirrored transposed
convolutions in the decoder.
"""
from gmvc import recipes


def get_config():
    return recipes.gmvae_conv_mnist5k()
