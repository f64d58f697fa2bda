"""VaDE on the full MNIST through tensorflow-datasets (`tfds:mnist`), with the reference
hyperparameters of Jiang et al. (2017): dense 784-500-500-2000 encoder and mirrored decoder,
latent 10, K 10, Bernoulli likelihood, batch 100, Adam lr 0.002 (epsilon 1e-4) times 0.9 every
10 epochs with a floor of 0.0002, mixture parameters trained with the network.

The reference code shipped pretrained autoencoder weights and no pretraining code; here the
autoencoder is pretrained by the first phase, then a diagonal GMM is fitted to the embeddings
of the whole training set by EM, then VaDE trains (300 epochs in the reference).

The data must already be in the tensorflow-datasets folder (`data.data_dir`): this machine
cannot download it. Tested offline with tfds.testing.mock_data.
"""
from gmvc.config import base_config

EPOCH = 600     # steps per epoch: 60,000 training images / batch 100


def get_config():
    c = base_config()
    c.name = "vade_mnist"
    c.data.source = "tfds:mnist"
    c.data.split = "train"
    c.model.name = "vade"
    c.model.num_clusters = 10
    c.model.hidden_sizes = (500, 500, 2000)
    c.model.z_dim = 10
    c.model.likelihood = "bernoulli"
    c.objective = {"recon": 1.0, "vade_kl": 1.0}
    c.train.phases = ("pretrain", "gmm_init", "main")
    c.phases = {
        "pretrain": {"kind": "train", "steps": 50 * EPOCH, "objective": {"recon": 1.0}, "trainable": ("net",)},
        "gmm_init": {"kind": "init_prior", "method": "em", "kmeans_iters": 100, "em_iters": 100},
        "main": {"kind": "train", "steps": -1},
    }
    c.optim.lr = 0.002
    c.optim.lr_schedule = {"kind": "exponential_decay", "decay_rate": 0.9, "decay_steps": 10 * EPOCH,
                           "floor": 0.0002}
    c.optim.eps = 1e-4
    c.train.batch_size = 100
    c.train.steps = 350 * EPOCH      # 50 pretraining + 300 VaDE epochs
    c.train.log_every = EPOCH
    c.train.checkpoint_every = 10 * EPOCH
    c.lock()
    return c
