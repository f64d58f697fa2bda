"""Dense networks (flax linen)."""
from typing import Sequence

import flax.linen as nn
import jax

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jax.nn.tanh, "elu": jax.nn.elu, "gelu": jax.nn.gelu,
               "softplus": jax.nn.softplus}


class MLP(nn.Module):
    """Flattens its input, then Dense + activation per hidden size."""

    hidden_sizes: Sequence[int]
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        h = x.reshape(x.shape[0], -1)
        for width in self.hidden_sizes:
            h = ACTIVATIONS[self.activation](nn.Dense(width)(h))
        return h


class MLPDecoder(nn.Module):
    """Dense + activation per hidden size, then a linear layer of out_size units."""

    hidden_sizes: Sequence[int]
    activation: str
    out_size: int

    @nn.compact
    def __call__(self, z):
        return nn.Dense(self.out_size)(MLP(self.hidden_sizes, self.activation)(z))
