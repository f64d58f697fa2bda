"""Nearest neighbours in the embedding (gmvc/core/neighbours.py) and the `neighbours` term: the table
against brute force, per-sample draws, the term's closed form, config errors, and training runs
that carry the table (resume, shard_map) on a small VaDE digits config."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from gmvc.run.checkpoint import Checkpointer
from gmvc.data import load_dataset
from gmvc.errors import ConfigError, DataError
from gmvc.models import make_model
from gmvc.core.neighbours import agreement, draw, knn_descent, knn_table
from gmvc.objectives import make_batch, make_objective
from gmvc.objectives.terms import make_neighbours
from gmvc.training.state import Tables, TrainState
from gmvc.training.steps import assemble_batch, make_restarts_step, select_batch
from gmvc.run.restore import restore_stacked
from gmvc.trainer import train_and_evaluate
from gmvc.validate import validate
from test_parallel import _assert_close
from test_train import assert_trees_equal

quiet = dict(echo=lambda *a, **k: None, write_outputs=False)
N, K_NBR = 300, 5            # digits rows the runs use, neighbours per sample


def _points(n, d=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _brute_knn(z, k):
    d2 = ((z[:, None, :].astype(np.float64) - z[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    order = np.argsort(d2, axis=1)
    gaps = np.diff(np.take_along_axis(d2, order[:, :k + 1], axis=1), axis=1)
    assert gaps.min() > 1e-4               # no near-ties: the order is well defined in float32
    return order[:, :k]


def _vade(k=K_NBR, phases=("pretrain", "knn", "gmm_init", "main")):
    """VaDE on 300 digits, 2 restarts: 40 pretraining steps, the k-neighbour table, a GMM fit, 40
    main steps with the neighbours term."""
    c = load_config("vade_digits.py")
    c.model.hidden_sizes = (32,)
    c.data.limit = N
    c.train.batch_size, c.train.restarts = 50, 2
    c.phases.pretrain.steps = 40
    c.phases.gmm_init.update(n_init=1, kmeans_iters=10, em_iters=5)
    c.phases.knn = {"kind": "neighbours", **(k if isinstance(k, dict) else {"k": k})}
    c.objective = {"recon": 1.0, "vade_kl": 1.0, "c_marginal": 1.0, "neighbours": 1.0}     # "main"'s
    c.train.phases = phases
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 80, 20, 20
    return c


def _checkpoint(workdir, step):
    ckpt = Checkpointer(workdir / "checkpoints")
    try:
        return jax.tree.map(np.asarray, ckpt.read(step))
    finally:
        ckpt.close()


# -- the table and the draws ------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [1, 7, 25, 50, 512])     # 7 leaves a slid-back last chunk
def test_knn_table_is_the_brute_force_knn(chunk_size):
    z = _points(50)
    table = knn_table(z, 4, chunk_size)
    assert table.dtype == np.int32 and table.shape == (50, 4)
    np.testing.assert_array_equal(table, _brute_knn(z, 4))           # nearest first
    assert not (table == np.arange(50)[:, None]).any()


def test_knn_descent_finds_most_exact_neighbours():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 6)) * 4
    z = (centres[rng.integers(0, 8, 3000)] + rng.normal(size=(3000, 6))).astype(np.float32)
    exact = knn_table(z, 5)
    approx = knn_descent(z, 5, jax.random.key(1), chunk_size=700)         # a slid-back last chunk
    assert approx.dtype == np.int32 and approx.shape == (3000, 5)
    assert not (approx == np.arange(3000)[:, None]).any()
    assert all(len(set(row)) == 5 for row in approx)                    # distinct
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, approx)])
    assert recall > 0.97
    d = lambda t: np.linalg.norm(z[t] - z[:, None], axis=-1)
    assert (np.diff(d(approx), axis=1) >= 0).all()                      # nearest first
    start = knn_descent(z, 5, jax.random.key(1), iters=0)              # the random projections alone
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, start)]) < recall - 0.2


def test_agreement_counts_neighbours_with_the_same_label():
    table = np.array([[1, 2], [0, 2], [0, 1]])
    assert agreement(table, np.array([0, 0, 1])) == pytest.approx(2 / 6)


def test_draw_is_a_table_entry_chosen_by_the_sample_key():
    table = knn_table(_points(40), K_NBR)
    idx = jnp.asarray(np.random.default_rng(1).permutation(40)[:16])
    keys = jax.random.split(jax.random.key(0), 16)
    got = np.asarray(draw(table, idx, keys))
    assert got.shape == (16,) and all(got[b] in table[idx[b]] for b in range(16))
    np.testing.assert_array_equal(np.asarray(draw(table, idx[5:11], keys[5:11])), got[5:11])   # however split
    one_key = np.asarray(draw(table, idx, jax.random.key(0)))
    assert all(one_key[b] in table[idx[b]] for b in range(16))
    # 400 keys for one sample: every one of its k neighbours, each about 1/k of the time
    picks = np.asarray(draw(table, jnp.zeros(400, jnp.int32), jax.random.split(jax.random.key(2), 400)))
    values, counts = np.unique(picks, return_counts=True)
    assert sorted(values) == sorted(table[0]) and counts.min() > 50


def test_each_restart_trains_on_draws_from_its_own_table():
    x = jnp.arange(40, dtype=jnp.float32)[:, None] * 10.0             # row i holds 10 i
    tables = np.stack([knn_table(_points(40, seed=s), K_NBR) for s in (3, 4)])     # [R, N, k]
    idx = jnp.arange(8, 16)
    keys = jax.random.split(jax.random.key(5), 8)
    state, held = TrainState(jnp.int32(0), jnp.zeros((2, 8, 1)), jnp.zeros(2)), Tables(neighbours=tables)
    batch, local_keys = assemble_batch(held, x, idx, keys, select_batch)
    np.testing.assert_array_equal(batch["data"], x[8:16])
    assert local_keys is keys
    for r in range(2):
        np.testing.assert_array_equal(batch["neighbours"][r], x[draw(tables[r], idx, keys)])
    # a "train step" whose new parameters are the neighbours it was given
    record = lambda s, b, rng, start=0, measure=True, hyper=(): (s._replace(params=b["neighbours"]),
                                                                  {"loss": jnp.float32(0.0)})
    new, _ = make_restarts_step(record, 2)(state, batch, keys)
    np.testing.assert_array_equal(new.params, batch["neighbours"])
    assert int(new.step) == 1
    assert (np.asarray(batch["neighbours"][0]) != np.asarray(batch["neighbours"][1])).any()
    # one batch per restart (make_train_chunk's `restarts`): rows [R, B] and their own neighbours
    own_idx = jnp.stack([idx, idx + 16])
    own, own_keys = assemble_batch(held, x, own_idx, keys, select_batch)
    np.testing.assert_array_equal(own["data"], x[np.asarray(own_idx)])
    assert own_keys is keys
    for r in range(2):
        np.testing.assert_array_equal(own["neighbours"][r], x[draw(tables[r], own_idx[r], keys)])
    new, _ = make_restarts_step(record, 2, own_batches=True)(state, own, keys)
    np.testing.assert_array_equal(new.params, own["neighbours"])


# -- the term ---------------------------------------------------------------------------------

def _term(log_gamma, nbr_log_gamma):
    out = {"log_gamma": jnp.asarray(log_gamma, jnp.float32), "nbr_log_gamma": jnp.asarray(nbr_log_gamma, jnp.float32)}
    value, aux = make_neighbours({})(None, None, out, None)
    assert aux == {}
    return float(value)


def test_term_is_minus_log_probability_of_the_same_component():
    with np.errstate(divide="ignore"):
        onehot = np.log(np.eye(4)[[0, 2, 3, 1]])                       # certain, -inf elsewhere
    assert _term(onehot, onehot) == pytest.approx(0.0, abs=1e-6)
    uniform = np.full((4, 4), -np.log(4))
    assert _term(uniform, uniform) == pytest.approx(np.log(4), rel=1e-6)
    assert _term(onehot, uniform) == pytest.approx(np.log(4), rel=1e-6)   # a uniform side gives 1/K
    rng = np.random.default_rng(0)
    p, q = (rng.dirichlet(np.ones(6), size=8) for _ in range(2))
    assert _term(np.log(p), np.log(q)) == pytest.approx(-np.mean(np.log((p * q).sum(1))), rel=1e-5)


def test_objective_adds_the_neighbours_responsibilities_and_skips_the_term_without_them():
    c = _vade()
    x = load_dataset(c.data, c.seed).x[:20]
    model = make_model(c.model, x.shape[1:])
    params = model.init(jax.random.key(0))
    loss_fn = make_objective(model, {"recon": 1.0, "neighbours": 2.0}, {})
    keys = jax.random.split(jax.random.key(1), 20)
    loss, aux = loss_fn(params, {"data": x, "neighbours": x[::-1]}, keys, 0)
    p = np.exp(np.asarray(model.apply(params, x, keys)["log_gamma"], np.float64))
    q = np.exp(np.asarray(model.predict(params, x[::-1])["log_gamma"], np.float64))
    expected = -np.mean(np.log((p * q).sum(1)))
    assert float(aux["neighbours"]) == pytest.approx(expected, rel=1e-4) and expected > 0.1
    assert float(loss) == pytest.approx(float(aux["recon"]) + 2 * expected, rel=1e-5)
    plain, plain_aux = loss_fn(params, make_batch(x), keys, 0)                 # the whole-data score: no neighbours
    assert "neighbours" not in plain_aux and float(plain) == pytest.approx(float(aux["recon"]), rel=1e-6)


def test_stop_gradient_makes_the_neighbour_a_fixed_target():
    """terms.neighbours.stop_gradient: the same loss, and the gradient of a loss whose neighbour
    responsibilities come from a constant copy of the parameters; without it the neighbour's
    encoder pass adds its own, non-zero share."""
    c = _vade()
    x = load_dataset(c.data, c.seed).x[:20]
    model = make_model(c.model, x.shape[1:])
    params = model.init(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 20)
    batch = {"data": x, "neighbours": x[::-1]}
    weights = {"neighbours": 1.0}
    grad = lambda loss_fn: jax.grad(lambda p: loss_fn(p, batch, keys, 0)[0])(params)
    full_fn = make_objective(model, weights, {})
    fixed_fn = make_objective(model, weights, {"neighbours": {"stop_gradient": True}})
    assert float(full_fn(params, batch, keys, 0)[0]) == float(fixed_fn(params, batch, keys, 0)[0])
    target = model.predict(params, x[::-1])["log_gamma"]                # the neighbours' side, held fixed
    by_hand = jax.grad(lambda p: make_neighbours({})(p, x, {"log_gamma": model.apply(p, x, keys)["log_gamma"],
                                                             "nbr_log_gamma": target}, keys)[0])(params)
    full, fixed = grad(full_fn), grad(fixed_fn)
    for a, b in zip(jax.tree.leaves(fixed), jax.tree.leaves(by_hand)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    diff = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(fixed)))
    size = sum(float(jnp.sum(b ** 2)) for b in jax.tree.leaves(fixed))
    assert diff > 0.01 * size                                          # the neighbour side's share is real


@pytest.mark.parametrize("opts, message", [
    ({"stopgrad": True}, r"neighbours: unknown option\(s\) \['stopgrad'\]; known: \['stop_gradient'\]"),
    ({"stop_gradient": 1}, "neighbours: stop_gradient must be true or false, got 1"),
])
def test_bad_neighbour_options_are_named(opts, message):
    with pytest.raises(ConfigError, match=message):
        make_neighbours(opts)


# -- config errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("k, phases, error, message", [
    (K_NBR, ("pretrain", "gmm_init", "main"), ConfigError, "'main': the 'neighbours' term needs a neighbours phase"),
    (K_NBR, ("pretrain", "gmm_init", "main", "knn"), ConfigError, "needs a neighbours phase before it"),
    (K_NBR, (), ConfigError, "'main': the 'neighbours' term needs a neighbours phase"),    # the implicit phase
    (K_NBR, ("knn", "pretrain", "gmm_init", "main"), ConfigError, "no train phase without the term in between"),
    (True, None, ConfigError, "k must be a whole number >= 1, got True"),
    (0, None, ConfigError, "k must be a whole number >= 1, got 0"),
    (2.5, None, ConfigError, "k must be a whole number >= 1, got 2.5"),
    ("5", None, ConfigError, "k must be a whole number >= 1, got '5'"),
    (N, None, DataError, f"k={N} neighbours need more than k training samples; 'digits' has {N}"),
    ({"k": 3, "method": "ann"}, None, ConfigError, "unknown method 'ann'; known: \\['auto', 'exact', 'descent'\\]"),
])
def test_bad_neighbour_configs_fail_before_anything_is_written(tmp_path, k, phases, error, message):
    c = _vade(k) if phases is None else _vade(k, phases)
    with pytest.raises(error, match=message):
        train_and_evaluate(c, tmp_path / "run", **quiet)
    assert not (tmp_path / "run").exists()


def test_k_counts_only_the_training_samples():
    c = _vade(k=239)
    c.train.validation_fraction = 0.2                               # 60 of 300 held out
    data = load_dataset(c.data, c.seed)
    validate(c, data)
    c.phases.knn.k = 240
    with pytest.raises(DataError, match="k=240 neighbours .* has 240"):
        validate(c, data)


# -- training runs ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The 80-step run, uninterrupted: (config, workdir, summary)."""
    workdir = tmp_path_factory.mktemp("neighbours") / "straight"
    c = _vade()
    return c, workdir, train_and_evaluate(c, workdir, **quiet)


