"""The init_prior phase (gmvc/training/embedding_phases.py): the mini-batch subsample, keep_current
and keep_or_replace, balanced_above, and the compiled fits that phases share (make_fits)."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmvc.core.mixture_init import mean_log_likelihood
from gmvc.training.phases import INIT_DEFAULTS, Phase, build_phases
from helpers_vade import BLOB_MEANS, BLOB_STDS, BLOB_WEIGHTS, N_INIT, _assert_trees_equal, _blobs, _matched

pytestmark = pytest.mark.usefixtures("fast_compiles_module")


def test_minibatch_init_prior_uses_a_subsample():
    """The init_prior phase with method "minibatch" (batches * batch_size = 500 of 2000 points; k-means
    then moments, em_iters ignored) through EmbeddingPhases.init_prior, with an identity embedding."""
    from gmvc.training.embedding_phases import EmbeddingPhases
    z, y = _blobs(2000, seed=1)
    model = types.SimpleNamespace(embed=lambda params, x: x, num_clusters=4, stored_prior=True)
    spec = {**INIT_DEFAULTS, "kind": "init_prior", "method": "minibatch", "kmeans_iters": 50, "em_iters": 20,
            "n_init": N_INIT, "select": "likelihood", "batches": 5, "batch_size": 100}
    params = {"net": {"w": jnp.ones((1, 2))},
              "prior": {"logits": jnp.zeros((1, 4)), "means": jnp.zeros((1, 4, 3)), "log_vars": jnp.zeros((1, 4, 3))}}
    new = EmbeddingPhases(model, 1, 128).init_prior(Phase("gmm_init", "init_prior", 0, 0, spec), params, z,
                                                    jax.random.key(5))
    _assert_trees_equal(new["net"], params["net"])
    assert jax.tree.map(np.shape, new["prior"]) == jax.tree.map(np.shape, params["prior"])
    prior = jax.tree.map(lambda a: a[0], new["prior"])
    weights, means, variances = _matched(prior)
    # Hard assignments of exactly 500 points: every weight is a whole number of points out of 500.
    counts = weights * 500
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-2)
    assert counts.sum() == pytest.approx(500, abs=1e-2)
    np.testing.assert_allclose(means, BLOB_MEANS, atol=0.1)
    np.testing.assert_allclose(weights, BLOB_WEIGHTS, atol=0.05)
    # ~100 points per blob: a sample variance's standard error is ~14% of the truth; allow 3 of them.
    np.testing.assert_allclose(variances, BLOB_STDS**2, rtol=0.4)


def test_keep_current_keeps_the_better_partition():
    """init_prior with keep_current: a restart keeps its prior unless the new fit partitions the
    embeddings more evenly (select balance, by each point's most likely component). Restart 0's
    prior is the blobs' own and the fit merges two blobs: kept. Restart 1's prior has four equal
    components, whose soft usage is perfectly even (imbalance 0) but whose partition puts every
    point in one: the fit replaces it."""
    from gmvc.core.mixture_init import cluster_counts, imbalance, kl_to_uniform

    def hard_imbalance(prior, zz):                    # what keep_or_replace scores by balance
        return kl_to_uniform(cluster_counts(prior, zz) / len(zz))
    from gmvc.training.embedding_phases import EmbeddingPhases
    z, y = _blobs(2000, seed=3)
    truth = {"logits": jnp.log(jnp.asarray(BLOB_WEIGHTS, jnp.float32)), "means": jnp.asarray(BLOB_MEANS, jnp.float32),
             "log_vars": jnp.asarray(np.log(BLOB_STDS**2), jnp.float32)}
    same = {"logits": jnp.zeros(4), "means": jnp.tile(jnp.asarray(z.mean(0)), (4, 1)), "log_vars": jnp.zeros((4, 3))}
    merged = {**truth, "means": truth["means"].at[1].set(truth["means"][0])}     # blob 1's points go to 0 or 3
    permuted = jax.tree.map(lambda a: a[jnp.array([2, 0, 3, 1])], truth)        # the same partition, relabelled
    model = types.SimpleNamespace(embed=lambda params, x: x, num_clusters=4, stored_prior=True)
    spec = {**INIT_DEFAULTS, "kind": "init_prior", "select": "balance", "keep_current": True}
    params = {"net": {}, "prior": jax.tree.map(lambda a, b: jnp.stack([a, b]), truth, same)}
    said = []
    phases = EmbeddingPhases(model, 2, 512, say=said.append)
    phases.fits["refit"] = lambda rng, restart, zz, table: (merged, permuted)[restart]
    new = phases.init_prior(Phase("refit", "init_prior", 0, 0, spec), params, z, jax.random.key(0))
    for r, want in ((0, truth), (1, permuted)):
        _assert_trees_equal(jax.tree.map(lambda a: a[r], new["prior"]), want)
    true_kl = float(hard_imbalance(truth, jnp.asarray(z)))
    merged_kl = float(hard_imbalance(merged, jnp.asarray(z)))
    assert true_kl < 0.02 < merged_kl            # measured: 0.010 and 0.036
    assert said[0].startswith(f"phase 'refit' restart 0: kept the current prior (partition's imbalance: current "
                              f"{true_kl:.4f}, new fit {merged_kl:.4f}; cluster sizes of the 2000 embeddings")
    assert said[1].startswith(f"phase 'refit' restart 1: the new fit replaces the prior (partition's imbalance: "
                              f"current {np.log(4):.4f}, new fit {true_kl:.4f}")
    np.testing.assert_array_equal(cluster_counts(same, jnp.asarray(z)), [2000, 0, 0, 0])
    assert f"current [2000, 0, 0, 0], new fit {sorted(np.bincount(y).tolist(), reverse=True)}" in said[1]
    # Why the partition, not the soft usage: by soft usage the four equal components look perfect.
    assert float(imbalance(same, jnp.asarray(z))) < 1e-6 < float(imbalance(truth, jnp.asarray(z)))
    assert float(hard_imbalance(same, jnp.asarray(z))) == pytest.approx(np.log(4), rel=1e-5)
    counts = np.bincount(y, minlength=4) / len(y)
    assert float(hard_imbalance(truth, jnp.asarray(z))) == pytest.approx(np.log(4) + np.sum(counts * np.log(counts)),
                                                                         rel=1e-3)


def test_balanced_above_fits_balanced_only_where_the_partition_is_uneven():
    """balanced_above on four equal overlapping blobs (those of the test above): restart 0's prior
    is the blobs' own (partition imbalance about 0.001), restart 1's has blob 1's mean moved onto
    blob 0's (about 0.1). At 0.02 restart 0 is fitted by the plain fit as it is, restart 1 by the
    balanced fit, compiled from the spec where none is given: its components take 250 points
    each within a few, where plain EM's largest takes more than 270."""
    from gmvc.core.mixture_init import cluster_counts, kl_to_uniform
    from gmvc.training.embedding_phases import EmbeddingPhases
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], np.float32)
    z = (centres[np.repeat(np.arange(4), 250)] + 0.8 * rng.standard_normal((1000, 2))).astype(np.float32)
    truth = {"logits": jnp.full(4, -np.log(4.0)), "means": jnp.asarray(centres), "log_vars": jnp.full((4, 2), np.log(0.64))}
    merged = {**truth, "means": truth["means"].at[1].set(truth["means"][0])}
    model = types.SimpleNamespace(embed=lambda params, x: x, num_clusters=4, stored_prior=True)
    spec = {**INIT_DEFAULTS, "kind": "init_prior", "select": "balance", "balanced_above": 0.02}
    params = {"net": {}, "prior": jax.tree.map(lambda a, b: jnp.stack([a, b]), truth, merged)}
    plain_calls, said = [], []

    def plain(rng, restart, zz, table):
        plain_calls.append(restart)
        return merged
    phases = EmbeddingPhases(model, 2, 512, say=said.append)
    phases.fits["refit"] = plain
    new = phases.init_prior(Phase("refit", "init_prior", 0, 0, spec), params, z, jax.random.key(0))
    assert plain_calls == [0]
    _assert_trees_equal(jax.tree.map(lambda a: a[0], new["prior"]), merged)
    true_kl, merged_kl = (float(kl_to_uniform(cluster_counts(p, jnp.asarray(z)) / len(z))) for p in (truth, merged))
    assert true_kl < 0.005 and merged_kl > 0.05
    assert said == [f"phase 'refit' restart 0: the current partition's imbalance {true_kl:.4f} is within "
                    f"balanced_above=0.02: a plain fit",
                    f"phase 'refit' restart 1: the current partition's imbalance {merged_kl:.4f} is above "
                    f"balanced_above=0.02: a balanced fit"]
    balanced = jax.tree.map(lambda a: a[1], new["prior"])
    np.testing.assert_allclose(np.exp(balanced["logits"]), 0.25, atol=0.002)
    assert np.abs(np.asarray(cluster_counts(balanced, jnp.asarray(z))) - 250).max() <= 10


