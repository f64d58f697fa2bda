"""Experiments on objectives, for notebooks: pure functions that take an ELBO apart, differentiate
through it, and train many variants of one objective in one compiled program.

- scale_steps: a copy of a config with every step count scaled (a recipe as a short run).
- override, same_setting: a config with values set by dotted key; one moved onto another's data,
  network size and step budget.
- enable_compilation_cache: runs of one config with other seeds reuse its compiled programs.
- weighted_terms: each term's weight, value and share of the loss.
- to_float64, central_differences, relative_error: jax.grad checked by finite differences.
- make_mean_path: q(c | x) as a function of where one mixture mean sits.
- cluster_codes: a diagonal GMM on the codes of a model that does not cluster (VAE, MMD-VAE).
- make_sweep_objective, make_sweep_step, init_sweep, train_sweep, predict_runs, score_runs: one
  term's weight as a traced input, a train step vmapped over a [R] axis of (params, opt_state,
  weight), so R runs with different weights are one program, compiled once.
"""
import copy
import functools
import numbers
import os
import tempfile
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gmvc.core import metrics, mixture
from gmvc.data.rows import stored
from gmvc.training import steps
from gmvc.errors import ConfigError
from gmvc.core.mixture_init import fit_diag_gmm
from gmvc.objectives import make_objective
from gmvc.core.schedules import make_schedule
from gmvc.training.state import Tables, TrainState, make_optimizer

SCHEDULE_STEP_KEYS = ("warmup_steps", "ramp_steps", "hold_steps", "decay_steps")


# ---------------------------------------------------------------- configs and compilation

def scale_steps(config, scale):
    """A copy of `config` with its step counts multiplied by `scale` (rounded, at least 1):
    train.steps, each train phase's steps, log_every, checkpoint_every, and the step fields of
    every schedule (objective weights, phase objectives, learning rates), so a recipe keeps its
    shape as a shorter run. scale=1 returns an equal copy."""
    c = copy.deepcopy(config)
    c.unlock()
    n = lambda s: max(1, int(round(s * scale)))
    for spec in _schedules(c):
        for key in SCHEDULE_STEP_KEYS:
            if key in spec:
                spec[key] = int(round(spec[key] * scale)) if key == "hold_steps" else n(spec[key])
    train = [c.phases[name] for name in c.train.phases if c.phases[name].kind == "train"]
    fixed = [p for p in train if p.steps >= 0]
    rest = c.train.steps - sum(p.steps for p in fixed)
    for p in fixed:
        p.steps = n(p.steps)
    if train:
        c.train.steps = sum(p.steps for p in fixed) + (n(rest) if len(fixed) < len(train) else 0)
    else:
        c.train.steps = n(c.train.steps)
    c.train.log_every = min(n(c.train.log_every), c.train.steps)
    c.train.checkpoint_every = max(n(c.train.checkpoint_every), c.train.log_every)
    c.lock()
    return c


SETTING_KEYS = ("seed", "data", "eval", "model.num_clusters", "model.net", "model.hidden_sizes", "model.activation",
                "model.conv_filters", "model.conv_kernels", "model.z_dim", "model.likelihood", "model.sigma",
                "train.batch_size", "train.steps", "train.log_every", "train.checkpoint_every")


def same_setting(config, reference, overrides=None):
    """A copy of `config` (its model family, objective, optimizer and phases) on the setting of
    `reference`: the same data, seed, likelihood, network size (net, hidden sizes, latent size,
    K) and step budget (SETTING_KEYS), then `overrides` by dotted key ({"name": "gmvae_digits",
    "model.w_dim": 10}): objectives compared on equal terms."""
    return override(config, {**{k: _get(reference, k) for k in SETTING_KEYS}, **(overrides or {})})


def override(config, overrides):
    """A copy of `config` with values set by dotted key, e.g. {"seed": 3, "model.hidden_sizes":
    (256, 256), "objective": {"recon": 1.0, "vade_kl": 1.0}}; a key the config lacks is an error."""
    c = copy.deepcopy(config)
    c.unlock()
    for key, value in overrides.items():
        *path, last = key.split(".")
        target = c
        for part in path:
            target = target[part]
        if last not in target:
            raise ConfigError(f"unknown config key {key!r}")
        target[last] = copy.deepcopy(value)
    c.lock()
    return c


def _get(config, key):
    for part in key.split("."):
        config = config[part]
    return config


def _schedules(c):
    """Every schedule dict of a config (weights of the objectives, learning-rate schedules)."""
    objectives = [c.objective] + [c.phases[name].objective for name in c.phases
                                  if "objective" in c.phases[name]]
    rates = [c.optim.lr_schedule, c.optim.prior_lr_schedule] + [c.phases[name].lr for name in c.phases
                                                                  if "lr" in c.phases[name]]
    return [w for w in [w for obj in objectives for w in obj.values()] + rates if not isinstance(w, numbers.Real)]


