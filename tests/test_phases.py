"""The phases (gmvc/training/phases.py): build_phases names bad settings, and the phases run
through the training loop (frozen groups, the prior fitted between them, checkpoints)."""
import jax
import numpy as np
import pytest
from scipy import special

from gmvc.config import base_config
from gmvc.errors import ConfigError
from gmvc.models import make_model
from gmvc.training.phases import build_phases
from helpers_vade import DX, _assert_trees_equal, _max_abs_diff, _uniform_data, _vade_config

pytestmark = pytest.mark.usefixtures("fast_compiles_module")


@pytest.mark.parametrize("phases, gmm_init, message", [
    (("pretrain", "gmm_init", "main"), {"smooth": 1}, "'gmm_init': smooth=1 needs a neighbours phase before it"),
    (("knn", "pretrain", "gmm_init", "main"), {"smooth": 1}, "with no train phase in between"),
    (("pretrain", "knn", "gmm_init", "main"), {"smooth": -1}, "smooth must be a whole number >= 0, got -1"),
    (("pretrain", "knn", "gmm_init", "main"), {"smooth": True}, "smooth must be a whole number >= 0, got True"),
    (("pretrain", "knn", "gmm_init", "main"), {"smooth": 1, "method": "minibatch"}, "smooth needs method 'em'"),
    (("pretrain", "gmm_init", "main"), {"keep_current": "yes"}, "keep_current must be true or false, got 'yes'"),
    (("pretrain", "gmm_init", "main"), {"balanced": 1}, "balanced must be true or false, got 1"),
    (("pretrain", "gmm_init", "main"), {"balanced_above": True}, "balanced_above must be a number >= 0"),
    (("pretrain", "gmm_init", "main"), {"balanced_above": -0.1}, "balanced_above must be a number >= 0"),
    (("pretrain", "gmm_init", "main"), {"balanced_above": 0.03, "balanced": True}, "set one of them"),
    (("pretrain", "gmm_init", "main"), {"balanced_above": 0.03}, "'gmm_init': balanced_above needs a prior fitted"),
    (("pretrain", "gmm_init", "main"), {"overcluster": 30}, "'gmm_init': overcluster=30 needs a neighbours phase"),
    (("pretrain", "knn", "gmm_init", "main"), {"overcluster": 10}, "above model.num_clusters=10, got 10"),
    (("pretrain", "knn", "gmm_init", "main"), {"overcluster": True}, "overcluster must be 0 .off. or a whole"),
    (("pretrain", "knn", "gmm_init", "main"), {"overcluster": 30, "method": "minibatch"},
     "overcluster needs method 'em'"),
])
def test_bad_init_prior_settings_are_named(phases, gmm_init, message):
    c = base_config()
    c.data.source = "digits"
    c.model.name = "vade"
    c.train.phases = phases
    c.phases = {"pretrain": {"kind": "train", "steps": 10, "objective": {"recon": 1.0}, "trainable": ("net",)},
                "knn": {"kind": "neighbours", "k": 5},
                "gmm_init": {"kind": "init_prior", **gmm_init},
                "main": {"kind": "train", "steps": -1}}
    with pytest.raises(ConfigError, match=message):
        build_phases(c)


@pytest.mark.parametrize("phases, optim, ok", [
    (("pretrain", "refit", "main"), {}, False),                    # pretrain trains the net only
    (("pretrain", "gmm_init", "refit", "main"), {}, True),          # a fitted prior
    (("main", "refit", "pretrain"), {}, True),                      # a trained prior
    (("main", "refit", "pretrain"), {"prior_lr": 0.0}, False),      # the prior frozen
    (("main", "refit", "pretrain"), {"lr": 0.0}, False),            # prior_lr -1 follows the net's rate of 0
    (("main", "refit", "pretrain"), {"lr": 0.0, "prior_lr": 1e-3}, True),
])
def test_keep_current_needs_a_prior_fitted_or_trained_before_it(phases, optim, ok):
    c = base_config()
    c.data.source = "digits"
    c.model.name = "vade"
    c.train.steps = 20
    c.train.phases = phases
    c.optim.update(optim)
    c.phases = {"pretrain": {"kind": "train", "steps": 10, "objective": {"recon": 1.0}, "trainable": ("net",)},
                "gmm_init": {"kind": "init_prior"},
                "refit": {"kind": "init_prior", "keep_current": True},
                "main": {"kind": "train", "steps": 10}}
    if ok:
        assert [p.name for p in build_phases(c)] == list(phases)
    else:
        with pytest.raises(ConfigError, match="phase 'refit': keep_current needs a prior fitted or trained before it"):
            build_phases(c)


def _phase_config(tmp_path, steps_total=21):
    """Pretrain 20 steps (net only), fit the prior by EM, then the rest (1 step) with
    everything; one step per chunk so that checkpoints land at 20 (pretrain's end) and 21."""
    c = _vade_config()
    np.savez(tmp_path / "data.npz", x=_uniform_data())
    c.data.source = f"file:{tmp_path / 'data.npz'}"
    c.train.steps = steps_total
    c.train.batch_size = 50
    c.train.log_every = 1
    c.train.checkpoint_every = 20
    c.train.max_checkpoints = 5
    c.eval.batch_size = 100
    c.eval.plot_points = 60
    c.train.phases = ("pretrain", "init", "main")
    # vade_kl in the pretraining objective gives the prior gradients: with recon alone they are zero
    # and Adam would leave the prior unchanged even if it were trainable.
    c.phases = {"pretrain": {"kind": "train", "steps": 20, "objective": {"recon": 1.0, "vade_kl": 1.0},
                             "trainable": ("net",)},
                "init": {"kind": "init_prior", "method": "em", "kmeans_iters": 10, "em_iters": 5},
                "main": {"kind": "train", "steps": -1}}
    return c