def test_keep_current_by_likelihood_and_with_nan():
    """select likelihood: the more likely prior wins (one restart: no restart in the message); a
    current prior that is NaN gives way to a finite fit, and a NaN fit never replaces."""
    from gmvc.training.embedding_phases import keep_or_replace
    z, _ = _blobs(1000, seed=5)
    z = jnp.asarray(z)
    truth = {"logits": jnp.log(jnp.asarray(BLOB_WEIGHTS, jnp.float32)), "means": jnp.asarray(BLOB_MEANS, jnp.float32),
             "log_vars": jnp.asarray(np.log(BLOB_STDS**2), jnp.float32)}
    wide = {**truth, "log_vars": truth["log_vars"] + 2.0}                    # the same means, 7 times the variance
    nan = jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), truth)
    phase = Phase("refit", "init_prior", 0, 0, {"select": "likelihood"})
    said = []
    echo = lambda m, **k: said.append(m)
    assert keep_or_replace(phase, wide, truth, z, say=echo) is truth
    assert keep_or_replace(phase, truth, wide, z, say=echo) is truth
    ll_true, ll_wide = float(mean_log_likelihood(truth, z)), float(mean_log_likelihood(wide, z))
    assert ll_true > ll_wide + 0.5
    assert said[0].startswith(f"phase 'refit': the new fit replaces the prior (mean log-likelihood: current "
                              f"{ll_wide:.4f}, new fit {ll_true:.4f}; cluster sizes of the 1000 embeddings fitted: ")
    assert said[1].startswith("phase 'refit': kept the current prior")
    assert keep_or_replace(phase, nan, truth, z) is truth
    assert keep_or_replace(phase, truth, nan, z) is truth
    balance = Phase("refit", "init_prior", 0, 0, {"select": "balance"})
    assert keep_or_replace(balance, truth, nan, z) is truth          # a NaN prior partitions into one cluster


