"""The `pin` term: each sample's cross-entropy to its group in the last init_prior phase's
partition. Its closed form, the groups an init_prior phase leaves (merged groups of an
over-clustered fit, else the prior's hard partition), config errors, and runs that carry the
groups in their state (resume, shard_map) on a small VaDE digits config."""
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmvc.core import mixture
from gmvc.data import load_dataset
from gmvc.errors import ConfigError
from gmvc.models import make_model
from gmvc.objectives import make_batch, make_objective
from gmvc.objectives.terms import make_pin
from gmvc.run.restore import load_trained
from gmvc.trainer import train_and_evaluate
from gmvc import recipes
from gmvc.training.embedding_phases import EmbeddingPhases
from gmvc.training.phases import INIT_DEFAULTS, Phase, build_phases
from test_neighbours import N, _checkpoint, _vade
from test_parallel import _assert_close
from test_train import assert_trees_equal

quiet = dict(echo=lambda *a, **k: None, write_outputs=False)


def _pinned(phases=("pretrain", "gmm_init", "main"), weight=5.0):
    """test_neighbours' VaDE on 300 digits (2 restarts, 40 + 40 steps) with `pin` in place of
    the neighbours term."""
    c = _vade(phases=phases)
    c.objective = {"recon": 1.0, "vade_kl": 1.0, "c_marginal": 1.0, "pin": weight}
    return c


def test_pin_is_the_cross_entropy_to_the_group():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=16)
    groups = rng.integers(0, 5, size=16)
    value, _ = make_pin({})(None, None, {"log_gamma": jnp.log(p), "groups": jnp.asarray(groups)}, None)
    assert float(value) == pytest.approx(-np.mean(np.log(p[np.arange(16), groups])), rel=1e-5)
    certain = np.full((4, 3), 1e-6)
    certain[np.arange(4), [0, 2, 1, 2]] = 1.0
    value, _ = make_pin({})(None, None, {"log_gamma": jnp.log(certain), "groups": jnp.array([0, 2, 1, 2])}, None)
    assert float(value) == pytest.approx(0.0, abs=1e-5)


def test_objective_reads_the_groups_and_skips_the_term_without_them():
    c = _pinned()
    x = load_dataset(c.data, c.seed).x[:20]
    model = make_model(c.model, x.shape[1:])
    params = model.init(jax.random.key(0))
    loss_fn = make_objective(model, {"recon": 1.0, "pin": 3.0}, {})
    keys = jax.random.split(jax.random.key(1), 20)
    groups = jnp.arange(20) % 10
    loss, aux = loss_fn(params, make_batch(x, groups=groups), keys, 0)
    log_gamma = np.asarray(model.apply(params, x, keys)["log_gamma"], np.float64)
    expected = -np.mean(log_gamma[np.arange(20), np.asarray(groups)])
    assert float(aux["pin"]) == pytest.approx(expected, rel=1e-4) and expected > 0.5
    assert float(loss) == pytest.approx(float(aux["recon"]) + 3 * expected, rel=1e-5)
    plain, plain_aux = loss_fn(params, make_batch(x), keys, 0)                # the whole-data score
    assert "pin" not in plain_aux and float(plain) == pytest.approx(float(aux["recon"]), rel=1e-6)


@pytest.mark.parametrize("phases", [("pretrain", "main", "gmm_init"), ()])
def test_pin_without_a_fit_before_it_is_named(tmp_path, phases):
    c = _pinned(phases=phases)
    with pytest.raises(ConfigError, match="'pin' term needs an init_prior phase before"):
        train_and_evaluate(c, tmp_path / "run", **quiet)
    assert not (tmp_path / "run").exists()


