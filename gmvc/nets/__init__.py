"""Network registry: encoders and decoders chosen by name (config.model.net).

make_encoder(model_cfg, data_shape) -> module: x [B, *data_shape] -> features [B, F]
make_decoder(model_cfg, data_shape, outputs_per_value) -> module: z [B, Dz] -> raw [B, m * prod(data_shape)]
where the raw output is m blocks of prod(data_shape) values, each in the data's own (H, W, C) order.
"""
from gmvc.errors import ConfigError
from gmvc.nets import conv, mlp

ACTIVATIONS = mlp.ACTIVATIONS


def _check(model_cfg, data_shape):
    if model_cfg.net not in ("mlp", "conv"):
        raise ConfigError(f"unknown network {model_cfg.net!r}; known networks: ['conv', 'mlp']")
    if model_cfg.activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {model_cfg.activation!r}; known: {sorted(ACTIVATIONS)}")
    if model_cfg.net == "conv" and len(data_shape) != 3:
        raise ConfigError(f"the conv network needs image data [H, W, C]; this data has samples of shape {data_shape}")


def make_encoder(model_cfg, data_shape):
    _check(model_cfg, data_shape)
    if model_cfg.net == "conv":
        return conv.ConvEncoder(filters=tuple(model_cfg.conv_filters), kernels=tuple(model_cfg.conv_kernels),
                                hidden_sizes=tuple(model_cfg.hidden_sizes), activation=model_cfg.activation)
    return mlp.MLP(hidden_sizes=tuple(model_cfg.hidden_sizes), activation=model_cfg.activation)


def make_decoder(model_cfg, data_shape, outputs_per_value=1):
    _check(model_cfg, data_shape)
    if model_cfg.net == "conv":
        return conv.ConvDecoder(filters=tuple(model_cfg.conv_filters), kernels=tuple(model_cfg.conv_kernels),
                                hidden_sizes=tuple(model_cfg.hidden_sizes), activation=model_cfg.activation,
                                data_shape=tuple(data_shape), outputs_per_value=outputs_per_value)
    return mlp.MLPDecoder(hidden_sizes=tuple(reversed(model_cfg.hidden_sizes)), activation=model_cfg.activation,
                          out_size=outputs_per_value * _prod(data_shape))


def _prod(shape):
    n = 1
    for s in shape:
        n *= s
    return n
