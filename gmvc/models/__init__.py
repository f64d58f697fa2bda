"""Model registry. A model is a bundle of pure functions over one parameter pytree
`{"net": ..., "prior": ...}`; see gmvc/models/base.py."""
from gmvc.core.inputs import reading_values
from gmvc.errors import ConfigError
from gmvc.models import gmvae, vade, vae
from gmvc.models.base import Model

_MODELS = {"gmvae": gmvae.make_gmvae, "vade": vade.make_vade, "vae": vae.make_vae, "cvae": vae.make_cvae}


def make_model(model_cfg, data_shape) -> Model:
    if model_cfg.name not in _MODELS:
        raise ConfigError(f"unknown model {model_cfg.name!r}; known models: {sorted(_MODELS)}")
    model = _MODELS[model_cfg.name](model_cfg, tuple(data_shape))
    # Inputs as stored (uint8 stays uint8 until the device) are read as values here.
    return model._replace(apply=reading_values(model.apply), predict=reading_values(model.predict),
                          embed=reading_values(model.embed))