def test_run_carries_the_table_and_logs_the_term(straight):
    c, workdir, summary = straight
    assert summary["steps"] == 80 and np.isfinite(summary["restart_objective"]).all()
    logs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["phase"]) for r in logs] == [(20, "pretrain"), (40, "pretrain"), (60, "main"), (80, "main")]
    assert all("neighbours" not in r for r in logs[:2])
    assert all(np.isfinite(r["loss"]) and 0 < r["neighbours"] < 20 for r in logs[2:])
    # The table in the state is each restart's kNN of its embedding after pretraining (step 40).
    data = load_dataset(c.data, c.seed)
    model = make_model(c.model, data.x.shape[1:])
    pretrained, final = _checkpoint(workdir, 40), _checkpoint(workdir, 80)
    assert "neighbours" not in pretrained and final["neighbours"].shape == (2, N, K_NBR)
    for r in range(2):
        z = model.embed(jax.tree.map(lambda a: a[r], pretrained["params"]), data.x)
        np.testing.assert_array_equal(final["neighbours"][r], knn_table(z, K_NBR))
        assert agreement(final["neighbours"][r], data.y) > 0.4        # 10 classes: chance is ~0.1
    assert (final["neighbours"][0] != final["neighbours"][1]).mean() > 0.1   # restarts keep their own
    stacked, step, phase = restore_stacked(c, workdir, model)      # the table's shape from the metadata
    assert (step, phase) == (80, "main")
    assert_trees_equal(stacked, final["params"])