def test_the_groups_are_the_merged_partition_or_the_priors_own():
    """Two moons in their own coordinates (an identity embedding): an over-clustered fit leaves
    its merged groups, which follow the moons; a plain 2-component fit leaves the prior's hard
    partition, which cuts them across. Without a pin phase no groups are kept."""
    from sklearn.datasets import make_moons
    from gmvc.core.neighbours import knn_table
    x, y = make_moons(1000, noise=0.05, random_state=0)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    model = types.SimpleNamespace(embed=lambda params, v: v, num_clusters=2, stored_prior=True)
    params = {"net": {"w": jnp.ones((1, 2))},
              "prior": {"logits": jnp.zeros((1, 2)), "means": jnp.zeros((1, 2, 2)), "log_vars": jnp.zeros((1, 2, 2))}}
    table = np.asarray(knn_table(jnp.asarray(x), 10))[None]
    train = Phase("main", "train", 0, 10, {"kind": "train", "objective": {"recon": 1.0, "pin": 1.0}})
    base = {**INIT_DEFAULTS, "kind": "init_prior", "method": "em", "kmeans_iters": 50, "em_iters": 20, "n_init": 4}
    found = {}
    for name, spec in (("merged", {**base, "overcluster": 8}), ("plain", base)):
        fit = Phase("fit", "init_prior", 0, 0, spec)
        phases = EmbeddingPhases(model, 1, 128, [fit, train])
        new = phases.init_prior(fit, params, x, jax.random.key(0), table)
        assert phases.groups.shape == (1, 1000) and phases.groups.dtype == np.int32
        prior = jax.tree.map(lambda a: a[0], new["prior"])
        hard = np.asarray(jnp.argmax(mixture.log_responsibilities(jnp.asarray(x), prior["logits"], prior["means"],
                                                                  prior["log_vars"]), 1))
        found[name] = (phases.groups[0], hard)
    merged, hard = found["merged"]
    assert max(np.mean(merged == y), np.mean(merged != y)) == 1.0          # the moons, whole
    assert 0.6 < max(np.mean(hard == y), np.mean(hard != y)) < 0.95        # what the Gaussians alone give
    np.testing.assert_array_equal(found["plain"][0], found["plain"][1])
    unpinned = EmbeddingPhases(model, 1, 128, [Phase("fit", "init_prior", 0, 0, base)])
    unpinned.init_prior(Phase("fit", "init_prior", 0, 0, base), params, x, jax.random.key(0), table)
    assert unpinned.groups is None


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pin") / "straight"
    c = _pinned()
    return c, workdir, train_and_evaluate(c, workdir, **quiet)


def test_run_carries_the_groups_of_its_fit(straight):
    """The state of the pinned phase holds each restart's partition from gmm_init (the same at
    every checkpoint of the phase), and the term holds it: the trained model keeps most samples
    in their group."""
    c, workdir, summary = straight
    data = load_dataset(c.data, c.seed)
    model = make_model(c.model, data.x.shape[1:])
    pretrained, middle, final = (_checkpoint(workdir, s) for s in (40, 60, 80))
    assert "groups" not in pretrained and final["groups"].shape == (2, N) and final["groups"].dtype == np.int32
    np.testing.assert_array_equal(middle["groups"], final["groups"])
    assert (final["groups"][0] != final["groups"][1]).mean() > 0.1      # restarts keep their own
    for r in range(2):
        assert len(np.unique(final["groups"][r])) >= 5
        trained = np.asarray(model.predict(jax.tree.map(lambda a: a[r], final["params"]), data.x)["log_gamma"])
        assert np.mean(trained.argmax(1) == final["groups"][r]) > 0.8
    assert np.isfinite(summary["restart_objective"]).all()
    logs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [("pin" in r) for r in logs] == [False, False, True, True]           # pretrain, pretrain, main, main
    # It starts high (the encoder's variance, untrained by pretraining, scatters the codes it samples) and falls.
    assert 0 < logs[3]["pin"] < 0.6 * logs[2]["pin"]


def test_resume_in_the_pinned_phase_restores_the_groups(straight, tmp_path):
    c, workdir, _ = straight
    half = c.copy_and_resolve_references()
    half.train.steps = 60
    train_and_evaluate(half, tmp_path, **quiet)
    messages = []
    train_and_evaluate(c, tmp_path, **{**quiet, "echo": lambda m, **k: messages.append(m)})
    assert any("Resuming from checkpoint" in m and "step 60" in m for m in messages)
    assert not any("phase 'gmm_init'" in m for m in messages)          # the groups came from the checkpoint
    a, b = _checkpoint(workdir, 80), _checkpoint(tmp_path, 80)
    np.testing.assert_array_equal(a["groups"], b["groups"])
    assert_trees_equal(a["params"], b["params"])


def test_shard_map_matches_one_device_with_groups(tmp_path):
    states = {}
    for mode in ("single", "shard_map"):
        c = _pinned(phases=("gmm_init", "main"))
        c.phases.main.augment = {"shift": 1.0}          # the groups pass through the augmentation
        c.train.steps = 20
        c.parallel.mode, c.parallel.devices = mode, 2
        train_and_evaluate(c, tmp_path / mode, **quiet)
        states[mode] = _checkpoint(tmp_path / mode, 20)
        logs = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        assert all(np.isfinite(r["pin"]) and r["pin"] > 0 for r in logs)
    np.testing.assert_array_equal(states["single"]["groups"], states["shard_map"]["groups"])
    _assert_close(states["single"]["params"], states["shard_map"]["params"], 1e-4)


