"""The default recipe for data gmvc has not seen (`gmvc.VaDE(n_clusters=K)`, `GMVCEstimator()`,
configs/cluster.py): VaDE with neighbours, for points and images of any size. What it adapts to the data
is stated in gmvc/data/prepare.py (scaling, likelihood) and gmvc/recipes/rules.py (augmentation,
batch sizes, over-clustering); nothing reads a data set's name or labels."""
from gmvc.errors import ConfigError
from gmvc.recipes.vade_family import vade

_KNN = {"kind": "neighbours", "k": 3}
LARGE_NET, SMALL_NET, SMALL_BELOW = (500, 500, 1000), (128, 128, 256), 1_000_000
STEPS, EPOCHS = 4000, 100


def cluster(n_clusters=10, steps="auto", pretrain_steps=None, batch_size=100, latent_dim=10,
            hidden_sizes="auto", learning_rate=2e-3, c_marginal=20.0, likelihood="auto", sigma=0.1,
            pin=1.0, restarts=1, checkpoint_every=None, name="cluster"):
    """Pretraining, then three rounds of (neighbours, mixture fit, VaDE):

    1. an autoencoder alone for `pretrain_steps` (None: 3/8 of `steps`; batch 256; images
       augmented by small shifts);
    2. each sample's 3 nearest neighbours in the embedding;
    3. a diagonal GMM of 8 K components (at most N / 20) on the embeddings smoothed once along
       the neighbour graph, its components merged into K groups along the graph two ways
       (average linkage and modularity); of the 30 fits x 2 merges, the partition with the
       highest modularity on the neighbour graph is kept (it assumes no cluster sizes). Unless
       the samples are images, that partition is compared with a full-covariance GMM's on the
       data's own features (5 fits, on at most 10 principal components; up to 100,000
       samples): the GMM's replaces it only if it cuts below 0.8 of its share of the links of
       the features' 3-nearest-neighbour graph (the graph's partition where the groups follow
       the graph or the two are near a tie; the GMM's where a balanced graph partition cuts
       through a big cluster). The prior is fitted to the groups (component g to group g),
       and each group's 3 anchors are its members nearest the group's mean;
    4. VaDE for half the remaining steps with three more terms: `pin` (weight `pin`), each
       sample's cross-entropy to its group's component, which holds the groups apart whatever
       their shape; `neighbours` (20) on each sample's anchors; `c_marginal` (20), the batch's
       cluster usage against the mixture's own weights (target "prior": the shares of the
       partition kept, as VaDE trains them; no cluster sizes assumed; 0 turns it off);
    5. twice more: 3 nearest neighbours found in the shaped embedding, a refit of 3 K components
       merged into K the same way, which replaces the prior only if its partition has the higher
       modularity, and VaDE pinned to the partition kept, with the neighbours term on those
       neighbours (a quarter of the remaining steps each). A run that kept the features'
       partition keeps it: it is not refitted.

    n_clusters "auto" (choose_k.auto): the mixture finds K while it trains (gmvc/training/k_auto.py):
    K_max slots (a rule of gmvc/recipes/rules.py), the first fit over-clustered into K_max groups
    without the features' GMM, then rounds of moves on those embeddings (retire, merge, split)
    until none is accepted, no refits, and after each chunk of the clustering phases a component
    left with too few samples retires.

    The data are scaled and the likelihood chosen from their values (data.scaling and
    model.likelihood "auto"; `sigma` is the Gaussian likelihood's std on standardized data).
    hidden_sizes "auto": the encoder's widths are 500-500-1000 for data of 1,000,000 values
    (N x the sample's size) or more, 128-128-256 below (model.small_hidden_sizes, a rule of
    gmvc/recipes/rules.py); a tuple is used whatever the data. steps "auto": min(4,000,
    max(2,000, 100 epochs)) (train.epochs, train.min_steps): 2,000 for N <= 2,000 at batch 100,
    all 4,000 from N = 4,000; a number is used whatever the data. Every phase keeps its share.
    The restart kept is the one with the lowest objective on the data.
    """
    auto_steps = isinstance(steps, str) and steps == "auto"
    auto_k = isinstance(n_clusters, str) and n_clusters == "auto"
    k, steps = 10 if auto_k else int(n_clusters), STEPS if auto_steps else int(steps)
    pretrain_steps = steps * 3 // 8 if pretrain_steps is None else int(pretrain_steps)
    if not 0 < pretrain_steps < steps:
        raise ConfigError(f"pretrain_steps={pretrain_steps} leaves no steps to cluster in: it must lie between 0 "
                          f"and steps={steps}")
    rest = steps - pretrain_steps
    share = lambda n: n / steps           # phase lengths as shares of train.steps: they follow it
    auto_net = isinstance(hidden_sizes, str) and hidden_sizes == "auto"
    c = vade(n_clusters=k, latent_dim=latent_dim, hidden_sizes=LARGE_NET if auto_net else hidden_sizes,
             likelihood=likelihood, steps=steps,
             pretrain_steps=pretrain_steps, batch_size=batch_size, learning_rate=learning_rate, restarts=restarts,
             checkpoint_every=checkpoint_every, scaling="auto", name=name)
    c.unlock()
    c.data.source = "mnist5k"            # the command line's default; set data.source to your data
    c.model.sigma = float(sigma)
    c.choose_k.auto = auto_k             # the slots, the fits and the moves: gmvc/recipes/rules.py, gmvc/training/k_auto.py
    if auto_net:
        c.model.small_hidden_sizes, c.model.small_below = SMALL_NET, SMALL_BELOW
    if auto_steps:
        c.train.epochs, c.train.min_steps = EPOCHS, steps // 2      # the steps follow N (rules.py)
    main_objective = _main_objective({"vade_kl": 1.0}, c_marginal, pin)
    c.objective = dict(main_objective)
    c.terms = {"c_prior": {"free_bits": 0.5}, "neighbours": {"stop_gradient": True},
               "c_marginal": {"target": "prior"}}
    fit = {"kind": "init_prior", "method": "em", "kmeans_iters": 50, "em_iters": 20, "n_init": 30,
           "select": "modularity", "smooth": 1, "linkage": "both", "features": 5}
    main = {"kind": "train", "steps": share(rest / 2), "augment": "auto", "objective": main_objective}
    c.train.phases = ("pretrain", "knn", "gmm_init", "main", "knn2", "gmm_init2", "main2", "knn3", "gmm_init3",
                      "main3")
    c.phases = {
        "pretrain": {"kind": "train", "steps": share(pretrain_steps), "batch_size": 256, "objective": {"recon": 1.0},
                     "trainable": ("net",), "augment": "auto"},
        "knn": dict(_KNN),
        "gmm_init": {**fit, "overcluster": 8 * k, "pull": 3},
        "main": dict(main),
        "knn2": dict(_KNN),
        "gmm_init2": {**fit, "overcluster": 3 * k, "keep_current": True},
        "main2": {**main, "steps": share(rest / 4)},
        "knn3": dict(_KNN),
        "gmm_init3": {**fit, "overcluster": 3 * k, "keep_current": True},
        "main3": {**main, "steps": -1},
    }
    c.train.restart_choice = "objective"
    c.train.log_every = max(1, min(250, pretrain_steps, rest // 4))
    c.lock()
    return c


def cluster_gmvae(n_clusters=10, steps=4000, pretrain_steps=None, batch_size=100, latent_dim=10, w_dim=10,
                  hidden_sizes=LARGE_NET, prior_hidden=500, learning_rate=2e-3, c_marginal=20.0,
                  cv_weight=0.4, likelihood="auto", sigma=0.1, pin=1.0, restarts=1, checkpoint_every=None,
                  name="cluster_gmvae"):
    """The `cluster` recipe with GMVAE as the model (gmvc.GMVAE(), configs/cluster_gmvae.py): the
    same pretraining, neighbours and merged over-clustered fits, then three rounds of the GMVAE
    objective (reconstruction, conditional prior, w prior, c prior with 0.5 free bits;
    `cv_weight`, the consistency-violation term at the paper's MNIST weight) with `pin`,
    `neighbours` (20) and `c_marginal` (against the uniform: GMVAE's weights are a network of
    w). GMVAE's mixture is a network of w: each fit sets it (model.load_prior: the output
    layer's bias to the fitted components, its kernel to 0), so group g starts in component g
    at every w, and a refit replaces the network and the groups only where its partition has a
    higher modularity on the neighbour graph than the model's own partition."""
    c = cluster(n_clusters=n_clusters, steps=steps, pretrain_steps=pretrain_steps, batch_size=batch_size,
                latent_dim=latent_dim, hidden_sizes=hidden_sizes, learning_rate=learning_rate, c_marginal=c_marginal,
                likelihood=likelihood, sigma=sigma, pin=pin, restarts=restarts, checkpoint_every=checkpoint_every,
                name=name)
    c.unlock()
    c.model.name = "gmvae"
    c.model.w_dim, c.model.prior_hidden = int(w_dim), int(prior_hidden)
    c.terms.c_marginal = {"target": "uniform"}      # GMVAE's mixture weights are a network of w
    elbo = {"cond_prior": 1.0, "w_prior": 1.0, "c_prior": 1.0, **({"cv": float(cv_weight)} if cv_weight else {})}
    main_objective = _main_objective(elbo, c_marginal, pin)
    c.objective = dict(main_objective)
    for phase in ("main", "main2", "main3"):
        c.phases[phase].objective = dict(main_objective)
    c.lock()
    return c


def _main_objective(elbo, c_marginal, pin):
    """The objective of the recipes' clustering phases: reconstruction, the model's ELBO terms
    `elbo`, and the terms that hold the groups (c_marginal, neighbours 20, pin)."""
    return {"recon": 1.0, **elbo, "c_marginal": float(c_marginal), "neighbours": 20.0, "pin": float(pin)}
