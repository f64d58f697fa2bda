"""The spiral GMVAE with the paper's K = 8 clusters for 5 arms; scored by majority-label accuracy."""
from gmvc.config import from_sibling


def get_config():
    c = from_sibling(__file__, "gmvae_spiral.py")
    c.name = "gmvae_spiral_k8"
    c.model.num_clusters = 8
    # Eight equal clusters cannot fit five arms; a weaker usage term lets clusters follow arms.
    c.objective.c_marginal = 0.3
    return c
