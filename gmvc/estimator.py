"""scikit-learn style estimators over the one training loop.

    from gmvc import VaDE
    est = VaDE(n_clusters=10, random_state=0).fit(X)       # X: [N, D] (or [N, H, W, C] images)
    est.labels_, est.predict(X_new), est.predict_proba(X_new), est.transform(X_new)
    est.save("my_model"); est = gmvc.load("my_model")      # also loads a CLI run directory

`fit` builds a config (gmvc/config.py keys) and calls train.train_and_evaluate on the array, as
the command line does on a data source; the run's checkpoints are the estimator's state, so
`save` / `load` are the CLI's orbax checkpoints plus `estimator.json`. Constructor arguments are
stored as given (scikit-learn convention); everything learnt ends in an underscore.
"""
import inspect
import pathlib
import shutil
import tempfile
import time
import weakref

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from gmvc import arguments, persist, recipes
from gmvc.core import batching
from gmvc.core.k_moves import cluster_slots, on_slots
from gmvc.data import Dataset
from gmvc.run.cache import enable_compilation_cache
from gmvc.config import apply_overrides, from_dict
from gmvc.errors import ConfigError, RunError
from gmvc.persist import ESTIMATOR_FILE, LABELS_FILE  # noqa: F401  (their names, where they were)
from gmvc.predict import check_finite_outputs
from gmvc.run.progress import attended
from gmvc.run.restore import load_trained, read_json
from gmvc.objectives import make_batch, make_elbo

CLUSTERING_MODELS = ("vade", "gmvae")


def _silent(*args, **kwargs):
    pass