def _mixture_moments(prior):
    """The mean and per-dimension variance of a diagonal mixture (float64)."""
    pi = special.softmax(np.asarray(prior["logits"], np.float64))
    means, variances = np.asarray(prior["means"], np.float64), np.exp(np.asarray(prior["log_vars"], np.float64))
    mean = pi @ means
    return mean, pi @ (variances + means**2) - mean**2


def test_phases_through_the_training_loop(tmp_path):
    from gmvc.run.checkpoint import Checkpointer
    from gmvc.core.mixture_init import MIN_VAR
    from gmvc.training.state import init_params
    from gmvc.trainer import train_and_evaluate
    from gmvc.training.embedding_phases import EmbeddingPhases
    c = _phase_config(tmp_path)
    phases = build_phases(c)
    assert [(p.name, p.kind, p.start, p.end) for p in phases] == [
        ("pretrain", "train", 0, 20), ("init", "init_prior", 20, 20), ("main", "train", 20, 21)]
    assert phases[0].spec["trainable"] == ("net",) and phases[2].spec["trainable"] == ("net", "prior")
    assert phases[2].spec["objective"] == {"recon": 1.0, "vade_kl": 1.0}

    summary = train_and_evaluate(c, tmp_path / "run", echo=lambda *a, **k: None)
    assert summary["steps"] == 21 and summary["compiles"] == 2 and summary["num_samples"] == 200

    model = make_model(c.model, (DX,))
    init_rng = jax.random.split(jax.random.key(c.seed), 4)[0]     # as train_and_evaluate draws it
    initial = init_params(model.init, init_rng, 1)
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    try:
        assert ckpt._manager.all_steps() == [20, 21]
        after_pretrain, final = (ckpt.read(s)["params"] for s in (20, 21))
    finally:
        ckpt.close()
    # Pretraining: the net moved, the prior is bit-identical to its initialisation.
    _assert_trees_equal(after_pretrain["prior"], initial["prior"])
    assert _max_abs_diff(after_pretrain["net"], initial["net"]) > 1e-3
    # The init phase fitted the prior to the pretrained net's embeddings (one Adam step of ~lr = 1e-3
    # since): whatever the EM fit, its mixture has the embeddings' mean and per-dimension variance.
    z = np.asarray(jax.jit(model.embed)(jax.tree.map(lambda a: a[0], after_pretrain), _uniform_data()), np.float64)
    mean, var = _mixture_moments(jax.tree.map(lambda a: a[0], final["prior"]))
    np.testing.assert_allclose(mean, z.mean(0), atol=5e-3)
    np.testing.assert_allclose(var, z.var(0) + MIN_VAR, rtol=2e-2)
    init_mean, init_var = _mixture_moments(jax.tree.map(lambda a: a[0], initial["prior"]))
    assert np.abs(init_mean - z.mean(0)).max() > 0.05 or np.abs(init_var / (z.var(0) + MIN_VAR) - 1).max() > 0.1
    # Three clusters fitted, not one copied three times.
    assert np.ptp(np.asarray(final["prior"]["means"])[0], axis=0).max() > 0.1 * np.sqrt(z.var(0).max())
    # The main phase trains the prior too: redo the init phase as the loop does (same key), then every
    # prior leaf has taken one Adam step of size ~lr = 1e-3 from that fit.
    prior_rng = jax.random.split(jax.random.key(c.seed), 4)[3]
    fitted = EmbeddingPhases(model, 1, c.eval.batch_size).init_prior(phases[1], after_pretrain, _uniform_data(),
                                                                     jax.random.fold_in(prior_rng, 1))
    for a, b in zip(jax.tree.leaves(final["prior"]), jax.tree.leaves(fitted["prior"])):
        step = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        assert step.max() < 1.01e-3 and np.median(step) > 5e-4, step


def test_build_phases_errors(tmp_path):
    c = _phase_config(tmp_path)
    c.phases.pretrain.trainable = ("net", "encoder")
    with pytest.raises(ConfigError, match="unknown parameter group.*encoder"):
        build_phases(c)

    c = _phase_config(tmp_path)
    c.phases.pretrain.steps = -1
    with pytest.raises(ConfigError, match="only one phase.*steps=-1") as e:
        build_phases(c)
    assert "pretrain" in str(e.value) and "main" in str(e.value)

    c = _phase_config(tmp_path, steps_total=20)          # pretrain takes all 20: nothing left for main
    with pytest.raises(ConfigError, match="leaves no steps"):
        build_phases(c)

    c = _phase_config(tmp_path)
    c.phases.init.select = "accuracy"
    with pytest.raises(ConfigError, match="phase 'init': unknown select 'accuracy'"):
        build_phases(c)