def test_init_prior_phases_with_one_fit_share_its_program():
    from gmvc.recipes import vade_mnist5k
    from gmvc.training.embedding_phases import make_fits
    c = vade_mnist5k()
    fits = make_fits(build_phases(c), types.SimpleNamespace(num_clusters=10))
    assert set(fits) == {"gmm_init", "gmm_init2", "gmm_init3"}
    # the refits share one program; the first fit (80 components, not 30) has its own
    assert fits["gmm_init2"] is fits["gmm_init3"] and fits["gmm_init"] is not fits["gmm_init2"]
    # the balanced fits of refits with balanced_above: one program for the run, not the plain one
    c.unlock()
    c.phases.gmm_init2.balanced_above = c.phases.gmm_init3.balanced_above = 0.03
    balanced = make_fits(build_phases(c), types.SimpleNamespace(num_clusters=10), balanced=True)
    assert set(balanced) == {"gmm_init2", "gmm_init3"} and balanced["gmm_init2"] is balanced["gmm_init3"]
    assert balanced["gmm_init2"] is not make_fits(build_phases(c), types.SimpleNamespace(num_clusters=10))["gmm_init2"]
    c.phases.gmm_init2.n_init = 5
    fits = make_fits(build_phases(c), types.SimpleNamespace(num_clusters=10))
    assert fits["gmm_init3"] is not fits["gmm_init2"]
    # the cluster recipe's last fit compares with the features' GMM (host code): the same program
    from gmvc.recipes import cluster
    from gmvc.recipes.rules import fit_to_data
    c, _ = fit_to_data(cluster(10), 5000, (784,))
    fits = make_fits(build_phases(c), types.SimpleNamespace(num_clusters=10))
    assert c.phases.gmm_init3.features and fits["gmm_init2"] is fits["gmm_init3"]


