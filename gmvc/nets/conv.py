"""Convolutional encoder/decoder for images of any size and channel count (S3VDC style:
stride-2 convolutions, e.g. filters [32, 64, 128] with kernels [5, 5, 3], ELU)."""
import math
from typing import Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from gmvc.nets.mlp import ACTIVATIONS, MLP


class ConvEncoder(nn.Module):
    filters: Sequence[int]
    kernels: Sequence[int]
    hidden_sizes: Sequence[int]
    activation: str

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        h = x
        for f, k in zip(self.filters, self.kernels):
            h = act(nn.Conv(f, (k, k), strides=(2, 2), padding="SAME")(h))
        return MLP(self.hidden_sizes, self.activation)(h)


class ConvDecoder(nn.Module):
    filters: Sequence[int]
    kernels: Sequence[int]
    hidden_sizes: Sequence[int]
    activation: str
    data_shape: Tuple[int, int, int]
    outputs_per_value: int = 1

    @nn.compact
    def __call__(self, z):
        act = ACTIVATIONS[self.activation]
        height, width, channels = self.data_shape
        n = len(self.filters)
        h0, w0 = math.ceil(height / 2**n), math.ceil(width / 2**n)
        h = MLP(tuple(reversed(self.hidden_sizes)), self.activation)(z)
        h = act(nn.Dense(h0 * w0 * self.filters[-1])(h)).reshape(z.shape[0], h0, w0, self.filters[-1])
        for f, k in zip(reversed(self.filters[:-1]), reversed(self.kernels[1:])):
            h = act(nn.ConvTranspose(f, (k, k), strides=(2, 2), padding="SAME")(h))
        m = self.outputs_per_value
        h = nn.ConvTranspose(channels * m, (self.kernels[0],) * 2, strides=(2, 2), padding="SAME")(h)
        h = h[:, :height, :width].reshape(z.shape[0], height, width, m, channels)   # crop the upsampling excess
        return jnp.moveaxis(h, 3, 1).reshape(z.shape[0], -1)                        # m blocks in (H, W, C) order