class GMVCEstimator(ClusterMixin, TransformerMixin, BaseEstimator):
    """Any gmvc config as an estimator.

    config: None (the default: the `cluster` recipe gmvc.VaDE() uses, gmvc.recipes.cluster()), a recipe
        name of gmvc.recipes (e.g. "vade_digits"), a dict, a ConfigDict, or the path of a config
        file (a .py with get_config(), or a run's config.json); its data section is ignored (the
        data is what `fit` receives).
    overrides: {"dotted.key": value}, applied after `config`, e.g. {"train.steps": 500}.
    random_state: int seed (None = 0: gmvc runs are reproducible by default).
    workdir: where the run's checkpoints go (None = a fresh temporary folder per fit; gmvc.load
        never takes one from a saved model's files).
    verbose: print the run's messages (and its progress lines where nobody watches).
    progress: one line as fit starts (samples, K, steps, run folder), then a progress bar where a
        person watches (a terminal, a notebook), elsewhere one line as it ends (time, steps,
        cluster sizes); False: nothing.
    Arguments are checked at fit (scikit-learn's convention): a bad one is named in one line.
    """

    _ARGUMENTS = arguments.ESTIMATOR

    def __init__(self, config=None, overrides=None, random_state=None, workdir=None, verbose=False, progress=True):
        self.config = config
        self.overrides = overrides
        self.random_state = random_state
        self.workdir = workdir
        self.verbose = verbose
        self.progress = progress

    # ------------------------------------------------------------------ configuration

    def _base_config(self):
        return resolve_config(self.config)

    def _make_config(self, x):
        c = self._base_config()
        c.unlock()
        apply_overrides(c, self.overrides or {})
        c.data.source = "array"
        c.seed = _seed(self.random_state)
        c.train.batch_size = min(c.train.batch_size, len(x))
        return c

    # ------------------------------------------------------------------ training

    def fit(self, X, y=None):
        """Train on X ([N, D], or [N, H, W(, C)] images); y is ignored (labels never train)."""
        from gmvc.trainer import train_and_evaluate
        self._check_params()
        enable_compilation_cache()        # a second fit of the same shapes loads its programs (gmvc/run/cache.py)
        x = self._check(X, reset=True)
        config, data = self._make_config(x), Dataset(x=x, y=None, name="array")
        if self.workdir and (pathlib.Path(self.workdir) / "checkpoints").is_dir():
            raise RunError(f"{self.workdir} holds a run already; fit trains a new model: give it a new workdir "
                           f"(nothing was changed)")
        workdir = pathlib.Path(self.workdir) if self.workdir else pathlib.Path(tempfile.mkdtemp(prefix="gmvc_"))
        bar = bool(self.progress) and attended()
        say = print if self.progress else _silent     # the start line, and the end line where no bar is drawn
        say(self._start_line(x, config, workdir), flush=True)
        t0 = time.time()
        try:
            summary = train_and_evaluate(config, workdir, echo=print if self.verbose else _silent, data=data,
                                         write_outputs=False, bar=bar)
        except BaseException:
            if not self.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        if not self.workdir:           # the run's folder goes with the estimator (save() keeps a copy)
            weakref.finalize(self, shutil.rmtree, str(workdir), True)
        self._set_trained(summary.trained)          # its config: data.scaling and "auto" as chosen
        self.n_iter_ = int(summary["steps"])
        self.labels_ = self.predict(X) if self.model_.num_clusters else None
        if not bar:
            say(self._end_line(time.time() - t0), flush=True)
        return self

    def _start_line(self, x, config, workdir):
        clusters = ""
        if config.model.name in CLUSTERING_MODELS and config.choose_k.auto:
            clusters = f" into K clusters found while it trains (at most {config.choose_k.max_clusters})"
        elif config.model.name in CLUSTERING_MODELS:
            clusters = f" into K={config.model.num_clusters} clusters{self._default_k_note()}"
        where = f"{workdir} (temporary: save() keeps the model)" if not self.workdir else str(workdir)
        return (f"{type(self).__name__}: fitting {len(x)} samples of shape {list(x.shape[1:])}{clusters}, "
                f"{'up to ' * (config.train.epochs > 0)}{config.train.steps} steps; run folder {where}")

    def _default_k_note(self):
        if self.config is None and "model.num_clusters" not in (self.overrides or {}):
            return " (the default of gmvc.recipes.cluster(): set overrides={'model.num_clusters': K})"
        return ""

    def _end_line(self, seconds):
        line = f"{type(self).__name__}: fitted in {seconds:.1f}s, {self.n_iter_} steps"
        if self.labels_ is not None:
            sizes = np.bincount(np.asarray(self.labels_), minlength=self.n_clusters_).tolist()
            shown = ", ".join(map(str, sizes[:20])) + (f", ... ({len(sizes) - 20} more)" if len(sizes) > 20 else "")
            empty = sizes.count(0)
            line += f"; cluster sizes [{shown}]" + (f" ({empty} empty)" if empty else "")
        return line

    def _check_params(self):
        """The constructor's arguments, checked at fit (scikit-learn's convention) and at load."""
        arguments.check_arguments(self, self._ARGUMENTS)

    def _set_trained(self, trained):
        self.config_, self.model_, self.params_, self.workdir_ = (trained.config, trained.model, trained.params,
                                                                  trained.workdir)
        self.scaling_ = trained.scaling
        self.sample_shape_ = tuple(trained.data_shape)
        self.cluster_slots_ = cluster_slots(trained.config, trained.model, trained.params)
        self.n_clusters_ = len(self.cluster_slots_) if trained.model.num_clusters else 0

    def _check(self, X, reset=False):
        arguments.refuse_complex(X)
        x = validate_data(self, X, reset=reset, dtype=np.float32, allow_nd=True, ensure_min_samples=1 if not reset
                          else 2, ensure_all_finite=False)
        arguments.check_finite(x)
        if x.ndim == 3:
            x = x[..., None]                               # [N, H, W] greyscale images
        if x.ndim not in (2, 4):
            raise ValueError(f"X must have shape [N, D] or [N, H, W(, C)]; got {x.shape}")
        if not reset and x.shape[1:] != self.sample_shape_:
            raise ValueError(f"X has samples of shape {list(x.shape[1:])}; this model was fitted on "
                             f"{list(self.sample_shape_)}")
        return np.ascontiguousarray(x, np.float32)

    def _inputs(self, X):
        """X checked and read as the fit read its data (data.scaling)."""
        return self.scaling_.apply(self._check(X))

    # ------------------------------------------------------------------ inference

    def _outputs(self, X):
        check_is_fitted(self, "params_")
        x = self._inputs(X)
        out = batching.make_predict(self.model_, self.config_.eval.batch_size)(self.params_, x)
        return on_slots(check_finite_outputs(out, x, "X"), self.cluster_slots_)     # auto: the live slots

    def _require_clusters(self, what):
        if not self.model_.num_clusters:
            raise AttributeError(f"{what}: model {self.config_.model.name!r} does not cluster")

    @property
    def prior_distribution_(self):
        """The learned prior p(z) as a distrax distribution (`sample(seed=key, sample_shape=...)`,
        `log_prob(z)`): VaDE's mixture of diagonal Gaussians; GMVAE's components at w = 0."""
        check_is_fitted(self, "params_")
        return self.model_.prior_distribution(self.params_)

    def predict(self, X):
        """The most likely cluster of each sample: [N] ints."""
        check_is_fitted(self, "params_")
        self._require_clusters("predict")
        return self._outputs(X)["log_gamma"].argmax(1)

    def predict_proba(self, X):
        """q(c | x): [N, K], rows sum to 1."""
        check_is_fitted(self, "params_")
        self._require_clusters("predict_proba")
        return np.exp(self._outputs(X)["log_gamma"].astype(np.float64))

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def transform(self, X):
        """The latent means z_mean: [N, Dz]."""
        return self._outputs(X)["z_mean"]

    def score(self, X, y=None):
        """The mean ELBO per sample (one Monte-Carlo draw of z per sample; higher is better)."""
        check_is_fitted(self, "params_")
        x = self._inputs(X)
        loss = make_elbo(self.model_)
        batch_loss = jax.jit(lambda params, rows: loss(params, make_batch(rows), jax.random.key(0), 0)[0])
        bs = self.config_.eval.batch_size
        total = sum(float(batch_loss(self.params_, x[i:i + bs])) * len(x[i:i + bs]) for i in range(0, len(x), bs))
        return -total / len(x)

    def sample(self, n_samples=1, cluster=None):
        """(X, clusters): n_samples generated samples and the cluster each came from. `cluster`
        fixes it; otherwise clusters are drawn from the prior's weights."""
        check_is_fitted(self, "params_")
        self._require_clusters("sample")
        k = self.n_clusters_
        arguments.int_at_least(1)("n_samples", n_samples)
        if cluster is not None and (not arguments.is_int(cluster) or not 0 <= cluster < k):
            raise ValueError(f"cluster must be in 0..{k - 1} (or None), got {cluster!r}")
        rng = check_random_state(self.random_state)
        slots = np.asarray(self.cluster_slots_)
        if cluster is None:
            log_pi = self.params_["prior"]["logits"][slots] if self.model_.stored_prior else jnp.zeros(k)
            pi = np.asarray(jax.nn.softmax(log_pi), np.float64)
            clusters = rng.choice(k, size=n_samples, p=pi / pi.sum())
        else:
            clusters = np.full(n_samples, int(cluster))
        key = jax.random.key(int(rng.randint(2**31)))
        out = np.asarray(jax.jit(self.model_.sample, static_argnums=2)(self.params_, key, n_samples))
        x = out[slots[clusters], np.arange(n_samples)]                # [n, *sample_shape]
        return self.scaling_.invert(x), clusters                      # in the units of the data fitted

    # ------------------------------------------------------------------ persistence

    def save(self, path):
        """Write the fitted model to `path` (a new folder): the run's latest checkpoint, its
        config.json and results.json, and estimator.json. An existing path is never overwritten."""
        check_is_fitted(self, "params_")
        return persist.save(self, path)

    def __getstate__(self):
        """Pickling drops the model's functions (closures); unpickling rebuilds them from config_."""
        state = self.__dict__.copy()
        state.pop("model_", None)
        if "params_" in state:
            state["params_"] = jax.tree.map(np.asarray, state["params_"])
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "config_" in state:
            from gmvc.models import make_model
            self.model_ = make_model(self.config_.model, self.sample_shape_)
            if "cluster_slots_" not in state:      # pickled before model.num_clusters=auto: every component
                self.cluster_slots_ = np.arange(self.model_.num_clusters)

    def _more_tags(self):      # scikit-learn < 1.6
        return {"allow_nan": False, "non_deterministic": False}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags


