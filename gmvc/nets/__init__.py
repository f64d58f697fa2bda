"""Network registry: encoders/decoders chosen by name in the config."""
from gmvc.errors import ConfigError
from gmvc.nets import mlp

ACTIVATIONS = mlp.ACTIVATIONS
_TRUNKS = {"mlp": mlp.MLP}


def make_trunk(name, hidden_sizes, activation):
    """A network body mapping a flat input to its last hidden layer."""
    if name not in _TRUNKS:
        raise ConfigError(f"unknown network {name!r}; known networks: {sorted(_TRUNKS)}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
    return _TRUNKS[name](hidden_sizes=tuple(hidden_sizes), activation=activation)
