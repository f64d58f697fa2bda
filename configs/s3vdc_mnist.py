"""The S3VDC recipe (Cao et al. 2020) on the full MNIST through tensorflow-datasets
(`tfds:mnist`), with its reference setup: convolutional encoder [32, 64, 128] filters, kernels
[5, 5, 3], stride 2, ELU, and the mirrored decoder; latent 8; K 10; batch 128; Adam lr 0.002
decayed x0.96 every 1000 steps; reconstruction as summed squared error (a Gaussian likelihood
with sigma^2 = 1/2); the inverse min-max transform before the responsibilities' softmax.

Phases: (1) gamma-training, a VAE whose KL weight is gamma = 5e-4; (2) mini-batch GMM
initialisation from 200 batches of 128 embeddings (k-means, then diagonal variances);
(3) VaDE with periodic beta-annealing: the mixture KL's weight rises along a cubic from gamma
to 1 over `beta_steps`, holds at 1 for `static_steps`, and repeats.

The data must already be in the tensorflow-datasets folder (`data.data_dir`): this machine
cannot download it. Tested offline with tfds.testing.mock_data.
"""
from gmvc.config import base_config

GAMMA = 5e-4
BETA_STEPS, STATIC_STEPS = 2500, 2500


def get_config():
    c = base_config()
    c.name = "s3vdc_mnist"
    c.data.source = "tfds:mnist"
    c.data.split = "train"
    c.model.name = "vade"
    c.model.net = "conv"
    c.model.conv_filters = (32, 64, 128)
    c.model.conv_kernels = (5, 5, 3)
    c.model.hidden_sizes = ()
    c.model.activation = "elu"
    c.model.z_dim = 8
    c.model.num_clusters = 10
    c.model.likelihood = "gaussian"
    c.model.sigma = 0.7071067811865476        # summed squared error = Gaussian NLL with sigma^2 = 1/2
    c.model.gamma_transform = "inverse_minmax"
    c.objective = {"recon": 1.0, "vade_kl": {"kind": "periodic_cubic", "value": 1.0, "start": GAMMA,
                                             "ramp_steps": BETA_STEPS, "hold_steps": STATIC_STEPS}}
    c.train.phases = ("gamma_training", "gmm_init", "main")
    c.phases = {
        "gamma_training": {"kind": "train", "steps": 10000, "objective": {"recon": 1.0, "kl_z": GAMMA},
                           "trainable": ("net",)},
        "gmm_init": {"kind": "init_prior", "method": "minibatch", "batches": 200, "batch_size": 128,
                     "kmeans_iters": 100, "em_iters": 0},
        "main": {"kind": "train", "steps": -1},
    }
    c.optim.lr = 0.002
    c.optim.lr_schedule = {"kind": "exponential_decay", "decay_rate": 0.96, "decay_steps": 1000}
    c.train.batch_size = 128
    c.train.steps = 60000
    c.train.log_every = 500
    c.train.checkpoint_every = 5000
    c.lock()
    return c
