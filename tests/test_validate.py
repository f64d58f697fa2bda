"""gmvc.validate: every check of a config against its data, in one pass, with no side effect."""
import jax
import numpy as np
import pytest
from conftest import load_config

from gmvc.data import Dataset
from gmvc.errors import ConfigError, DataError
from gmvc.validate import build_plan, validate

SMALL = {"train.restarts": 1, "train.steps": 20, "train.log_every": 10, "data.num_points": 200}


def _spiral(**overrides):
    return load_config("gmvae_spiral.py", {**SMALL, **overrides})


def _data(n=200, dim=2):
    x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    return Dataset(x=x, y=None, name="points")


def test_a_good_config_passes_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = build_plan(_spiral(), _data())
    assert plan.model.num_clusters == 5 and plan.phases[-1].kind == "train" and plan.layout.mode == "single"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides, error, message", [
    ({"model.num_clusters": 0}, ConfigError, "model.num_clusters must be at least 1, got 0"),
    ({"model.num_clusters": 201}, DataError, "model.num_clusters=201 is larger than the number of samples (200)"),
    ({"train.batch_size": 300}, DataError, "train.batch_size=300 must be between 1 and the number of samples (200)"),
    ({"train.log_every": 0}, ConfigError, "train.log_every must be at least 1, got 0"),
    ({"train.restart_choice": "best"}, ConfigError, "unknown train.restart_choice 'best'"),
    ({"train.restart_batches": "mine"}, ConfigError, "unknown train.restart_batches 'mine'"),
    ({"train.loop": "python"}, ConfigError, "unknown train.loop 'python'"),
    ({"train.compile_ahead": "later"}, ConfigError, "unknown train.compile_ahead 'later'"),
    ({"train.validation_fraction": 1.5}, ConfigError, "train.validation_fraction must be in [0, 1), got 1.5"),
    ({"train.patience": 3}, ConfigError, "train.patience=3 needs a validation split"),
    ({"train.validation_fraction": 0.9}, ConfigError,
     "leaves 20 of 200 samples to train on, fewer than train.batch_size=200"),
    ({"tensorboard.images_every": -1}, ConfigError, "tensorboard.images_every must be 0 or positive"),
    ({"parallel.mode": "ring"}, ConfigError, "unknown parallel.mode 'ring'"),
    ({"parallel.devices": 99}, ConfigError, "parallel.devices=99 but only 8 devices are available"),
    ({"parallel.mode": "shard_map", "train.batch_size": 196}, ConfigError,
     "train.batch_size=196 does not divide evenly over 8 devices"),
    ({"model.net": "transformer"}, ConfigError, "unknown"),
    ({"objective.recn": 1.0}, ConfigError, "unknown objective term(s) ['recn']"),
    ({"model.z_dim": 0}, ConfigError, "model.z_dim must be a whole number >= 1, got 0"),
    ({"model.hidden_sizes": (100, 0)}, ConfigError, "model.hidden_sizes must be whole numbers >= 1, got [100, 0]"),
    ({"model.small_hidden_sizes": (64, -2)}, ConfigError,
     "model.small_hidden_sizes must be whole numbers >= 1, got [64, -2]"),
    ({"model.small_below": -5}, ConfigError, "model.small_below must be a whole number >= 0 (0: no small network), got -5"),
    ({"optim.lr": float("nan")}, ConfigError, "optim.lr must be a finite number, got nan"),
    ({"optim.lr": -1.0}, ConfigError, "optim.lr must be >= 0, got -1.0"),
    ({"optim.b2": 1.0}, ConfigError, "optim.b2 must be in [0, 1), got 1.0"),
    ({"model.likelihood": "bernoulli"}, DataError, "model.likelihood='bernoulli' needs data in [0, 1]; 'points' spans"),
])
def test_each_problem_is_one_line_naming_the_key(overrides, error, message):
    assert len(jax.devices()) == 8
    c = _spiral(**overrides)
    with pytest.raises(error) as raised:
        validate(c, _data())
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_phases_are_checked_against_the_training_samples():
    c = load_config("vade_digits.py", {"train.restarts": 1, "train.validation_fraction": 0.5})
    c.phases.pretrain.batch_size = 150
    x = np.random.default_rng(0).uniform(size=(200, 64)).astype(np.float32)
    with pytest.raises(DataError, match="phase 'pretrain': batch_size=150 is larger than the 100 training samples"):
        validate(c, Dataset(x=x, y=None, name="arr"))
    c.phases.pretrain.batch_size = 100
    validate(c, Dataset(x=x, y=None, name="arr"))
    c.phases.pretrain.augment = {"shift": 2}
    with pytest.raises(ConfigError, match="phase 'pretrain': augment needs image data"):
        validate(c, Dataset(x=x, y=None, name="arr"))


def test_an_init_prior_phase_needs_a_model_with_a_mixture_prior():
    x = np.random.default_rng(0).uniform(size=(200, 64)).astype(np.float32)
    c = load_config("vade_digits.py", {"train.restarts": 1, "model.name": "vae"})
    with pytest.raises(ConfigError, match="model 'vae' has no mixture prior to initialise"):
        validate(c, Dataset(x=x, y=None, name="arr"))
    c = load_config("vade_digits.py", {"train.restarts": 1, "model.name": "gmvae"})    # its prior network
    c.objective = {"recon": 1.0, "cond_prior": 1.0, "w_prior": 1.0, "c_prior": 1.0}
    validate(c, Dataset(x=x, y=None, name="arr"))