def enable_compilation_cache(directory=None):
    """Keep compiled programs on disk (JAX's persistent compilation cache). train_and_evaluate
    builds fresh functions on every call, so a second run of one config (another seed) traces
    again, but its programs are identical and are read back instead of compiled. Call it before
    the first computation. `directory`: default
    $JAX_COMPILATION_CACHE_DIR, else a new temporary folder; returns the folder used."""
    directory = directory or os.environ.get("JAX_COMPILATION_CACHE_DIR") or tempfile.mkdtemp(prefix="gmvc_xla_")
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(directory)


# ---------------------------------------------------------------- taking an objective apart

def weighted_terms(weights, aux, step=0):
    """{term: {"weight", "value", "weighted"}} for each term of an objective, from the aux of its
    loss_fn at `step` (schedules evaluated there); the weighted values sum to aux["loss"]."""
    table = {}
    for name, spec in dict(weights).items():
        w = float(make_schedule(spec if isinstance(spec, numbers.Real) else _plain(spec), name)(step))
        value = float(aux[name])
        table[name] = {"weight": w, "value": value, "weighted": w * value}
    return table


def _plain(spec):
    return spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)


def to_float64(tree):
    """Floating leaves as float64 (inside `with jax.enable_x64(True):`), for finite differences."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
                        else a, tree)


def central_differences(f, tree, *args, eps=1e-5):
    """The gradient of the scalar f(tree, *args) with respect to `tree` by central differences,
    (f(t + eps e_i) - f(t - eps e_i)) / (2 eps) for every element i of the pytree, as one vmapped
    batch of 2n evaluations; a pytree like `tree`. `args` (parameters, a batch) are passed to the
    compiled program as arguments: closed over, they would be constants that XLA folds at compile
    time. In float32 the rounding error of f swamps any eps small enough to be accurate: use
    float64 (jax.enable_x64, to_float64)."""
    flat, unravel = ravel_pytree(tree)

    @jax.jit
    def differences(flat, basis, *args):
        g = lambda v: f(unravel(v), *args)
        return jax.vmap(lambda d: (g(flat + d) - g(flat - d)) / (2 * eps))(basis)

    return unravel(differences(flat, eps * jnp.eye(flat.size, dtype=flat.dtype), *args))


def relative_error(a, b):
    """max |a - b| / max(|a|, |b|) over all elements of two pytrees of the same structure: the
    error relative to the largest entry (elementwise ratios blow up on entries that are zero
    up to rounding, e.g. the gradient for a component with no responsibility on the batch)."""
    a, b = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(t))]) for t in (a, b)]
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), np.finfo(np.float64).tiny))


def make_mean_path(model, k, target):
    """path(alpha, params, inputs) -> log q(c | x) [N, K] with the mixture mean of cluster k moved
    to (1 - alpha) mu_k + alpha target (models with a stored prior, e.g. VaDE): a pure function
    of alpha to vmap over a grid of positions or to differentiate (jax.grad, jax.jvp)."""

    def path(alpha, params, inputs):
        prior = dict(params["prior"])
        means = jnp.asarray(prior["means"])                                            # [K, Dz]
        prior["means"] = means.at[k].set((1 - alpha) * means[k] + alpha * jnp.asarray(target))
        return model.predict({**params, "prior": prior}, inputs)["log_gamma"]

    return path


def cluster_codes(rng, z, k, kmeans_iters=50, em_iters=20, n_init=10):
    """Clusters for the codes z [N, D] of a model that does not cluster (VAE, MMD-VAE): a diagonal
    GMM fitted to them as an init_prior phase does (k-means++, Lloyd, EM; n_init fits, the most
    likely kept), each code's most responsible component: [N] ints."""
    z = jnp.asarray(z)
    prior = jax.jit(fit_diag_gmm, static_argnums=(2, 3, 4, 5))(rng, z, k, kmeans_iters, em_iters, n_init)
    log_gamma = mixture.log_responsibilities(z, prior["logits"], prior["means"], prior["log_vars"])
    return np.asarray(jnp.argmax(log_gamma, axis=1))


# ---------------------------------------------------------------- many weights, one program

def make_sweep_objective(model, weights, term_options, term):
    """loss_fn(params, batch, rng, step, weight) -> (loss, aux): the objective `weights` with the
    weight of `term` replaced by weight * shape(step), where shape is the term's schedule in
    `weights` taken to the value 1 (a constant: 1; a warm-up to 2.0: the same warm-up to 1.0).
    `weight` is an ordinary (traceable) argument: one compiled program serves every value."""
    weights = dict(weights)
    if term not in weights:
        raise ConfigError(f"sweep: term {term!r} is not in the objective {sorted(weights)}")
    spec = weights[term]
    shape = make_schedule(1.0 if isinstance(spec, numbers.Real) else {**_plain(spec), "value": 1.0}, term)
    fixed = make_objective(model, {**weights, term: 0.0}, term_options)   # still computes aux[term]

    def loss_fn(params, batch, rng, step, weight):
        loss, aux = fixed(params, batch, rng, step)
        loss = loss + weight * shape(step) * aux[term]
        return loss, {**aux, "loss": loss}

    return loss_fn


