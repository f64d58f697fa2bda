"""The experiment recipes: functions returning a locked `ml_collections.ConfigDict` (the keys
of gmvc.config.base_config). Defined once here, they are shared by the files in configs/ (the
command line), the estimators (gmvc.VaDE, gmvc.GMVAE, gmvc.GMVCEstimator) and the notebooks.

    from gmvc import recipes
    c = recipes.get("vade_digits")()        # or recipes.vade_digits()
    c = recipes.vade(n_clusters=5, steps=1000, pretrain_steps=400)

`cluster` is the default method for new data (gmvc.VaDE(), configs/cluster.py), and
`cluster_gmvae` the same with GMVAE (gmvc.GMVAE()); `vade` and `gmvae` are the parametrised
recipes of their family;
every other function is one experiment of configs/, its data source included. Nothing here
imports JAX: loading a config stays cheap.
"""
from gmvc.errors import ConfigError
from gmvc.recipes.cluster import cluster, cluster_gmvae
from gmvc.recipes.gmvae_family import (gmvae, gmvae_conv_mnist5k, gmvae_mnist5k, gmvae_paper_mnist5k, gmvae_spiral,
                                       gmvae_spiral_k8)
from gmvc.recipes.vade_family import s3vdc_mnist, s3vdc_mnist5k, vade, vade_digits, vade_mnist, vade_mnist5k
from gmvc.recipes.vae_family import cvae_mnist5k, infovae_mnist5k, mmdvae_mnist5k, vae_mnist5k

# Name -> recipe. The experiments (one per file in configs/) need no argument; "cluster",
# "cluster_gmvae", "vade" and "gmvae" are the parametrised ones at their defaults.
RECIPES = {f.__name__: f for f in (
    cluster, cluster_gmvae, vade, vade_digits, vade_mnist5k, vade_mnist, s3vdc_mnist, s3vdc_mnist5k,
    gmvae, gmvae_spiral, gmvae_spiral_k8, gmvae_mnist5k, gmvae_paper_mnist5k, gmvae_conv_mnist5k,
    vae_mnist5k, cvae_mnist5k, infovae_mnist5k, mmdvae_mnist5k)}


def names():
    return sorted(RECIPES)


def get(name):
    """The recipe function called `name` (see RECIPES); call it for the config."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {', '.join(names())}") from None


__all__ = ["RECIPES", "get", "names", *RECIPES]
