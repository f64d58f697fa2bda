"""GMVAE with the consistency-violation term on the 5-arm spiral (Dilokthanakul et al. 2016): the
`gmvae` recipe with the paper's spiral settings (z and w dim 2, hidden 100, CV weight 2.0, batch
200, 500 epochs) and K = 5, one per arm (gmvae_spiral_k8.py uses the paper's K = 8). Departures
from the paper: Adam lr 1e-3, a fixed output sigma of 0.1, a linear warm-up of the CV weight,
the c_marginal term (so that one component does not serve several arms), and 4 restarts trained
together, the one with the lowest objective kept (no labels involved).
"""
from gmvc import recipes


def get_config():
    return recipes.gmvae_spiral()