def make_sweep_step(loss_fn, tx, weight, seed):
    """The train step of the runs of make_sweep_objective's loss_fn, vmapped over their [R] axis of
    (params, opt_state, weight, seed): steps.make_restarts_step of steps.make_train_step on a
    TrainState of [R, ...] params and opt_state (init_sweep's), `weight` [R] the loss's argument and
    `seed` [R] the runs' noise. The step counter and the batch are shared; run r's noise is folded
    in from its seed, so runs with one seed draw the same noise and differ only in the weight."""
    return steps.make_restarts_step(steps.make_train_step(loss_fn, tx), len(weight), sweep=(weight, seed))


def init_sweep(model, tx, rng, weights, seeds):
    """(TrainState, weight [R], seed [R]) of len(weights) x len(seeds) runs, weight-major (run i:
    weights[i // S], seeds[i % S]). A run's parameters come from fold_in(rng, seed): runs that
    share a seed start equal."""
    weight = jnp.repeat(jnp.asarray(weights, jnp.float32), len(seeds))               # [R]
    seed = jnp.tile(jnp.asarray(seeds, jnp.int32), len(weights))                     # [R]

    @jax.jit
    def init(rng, seed):                    # rng an argument: a closed-over key would be folded at compile time
        params = jax.vmap(lambda s: model.init(jax.random.fold_in(rng, s)))(seed)
        return params, jax.vmap(tx.init)(params)

    params, opt_state = init(rng, seed)
    return TrainState(jnp.asarray(0, jnp.int32), params, opt_state), weight, seed


class Sweep(NamedTuple):
    params: dict          # [R, ...]: every run's final parameters
    weight: np.ndarray    # [R]
    seed: np.ndarray      # [R]
    history: dict         # term -> [chunks, R]: the per-chunk means of each term and the loss
    steps: np.ndarray     # [chunks]: the step at the end of each chunk
    compiles: int         # times the chunk was traced (1: one program for every run)
    seconds: float


def train_sweep(config, model, x, term, grid, rng, echo=print):
    """Train the runs of `grid` = (weights, seeds), len(weights) x len(seeds) of them, of `config`
    (one train phase: config.objective, config.optim, config.train.steps / batch_size / log_every)
    whose only difference is the weight of `term` (and the seed): a loop over one jitted lax.scan
    chunk of the vmapped step, traced and compiled once, with every run reading the same batches.
    A run that turns non-finite does not stop the others: its history shows NaN."""
    if config.train.phases:
        raise ConfigError(f"sweep: one train phase only; this config has phases {list(config.train.phases)}")
    t, (weights, seeds) = config.train, grid
    tx = make_optimizer(config.optim)
    init_rng, train_rng = jax.random.split(rng)
    state, weight, seed = init_sweep(model, tx, init_rng, weights, seeds)
    sweep_step = make_sweep_step(make_sweep_objective(model, config.objective, config.terms, term), tx, weight, seed)
    chunk = steps.make_train_chunk(sweep_step, num_examples=len(x), batch_size=t.batch_size, chunk_len=t.log_every)
    traces = []

    @functools.partial(jax.jit, donate_argnums=0)
    def run_chunk(state, x, rng, bounds):
        traces.append(1)
        return chunk(state, Tables(), x, rng, bounds)

    x_device, bounds = jax.device_put(np.asarray(stored(x))), np.asarray([0, t.steps], np.int32)
    history, ends, t0 = [], [], time.time()
    every = max(1, -(-t.steps // t.log_every) // 8)                 # about eight progress lines
    for i, start in enumerate(range(0, t.steps, t.log_every)):
        state, chunk_metrics = run_chunk(state, x_device, train_rng, bounds)
        end = min(start + t.log_every, t.steps)
        history.append(jax.device_get(chunk_metrics))
        ends.append(end)
        if (i + 1) % every == 0 or end == t.steps:
            loss = history[-1]["loss"]
            echo(f"step {end}/{t.steps} ({time.time() - t0:.0f} s): loss over the {len(loss)} runs min "
                 f"{np.min(loss):.3f} median {np.median(loss):.3f} max {np.max(loss):.3f}", flush=True)
    stacked = {k: np.stack([h[k] for h in history]) for k in history[0]}
    return Sweep(jax.device_get(state.params), np.asarray(weight), np.asarray(seed), stacked,
                 np.asarray(ends), len(traces), round(time.time() - t0, 2))


def predict_runs(model, params, x, batch_size=1000):
    """model.predict for every run of [R, ...] params: numpy {"log_gamma": [R, N, K], "z_mean":
    [R, N, Dz]}, in batches of x (one compiled program per batch shape)."""
    predict = jax.jit(jax.vmap(model.predict, in_axes=(0, None)))
    parts = [jax.device_get(predict(params, x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}


def score_runs(log_gamma, labels):
    """metrics.clustering_report of each run's most responsible clusters; log_gamma [R, N, K]."""
    return [metrics.clustering_report(np.argmax(lg, axis=1), labels) for lg in log_gamma]