# -- a model whose mixture is a prior network (GMVAE): init_prior sets the network to the fit ----

def test_gmvae_load_prior_gives_the_fitted_components_at_every_w():
    c = recipes.cluster_gmvae(n_clusters=3, latent_dim=2, w_dim=4, hidden_sizes=(8,), prior_hidden=6)
    c.model.likelihood = "bernoulli"
    model = make_model(c.model, (5,))
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    fitted = {"logits": jnp.asarray(rng.normal(size=3)), "means": jnp.asarray(rng.normal(size=(3, 2))),
              "log_vars": jnp.asarray(rng.normal(size=(3, 2)))}
    loaded = model.load_prior(params, fitted)
    prior = model.prior_distribution(loaded)
    np.testing.assert_allclose(prior.components_distribution.mean(), fitted["means"], rtol=1e-6)
    x = rng.uniform(size=(4, 5)).astype(np.float32)
    out = model.apply(loaded, x, jax.random.key(1))           # w drawn from q(w | x): any w gives the fit
    np.testing.assert_allclose(out["prior_means"], np.broadcast_to(fitted["means"], (4, 3, 2)), rtol=1e-6)
    np.testing.assert_allclose(out["prior_log_vars"], np.broadcast_to(fitted["log_vars"], (4, 3, 2)), rtol=1e-6)
    assert_trees_equal({k: v for k, v in loaded["net"].items() if k != "prior_head"},
                       {k: v for k, v in params["net"].items() if k != "prior_head"})


def _gmvae_cluster(steps=400):
    """recipes.cluster_gmvae on 300 digits, small: 2 restarts, 60 pretraining steps of `steps`, pin 5
    (the recipe's pin of 1 holds the groups over a few hundred steps of a network this small)."""
    c = recipes.cluster_gmvae(n_clusters=10, steps=steps, pretrain_steps=60, hidden_sizes=(64,), prior_hidden=32,
                              batch_size=50, restarts=2, pin=5.0)
    c.unlock()
    c.data.source, c.data.limit = "digits", N
    for name in ("gmm_init", "gmm_init2", "gmm_init3"):
        c.phases[name].n_init = 3
        c.phases[name].features = 0        # 60 steps of pretraining: the features' GMM would win, and no refit run
    c.train.log_every, c.train.checkpoint_every = 20, 100
    return c


def test_gmvae_is_pinned_to_its_fits(tmp_path):
    """GMVAE's init_prior phases set its prior network to the fit (params["prior"] stays empty)
    and give it groups; the refits compare their partition with the model's own by modularity;
    the trained model follows its groups and uses every cluster."""
    messages = []
    summary = train_and_evaluate(_gmvae_cluster(), tmp_path, **{**quiet, "echo": lambda m, **k: messages.append(m)})
    trained = load_trained(tmp_path)              # its likelihood and scaling as the run chose them
    x = trained.scaling.apply(load_dataset(trained.config.data, trained.config.seed).x)
    state = _checkpoint(tmp_path, 400)
    assert state["params"]["prior"] == {} and state["groups"].shape == (2, N)
    choices = [m for m in messages if m.startswith("phase 'gmm_init2'") or m.startswith("phase 'gmm_init3'")]
    assert len(choices) == 4 and all("modularity on the neighbour graph: the model's" in m for m in choices)
    for r in range(2):
        own = np.asarray(trained.model.predict(jax.tree.map(lambda a: a[r], state["params"]), x)["log_gamma"]).argmax(1)
        assert np.mean(own == state["groups"][r]) > 0.7
        assert np.bincount(own, minlength=10).max() < 0.3 * N
    assert summary["acc"] > 0.5


@pytest.mark.parametrize("change, message", [
    (lambda c: c.phases.gmm_init2.update(balanced_above=0.1), "keeps its mixture in a prior network; balanced_above"),
    (lambda c: c.phases.gmm_init2.update(select="likelihood"), "select 'modularity' or 'balance'"),
])
def test_gmvae_partition_settings_are_checked(tmp_path, change, message):
    c = _gmvae_cluster()
    change(c)
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(c, tmp_path / "run", **quiet)
    assert not (tmp_path / "run").exists()