def test_resume_in_the_neighbours_phase_restores_the_table(straight, tmp_path):
    c, workdir, _ = straight
    half = c.copy_and_resolve_references()
    half.train.steps = 60                                          # stops 20 steps into "main"
    train_and_evaluate(half, tmp_path, **quiet)
    messages = []
    train_and_evaluate(c, tmp_path, **{**quiet, "echo": lambda m, **k: messages.append(m)})
    assert any("Resuming from checkpoint" in m and "step 60" in m and "'main'" in m for m in messages)
    assert not any("phase 'knn'" in m for m in messages)          # the table came from the checkpoint
    straight_state, resumed_state = _checkpoint(workdir, 80), _checkpoint(tmp_path, 80)
    np.testing.assert_array_equal(straight_state["neighbours"], resumed_state["neighbours"])
    assert_trees_equal(straight_state["params"], resumed_state["params"])


def test_shard_map_matches_one_device_with_neighbours(tmp_path):
    states = {}
    for mode in ("single", "shard_map"):
        c = _vade(phases=("knn", "main"))                          # the table from the (identical) init
        c.train.steps = 20
        c.parallel.mode, c.parallel.devices = mode, 2
        summary = train_and_evaluate(c, tmp_path / mode, **quiet)
        assert summary["parallel"]["devices"] == (1 if mode == "single" else 2)
        states[mode] = _checkpoint(tmp_path / mode, 20)
    np.testing.assert_array_equal(states["single"]["neighbours"], states["shard_map"]["neighbours"])
    print("largest relative difference per leaf:", _assert_close(states["single"]["params"],
                                                                 states["shard_map"]["params"], 1e-4))


