"""GMVAE with the consistency-violation term on the 5-arm spiral (Dilokthanakul et al. 2016).

Paper's spiral settings: z dim 2, w dim 2, hidden 100, CV weight (alpha) 2.0, batch 200,
500 epochs of 5,000 points; K = 5, one per arm (configs/gmvae_spiral_k8.py uses the paper's K = 8).
"""
from gmvc.config import base_config


def get_config():
    c = base_config()
    c.name = "gmvae_spiral"
    c.data.source = "spiral"
    c.model.name = "gmvae"
    c.model.num_clusters = 5
    c.model.hidden_sizes = (100,)
    c.model.z_dim = 2
    c.model.w_dim = 2
    c.model.prior_hidden = 100
    c.model.likelihood = "gaussian"
    c.model.sigma = 0.0                # learned output variance, as the reference's Gaussian criterion
    c.objective = {"recon": 1.0, "cond_prior": 1.0, "w_prior": 1.0, "c_prior": 1.0, "cv": 2.0}
    c.terms = {"c_prior": {"free_bits": 0.5}}
    c.optim.lr = 1e-3
    c.train.batch_size = 200
    c.train.steps = 12500              # 500 epochs of 25 batches
    c.train.log_every = 250
    c.train.checkpoint_every = 2500
    c.lock()
    return c
