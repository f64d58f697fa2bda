"""build_plan(config, data): the run's Plan, built once before anything is written or compiled:
the config resolved for the data, the data as the run reads it, the model, the phases and the
device layout. Building it is validating it: every check of the config against the data runs
here, in one pass, each problem one line naming the key. The CLI, the estimators and the
notebooks' runs all go through it (train_and_evaluate and load_run call it first)."""
import math
from typing import NamedTuple

import jax

from gmvc.data import prepare
from gmvc.recipes import rules
from gmvc.errors import ConfigError, DataError
from gmvc.eval.restarts import RESTART_CHOICES
from gmvc.models import make_model
from gmvc.objectives import make_objective
from gmvc.training import augment, parallel, program, stream
from gmvc.training.context import model_inputs, validation_size
from gmvc.training.phases import build_phases, uses_neighbours
from gmvc.training.warmup import COMPILE_AHEAD



class Plan(NamedTuple):
    """What a run needs, built once; every later stage reads it instead of rebuilding a part."""
    config: object          # resolved: data.scaling, the likelihood and the rules chosen from the data
    data: object            # the Dataset as the run reads it (scaled)
    scaling: object         # gmvc.data.prepare.Scaling: how the data was read
    model: object
    phases: list
    layout: object          # gmvc.training.parallel.Layout
    notes: list             # how the run reads its data and which rules chose what, one line each


def build_plan(config, data):
    """The Plan of `config` on `data` (a Dataset as loaded); a ConfigError or DataError names the
    first problem."""
    auto_likelihood = config.model.likelihood == "auto"
    announce = auto_likelihood or config.data.scaling != "none"
    config, data, scaling = prepare.resolve(config, data)      # data.scaling and "auto" chosen from the data
    config, notes = rules.fit_to_data(config, len(data.x), data.x.shape[1:])
    notes = [prepare.describe(config, scaling, auto_likelihood)] * announce + [f"rule: {n}" for n in notes]
    model, phases = validate(config, data)
    return Plan(config, data, scaling, model, phases, parallel.make_layout(config.parallel), notes)


def validate(config, data):
    """(model, phases) of `config` on `data` (a Dataset), or a ConfigError or DataError for its
    first problem."""
    n, k = len(data.x), config.model.num_clusters
    clusters = k if config.model.name != "vae" else 0
    _check_train(config.train)
    _check_watching(config)
    if k < 1:
        raise ConfigError(f"model.num_clusters must be at least 1, got {k}")
    if clusters > n:
        raise DataError(f"model.num_clusters={k} is larger than the number of samples ({n}) in {data.name!r}")
    if not 1 <= config.train.batch_size <= n:
        raise DataError(f"train.batch_size={config.train.batch_size} must be between 1 and the number of samples "
                        f"({n}) in {data.name!r}")
    f = config.train.validation_fraction
    num_train = n - (validation_size(n, f) if f > 0 else 0)
    if f > 0 and num_train == n:
        raise ConfigError(f"train.validation_fraction={f} holds out no sample of the {n}")
    if num_train < config.train.batch_size:
        raise ConfigError(f"train.validation_fraction={f} leaves {num_train} of {n} samples to train on, fewer "
                          f"than train.batch_size={config.train.batch_size}")
    if num_train < clusters:
        raise ConfigError(f"train.validation_fraction={f} leaves {num_train} of {n} samples to train on, fewer "
                          f"than model.num_clusters={k}")
    _check_model(config.model)
    _check_optim(config.optim)
    devices = _check_parallel(config.parallel)
    model = make_model(config.model, data.x.shape[1:])          # unknown nets, activations, likelihoods
    lo, hi = prepare.bounds(data.x)
    if config.model.likelihood == "bernoulli" and (lo < 0.0 or hi > 1.0):
        raise DataError(f"model.likelihood='bernoulli' needs data in [0, 1]; {data.name!r} spans [{lo:.4g}, {hi:.4g}]: "
                        f"scale it into [0, 1], or use --config.model.likelihood=gaussian")
    model_inputs(model, data)                                    # labels a conditioned model needs
    phases = build_phases(config)                                # phase keys and their order
    if not model.stored_prior:
        _check_prior_network(config, model, phases)
    for phase in phases:
        _check_phase(config, model, phase, data, num_train, devices)
    return model, phases


def _check_prior_network(config, model, phases):
    """A model without a stored mixture prior takes init_prior phases only through its prior
    network (model.load_prior: GMVAE); keep_current then compares the fit's partition with the
    model's own (EmbeddingPhases._partition)."""
    fits = [p for p in phases if p.kind == "init_prior"]
    name = config.model.name
    if fits and model.load_prior is None:
        raise ConfigError(f"model {name!r} has no mixture prior to initialise (an init_prior phase needs one)")
    for p in fits:
        if p.spec["balanced_above"] is not None:
            raise ConfigError(f"phase {p.name!r}: model {name!r} keeps its mixture in a prior network; "
                              f"balanced_above needs a stored prior to measure")
        if p.spec["keep_current"] and p.spec["select"] == "likelihood":
            raise ConfigError(f"phase {p.name!r}: model {name!r} keeps its mixture in a prior network, so "
                              f"keep_current compares partitions: select 'modularity' or 'balance', not 'likelihood'")


