"""gmvae_mnist5k.py with convolutional networks: stride-2 convolutions with filters
[32, 64, 128] and kernels [5, 5, 3] (the S3VDC encoder), a dense layer of 500, and the mirrored
transposed convolutions in the decoder.
"""
from gmvc.config import from_sibling


def get_config():
    c = from_sibling(__file__, "gmvae_mnist5k.py")
    c.unlock()
    c.name = "gmvae_conv_mnist5k"
    c.model.net = "conv"
    c.model.conv_filters = (32, 64, 128)
    c.model.conv_kernels = (5, 5, 3)
    c.model.hidden_sizes = (500,)
    c.train.steps = 5000
    c.lock()
    return c