class VaDE(GMVCEstimator):
    """VaDE with gmvc's recipe for data it was not written for (gmvc/recipes/cluster.py,
    configs/cluster.py): autoencoder pretraining, neighbours in the embedding, over-clustered
    mixture fits merged along the neighbour graph, then three rounds of VaDE that hold each
    merged group in its own component (the `pin` and `neighbours` terms). The data's scaling and
    the likelihood ("auto") are chosen from its values (gmvc/data/prepare.py): values in [0, 1]
    as they are, whole numbers (pixel values 0-16, 0-255) divided by their largest, both read as
    Bernoulli; real features standardized and read as Gaussian. hidden_sizes "auto": 500-500-1000
    for data of 1,000,000 values (N x the sample's size) or more, 128-128-256 below. c_marginal
    holds the batch's cluster usage to the mixture's own weights (the sizes of the partition
    kept); 0 turns it off. `steps` scales every phase ("auto": 100 epochs, at least 2,000 and at
    most 4,000 steps); pretrain_steps None is 3/8 of them. The recipe of earlier versions (one
    GMM fit, 3 restarts) is gmvc.recipes.vade().

    n_clusters="auto": the mixture finds K while it trains (gmvc/training/k_auto.py; its measured
    limits are in README.md): n_clusters_ is the K found, clusters are numbered 0..n_clusters_ - 1
    (cluster_slots_[i] is the mixture's component of cluster i)."""

    _ARGUMENTS = arguments.VADE

    def __init__(self, n_clusters=10, latent_dim=10, hidden_sizes="auto", likelihood="auto",
                 steps="auto", pretrain_steps=None, batch_size=100, learning_rate=2e-3, c_marginal=20.0,
                 restarts=1, random_state=None, workdir=None, verbose=False, progress=True):
        self.n_clusters = n_clusters
        self.latent_dim = latent_dim
        self.hidden_sizes = hidden_sizes
        self.likelihood = likelihood
        self.steps = steps
        self.pretrain_steps = pretrain_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.c_marginal = c_marginal
        self.restarts = restarts
        self.random_state = random_state
        self.workdir = workdir
        self.verbose = verbose
        self.progress = progress
        self.config, self.overrides = None, None

    def _default_k_note(self):
        if self.n_clusters == inspect.signature(type(self).__init__).parameters["n_clusters"].default:
            return " (n_clusters left at its default: pass n_clusters=<the number of clusters you expect>)"
        return ""

    def _base_config(self):
        return recipes.cluster(n_clusters=self.n_clusters, latent_dim=self.latent_dim, hidden_sizes=self.hidden_sizes,
                               likelihood=self.likelihood, steps=self.steps, pretrain_steps=self.pretrain_steps,
                               batch_size=self.batch_size, learning_rate=self.learning_rate,
                               c_marginal=self.c_marginal, restarts=self.restarts)