@pytest.mark.parametrize("setting", ["smooth", "overcluster"])
def test_mixture_init_reads_each_restarts_table(straight, tmp_path, setting):
    """gmm_init with smooth=1 (or overcluster=20 with smooth=1): each restart's prior is
    fit_diag_gmm_smoothed (fit_diag_gmm_merged) of its embeddings with its own neighbour table,
    and a whole run with it trains (finite, and not the run without it)."""
    from gmvc.core.mixture_init import fit_diag_gmm_merged, fit_diag_gmm_smoothed
    from gmvc.training.phases import build_phases
    from gmvc.training.embedding_phases import EmbeddingPhases
    c, workdir, _ = straight
    smooth = c.copy_and_resolve_references()
    smooth.unlock()
    smooth.phases.gmm_init.smooth = 1
    if setting == "overcluster":
        smooth.phases.gmm_init.overcluster = 20
    phase = [p for p in build_phases(smooth) if p.name == "gmm_init"][0]
    data = load_dataset(c.data, c.seed)
    model = make_model(c.model, data.x.shape[1:])
    pretrained = _checkpoint(workdir, 40)["params"]
    tables = np.stack([knn_table(model.embed(jax.tree.map(lambda a: a[r], pretrained), data.x), K_NBR)
                       for r in range(2)])
    rng = jax.random.key(3)
    fitted = EmbeddingPhases(model, 2, smooth.eval.batch_size).init_prior(phase, pretrained, data.x, rng, tables)
    spec = phase.spec
    for r in range(2):
        z = model.embed(jax.tree.map(lambda a: a[r], pretrained), data.x)
        fit_args = dict(kmeans_iters=spec["kmeans_iters"], em_iters=spec["em_iters"], n_init=spec["n_init"],
                        select=spec["select"])
        if setting == "overcluster":
            expected = fit_diag_gmm_merged(jax.random.fold_in(rng, r + 1), z, jnp.asarray(tables[r]),
                                           model.num_clusters, 20, 1, **fit_args)
        else:
            expected = fit_diag_gmm_smoothed(jax.random.fold_in(rng, r + 1), z, jnp.asarray(tables[r]),
                                             model.num_clusters, 1, **fit_args)
        for name in ("logits", "means", "log_vars"):
            np.testing.assert_allclose(fitted["prior"][name][r], expected[name], rtol=1e-5, atol=1e-5)
    summary = train_and_evaluate(smooth, tmp_path, **quiet)
    assert summary["steps"] == 80 and np.isfinite(summary["restart_objective"]).all()
    ends = _checkpoint(workdir, 80)["params"]["prior"]["means"], _checkpoint(tmp_path, 80)["params"]["prior"]["means"]
    assert np.abs(ends[0] - ends[1]).max() > 1e-3
