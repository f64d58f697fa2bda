"""VaDE on scikit-learn's 8x8 digits (1,797 x 64), trained from scratch: autoencoder pretraining,
a diagonal GMM fitted to the embeddings by EM, then the VaDE objective."""
from gmvc.config import base_config


def get_config():
    c = base_config()
    c.name = "vade_digits"
    c.data.source = "digits"
    c.model.name = "vade"
    c.model.num_clusters = 10
    c.model.hidden_sizes = (500, 500, 2000)
    c.model.z_dim = 10
    c.model.likelihood = "bernoulli"
    c.objective = {"recon": 1.0, "vade_kl": 1.0}
    c.train.phases = ("pretrain", "gmm_init", "main")
    c.phases = {
        "pretrain": {"kind": "train", "steps": 2000, "objective": {"recon": 1.0}, "trainable": ("net",)},
        "gmm_init": {"kind": "init_prior", "method": "em", "kmeans_iters": 50, "em_iters": 20},
        "main": {"kind": "train", "steps": -1},
    }
    c.optim.lr = 2e-3
    c.optim.eps = 1e-4
    c.train.batch_size = 100
    c.train.steps = 6000
    c.train.log_every = 200
    c.train.checkpoint_every = 1000
    c.lock()
    return c