class GMVAE(GMVCEstimator):
    """GMVAE with gmvc's recipe for new data (gmvc.recipes.cluster_gmvae): the pretraining,
    neighbours and merged over-clustered fits of gmvc.VaDE(), then three rounds of the GMVAE
    objective that hold each merged group in its own component (`pin`, `neighbours`,
    `c_marginal`), with the consistency-violation term (`cv_weight`). The data's scaling and the
    likelihood ("auto") are chosen as gmvc.VaDE() chooses them. The settings of earlier
    versions (configs/gmvae_spiral.py's) are gmvc.recipes.gmvae(): GMVCEstimator(config="gmvae")."""

    _ARGUMENTS = arguments.GMVAE

    def __init__(self, n_clusters=10, latent_dim=10, w_dim=10, hidden_sizes=(500, 500, 1000), likelihood="auto",
                 cv_weight=0.4, steps=4000, pretrain_steps=None, batch_size=100, learning_rate=2e-3,
                 c_marginal=20.0, restarts=1, random_state=None, workdir=None, verbose=False, progress=True):
        self.n_clusters = n_clusters
        self.latent_dim = latent_dim
        self.w_dim = w_dim
        self.hidden_sizes = hidden_sizes
        self.likelihood = likelihood
        self.cv_weight = cv_weight
        self.steps = steps
        self.pretrain_steps = pretrain_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.c_marginal = c_marginal
        self.restarts = restarts
        self.random_state = random_state
        self.workdir = workdir
        self.verbose = verbose
        self.progress = progress
        self.config, self.overrides = None, None

    _default_k_note = VaDE._default_k_note

    def _base_config(self):
        return recipes.cluster_gmvae(n_clusters=self.n_clusters, latent_dim=self.latent_dim, w_dim=self.w_dim,
                                     hidden_sizes=self.hidden_sizes, likelihood=self.likelihood,
                                     cv_weight=self.cv_weight, steps=self.steps, pretrain_steps=self.pretrain_steps,
                                     batch_size=self.batch_size, learning_rate=self.learning_rate,
                                     c_marginal=self.c_marginal, restarts=self.restarts)


# ---------------------------------------------------------------------- helpers


def load(path):
    """An estimator from a folder written by `save`, or from a CLI run directory (gmvc/persist.py:
    what loading trusts)."""
    return persist.load(path, (GMVCEstimator, VaDE, GMVAE))


def resolve_config(config):
    """A ConfigDict from None (the default recipe, gmvc.recipes.cluster()), a recipe name of
    gmvc.recipes (e.g. "vade_digits"), a dict, a ConfigDict, or a config file path (a .py with
    get_config(), or a run's config.json); a dict's keys are checked against gmvc's full set."""
    if config is None:
        return recipes.cluster()
    if isinstance(config, ml_collections.ConfigDict):
        return config.copy_and_resolve_references()
    if isinstance(config, dict):
        return from_dict(config)
    if isinstance(config, str) and config in recipes.RECIPES:
        return recipes.get(config)()
    path = pathlib.Path(str(config))
    if path.suffix == ".json":
        return from_dict(read_json(path, required=True))
    if not path.is_file():
        raise ConfigError(f"config {str(config)!r} is neither a recipe of gmvc.recipes ({', '.join(recipes.names())}) "
                          f"nor an existing config file")
    import runpy
    return runpy.run_path(str(path.resolve()))["get_config"]()


def _seed(random_state):
    if random_state is None:
        return 0
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31))