def test_pull_gives_each_sample_the_anchors_of_its_merged_group():
    """An init_prior phase with overcluster and pull: two moons in their own coordinates (an
    identity embedding). Their merged partition follows the neighbour graph; the pull table
    gives every sample its group's `pull` anchors, members of the same moon, while the
    2-Gaussian prior alone cuts the moons across (it cannot follow their shape)."""
    from sklearn.datasets import make_moons
    from gmvc.core import mixture
    from gmvc.core.neighbours import knn_table
    from gmvc.training.embedding_phases import EmbeddingPhases, anchors
    x, y = make_moons(1000, noise=0.05, random_state=0)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    model = types.SimpleNamespace(embed=lambda params, v: v, num_clusters=2, stored_prior=True)
    spec = {**INIT_DEFAULTS, "kind": "init_prior", "method": "em", "kmeans_iters": 50, "em_iters": 20, "n_init": 4,
            "overcluster": 8, "pull": 3}
    params = {"net": {"w": jnp.ones((1, 2))},
              "prior": {"logits": jnp.zeros((1, 2)), "means": jnp.zeros((1, 2, 2)), "log_vars": jnp.zeros((1, 2, 2))}}
    table = np.asarray(knn_table(jnp.asarray(x), 10))[None]
    phases = EmbeddingPhases(model, 1, 128, [Phase("fit", "init_prior", 0, 0, spec)])
    phase = Phase("fit", "init_prior", 0, 0, spec)
    new = phases.init_prior(phase, params, x, jax.random.key(0), table)
    said = []
    phases.say = said.append
    pulled = phases.pull_table(y, name="fit")
    assert pulled.shape == (1, 1000, 3) and pulled.dtype == np.int32
    assert np.all(y[pulled[0]] == y[:, None])                          # every anchor shares the moon
    assert len(np.unique(pulled[0])) == 6                              # 3 anchors for each of 2 groups
    assert "group sizes [500, 500]" in said[0] and "100.0% share its label" in said[0]
    assert "100.0% of the neighbour links within a group" in said[0]
    prior = jax.tree.map(lambda a: a[0], new["prior"])
    gaussian = np.asarray(jnp.argmax(mixture.log_responsibilities(jnp.asarray(x), prior["logits"], prior["means"],
                                                                  prior["log_vars"]), 1))
    assert np.mean(gaussian == y) not in (0.0, 1.0)                   # the prior alone does not follow the moons
    z = np.array([[0.0], [1.0], [10.0], [11.0], [12.0], [5.0]])
    groups = np.array([0, 0, 1, 1, 1, 2])
    a = anchors(z, groups, 4, 2)
    assert a[1].tolist() == [3, 2] and sorted(a[0].tolist()) == [0, 1] and a[2].tolist() == [5, 5]
    assert a[3].tolist() == [0, 0]                                    # an empty group: read by no row


@pytest.mark.parametrize("spec, message", [
    ({"pull": 3, "overcluster": 0}, "needs overcluster"),
    ({"pull": -1, "overcluster": 8}, "pull must be 0"),
    ({"pull": 3, "overcluster": 8, "keep_current": True}, "cannot be combined with keep_current"),
    ({"select": "modularity", "overcluster": 0}, "select 'modularity' scores a merged partition"),
    ({"linkage": "single", "overcluster": 8}, r"unknown linkage 'single'; known: \['average', 'modularity', 'both'\]"),
])
def test_pull_settings_are_checked(spec, message):
    from gmvc import recipes
    from gmvc.errors import ConfigError
    from gmvc.recipes.rules import fit_to_data
    c, _ = fit_to_data(recipes.cluster(2), 1000, (2,))
    c.unlock()
    c.phases.gmm_init2 = {**c.phases.gmm_init2.to_dict(), "keep_current": False, **spec}
    with pytest.raises(ConfigError, match=message):
        build_phases(c)