def _check_train(t):
    for key in ("steps", "log_every", "checkpoint_every", "restarts", "max_checkpoints"):
        if t[key] < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {t[key]}")
    for key, known in (("restart_choice", RESTART_CHOICES), ("restart_batches", program.RESTART_BATCHES), ("loop", program.LOOPS)):
        if t[key] not in known:
            raise ConfigError(f"unknown train.{key} {t[key]!r}; known: {sorted(known)}")
    if str(t.compile_ahead).lower() not in (*COMPILE_AHEAD, "auto"):
        raise ConfigError(f"unknown train.compile_ahead {t.compile_ahead!r}; known: ['auto', 'off', 'on']")


def _check_watching(config):
    """The validation split, early stopping and TensorBoard keys."""
    t, tb = config.train, config.tensorboard
    f = t.validation_fraction
    if not 0.0 <= f < 1.0:
        raise ConfigError(f"train.validation_fraction must be in [0, 1), got {f}")
    if t.patience < 0:
        raise ConfigError(f"train.patience must be 0 (no early stopping) or positive, got {t.patience}")
    if t.patience > 0 and f == 0.0:
        raise ConfigError(f"train.patience={t.patience} needs a validation split: set train.validation_fraction "
                          f"(e.g. 0.1)")
    for key in ("images_every", "projector_points"):
        if tb[key] < 0:
            raise ConfigError(f"tensorboard.{key} must be 0 or positive, got {tb[key]}")


def _check_model(m):
    sizes = {"model.z_dim": [m.z_dim], "model.w_dim": [m.w_dim], "model.prior_hidden": [m.prior_hidden],
             "model.hidden_sizes": list(m.hidden_sizes), "model.conv_filters": list(m.conv_filters),
             "model.small_hidden_sizes": list(m.small_hidden_sizes)}
    for key, values in sizes.items():
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
            what = "a whole number >= 1" if key.endswith("_dim") or key == "model.prior_hidden" else "whole numbers >= 1"
            raise ConfigError(f"{key} must be {what}, got {values if len(values) > 1 else values[0]}")
    if not isinstance(m.small_below, int) or isinstance(m.small_below, bool) or m.small_below < 0:
        raise ConfigError(f"model.small_below must be a whole number >= 0 (0: no small network), got {m.small_below}")


def _check_optim(o):
    """The numeric settings of the optimizer (a schedule dict is checked where it is built)."""
    for key in ("lr", "prior_lr"):
        rate = o[key]
        if isinstance(rate, (int, float)) and not math.isfinite(rate):
            raise ConfigError(f"optim.{key} must be a finite number, got {rate}")
    if isinstance(o.lr, (int, float)) and o.lr < 0:
        raise ConfigError(f"optim.lr must be >= 0, got {o.lr} (0 freezes the network)")
    for key in ("b1", "b2"):
        if not 0.0 <= o[key] < 1.0:
            raise ConfigError(f"optim.{key} must be in [0, 1), got {o[key]}")
    if not o.eps > 0:
        raise ConfigError(f"optim.eps must be positive, got {o.eps}")


def _check_parallel(p):
    """The number of devices a run's batches split over."""
    if p.mode not in parallel.MODES:
        raise ConfigError(f"unknown parallel.mode {p.mode!r}; known: {list(parallel.MODES)}")
    if p.stream not in stream.STREAM_CHOICES:
        raise ConfigError(f"unknown parallel.stream {p.stream!r}; known: {list(stream.STREAM_CHOICES)}")
    if not p.device_budget_mb > 0:
        raise ConfigError(f"parallel.device_budget_mb must be positive, got {p.device_budget_mb}")
    available = len(jax.devices())
    if p.devices > available:
        raise ConfigError(f"parallel.devices={p.devices} but only {available} devices are available")
    layout = parallel.make_layout(p)
    if jax.process_count() > 1 and layout.mode in ("single", "pmap"):
        raise ConfigError(f"parallel.mode={p.mode!r} runs {layout.mode!r} on one process; use shard_map across "
                          f"hosts (with parallel.devices 0, every device)")
    return layout.n


def _check_phase(config, model, phase, data, num_train, devices):
    where = f"phase {phase.name!r}" if config.train.phases else "train"
    augment.check_data(phase.spec.get("augment"), data.x.shape[1:], where)
    if phase.kind == "train":
        make_objective(model, phase.spec["objective"], config.terms)      # unknown terms and options
        size = phase.spec["batch_size"]
        what = f"{where}: batch_size={size}" if config.train.phases else f"train.batch_size={size}"
        if size > num_train:
            raise DataError(f"{what} is larger than the {num_train} training samples of {data.name!r}")
        if size % devices:
            raise ConfigError(f"{what} does not divide evenly over {devices} devices (parallel.mode="
                              f"{config.parallel.mode!r}); use a multiple of {devices}")
        if uses_neighbours(phase.spec) and config.model.name == "vae":
            raise ConfigError(f"{where}: the 'neighbours' term compares cluster responsibilities; model 'vae' "
                              f"has no clusters")
    if phase.kind == "neighbours" and phase.spec["k"] >= num_train:
        raise DataError(f"{where}: k={phase.spec['k']} neighbours need more than k training samples; "
                        f"{data.name!r} has {num_train}")