def test_pull_leaves_a_table_for_the_train_phase_after_it():
    from gmvc import recipes
    from gmvc.recipes.rules import fit_to_data
    from gmvc.training.phases import neighbour_k
    c, _ = fit_to_data(recipes.cluster(3), 1000, (2,))
    phases = build_phases(c)
    names = [p.name for p in phases]
    assert neighbour_k(phases, names.index("main")) == 3            # gmm_init's pull: 3 members
    c.unlock()
    c.phases.gmm_init = {**c.phases.gmm_init.to_dict(), "pull": 5}
    assert neighbour_k(build_phases(c), names.index("main")) == 5
    c.phases.gmm_init = {**c.phases.gmm_init.to_dict(), "pull": 0}
    c.phases.knn = {"kind": "neighbours", "k": 4}
    assert neighbour_k(build_phases(c), names.index("main")) == 4


def _uneven_blobs(gap=3.6):
    """Three Gaussian blobs of 600, 300 and 100 points in 2-D, touching, `gap` between the first two."""
    rng = np.random.default_rng(0)
    sizes, means = [600, 300, 100], np.array([[0.0, 0.0], [gap, 0.0], [gap / 2, gap * 0.8]])
    x = np.concatenate([rng.normal(m, 1.0, (n, 2)) for m, n in zip(means, sizes)]).astype(np.float32)
    return x, np.repeat(np.arange(3), sizes)


def test_the_features_partition_is_kept_where_it_cuts_fewer_links():
    """An init_prior phase with features: the merged partition against a full GMM on the
    features, by the share of the features' 3-NN links each cuts (the GMM's replaces the other only
    below 0.8 of its share). On uneven blobs a balanced partition cuts through the big blob and
    the GMM's is kept, its groups and prior following the blobs' sizes; a later keep_current
    phase keeps it without a fit. On closer blobs the two are near a tie and the merged partition
    is kept. On two moons the GMM cuts both moons across and the merged partition is kept."""
    from sklearn.datasets import make_moons
    from gmvc.training.feature_partition import cut_share
    from gmvc.core.neighbours import knn_table
    from gmvc.training.embedding_phases import EmbeddingPhases
    model = types.SimpleNamespace(embed=lambda params, v: v, num_clusters=3, stored_prior=True)
    spec = {**INIT_DEFAULTS, "kind": "init_prior", "n_init": 4, "overcluster": 12, "select": "modularity",
            "features": 3}
    params = {"net": {"w": jnp.ones((1, 2))},
              "prior": {"logits": jnp.zeros((1, 3)), "means": jnp.zeros((1, 3, 2)), "log_vars": jnp.zeros((1, 3, 2))}}
    x, y = _uneven_blobs()
    table = np.asarray(knn_table(jnp.asarray(x), 3))[None]
    fit = Phase("fit", "init_prior", 0, 0, spec)
    said = []
    phases = EmbeddingPhases(model, 1, 128, [fit], say=said.append)
    phases.pins = True
    new = phases.init_prior(fit, params, x, jax.random.key(0), table)
    assert said[0].startswith("phase 'fit': the features' GMM partition replaces the merged partition"), said
    groups = phases.groups[0]
    assert sorted(np.bincount(groups).tolist()) == sorted(np.bincount(phases.features[0]).tolist())
    assert _matched_acc(groups, y) > 0.9
    weights = np.sort(np.asarray(jax.nn.softmax(new["prior"]["logits"][0])))
    np.testing.assert_allclose(weights, np.sort(np.bincount(groups) / len(x)), atol=1e-4)
    assert cut_share(groups, phases.features[1]) < 0.05
    refit = Phase("fit2", "init_prior", 0, 0, {**spec, "keep_current": True})
    said.clear()
    again = phases.init_prior(refit, new, x, jax.random.key(1), table,
                              groups=phases.groups)
    assert said == ["phase 'fit2': kept the features' partition (no refit)"]
    # Closer blobs: the GMM cuts about the share the merged partition cuts (0.0230 against
    # 0.0237), no evidence either way, and the merged partition is kept.
    near, _ = _uneven_blobs(gap=3.2)
    close = EmbeddingPhases(model, 1, 128, [fit], say=said.append)
    close.pins = True
    said.clear()
    close.init_prior(fit, params, near, jax.random.key(0), np.asarray(knn_table(jnp.asarray(near), 3))[None])
    assert said[0].startswith("phase 'fit': kept the merged partition") and "replaces below 0.8 x" in said[0], said
    _assert_trees_equal(again["prior"], new["prior"])
    np.testing.assert_array_equal(phases.groups[0], groups)
    # A keep_current phase compares the partition it keeps (here a balanced one, by thirds of x,
    # which cuts through the big blob) with the features' GMM, which replaces it.
    from gmvc.training.embedding_phases import prior_of_groups
    thirds = np.searchsorted(np.quantile(x[:, 0], [1 / 3, 2 / 3]), x[:, 0]).astype(np.int32)
    said.clear()
    prior, chosen = phases.choose_features(refit, x, x, prior_of_groups(x, thirds, 3), thirds, 0, what="kept")
    assert said[0].startswith("phase 'fit2': the features' GMM partition replaces the kept partition"), said
    np.testing.assert_array_equal(chosen, groups)
    np.testing.assert_allclose(np.sort(np.asarray(jax.nn.softmax(prior["logits"]))), weights, atol=1e-4)

    xm, ym = make_moons(1000, noise=0.05, random_state=0)
    xm = ((xm - xm.mean(0)) / xm.std(0)).astype(np.float32)
    model2 = types.SimpleNamespace(embed=lambda params, v: v, num_clusters=2, stored_prior=True)
    params2 = {"net": {"w": jnp.ones((1, 2))},
               "prior": {"logits": jnp.zeros((1, 2)), "means": jnp.zeros((1, 2, 2)), "log_vars": jnp.zeros((1, 2, 2))}}
    moons = EmbeddingPhases(model2, 1, 128, [fit], say=said.append)
    moons.pins = True
    said.clear()
    moons.init_prior(Phase("fit", "init_prior", 0, 0, {**spec, "overcluster": 8}), params2, xm, jax.random.key(0),
                     np.asarray(knn_table(jnp.asarray(xm), 10))[None])
    assert said[0].startswith("phase 'fit': kept the merged partition (share of the features' 3-NN links"), said
    assert _matched_acc(moons.groups[0], ym) == 1.0 and _matched_acc(moons.features[0], ym) < 0.95


def _matched_acc(pred, y):
    from gmvc.core.metrics import hungarian_accuracy
    return float(hungarian_accuracy(np.asarray(pred), np.asarray(y)))


def test_features_settings_are_checked():
    from gmvc import recipes
    from gmvc.errors import ConfigError
    from gmvc.recipes.rules import fit_to_data
    c, _ = fit_to_data(recipes.cluster(2), 1000, (2,))
    assert [c.phases[f].features for f in ("gmm_init", "gmm_init2", "gmm_init3")] == [5, 5, 5]
    assert dict(c.terms.c_marginal) == {"target": "prior"}
    images, notes = fit_to_data(recipes.cluster(2), 1000, (16, 16, 1))        # no features' GMM for images
    assert [images.phases[f].features for f in ("gmm_init", "gmm_init2", "gmm_init3")] == [0, 0, 0]
    assert "features' GMM: off (images) (gmm_init, gmm_init2, gmm_init3)" in notes
    c.unlock()
    for bad, message in ((-1, "features must be 0"), (True, "features must be 0"), (2.5, "features must be 0")):
        c.phases.gmm_init2 = {**c.phases.gmm_init2.to_dict(), "features": bad}
        with pytest.raises(ConfigError, match=message):
            build_phases(c)
    c.phases.gmm_init2 = {"kind": "init_prior", "features": 3}
    with pytest.raises(ConfigError, match="needs overcluster"):
        build_phases(c)
