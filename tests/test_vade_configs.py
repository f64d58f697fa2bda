"""The VaDE / S3VDC experiment configs: the full-MNIST ones run end to end on tensorflow-datasets
mock data (this machine cannot download MNIST), with their reference settings intact."""
import pytest

from conftest import load_config, read_results




def _shrink(c, steps):
    """Keep every phase and setting, but train a few steps (phase lengths scaled down)."""
    first = c.train.phases[0]
    c.phases[first].steps = steps // 2
    for name in c.train.phases:
        if c.phases[name].kind == "init_prior" and c.phases[name].method == "minibatch":
            c.phases[name].batches = 2
    c.train.steps = steps
    c.train.log_every = steps // 4
    c.train.checkpoint_every = steps // 2
    c.eval.batch_size = 32
    c.eval.samples_per_cluster = 2
    return c


def test_reference_settings():
    vade, s3vdc = load_config("vade_mnist.py"), load_config("s3vdc_mnist.py")
    assert vade.data.source == s3vdc.data.source == "tfds:mnist"
    assert vade.model.hidden_sizes == (500, 500, 2000) and vade.model.z_dim == 10 and vade.model.num_clusters == 10
    assert vade.train.batch_size == 100 and vade.optim.eps == 1e-4
    assert vade.optim.lr == 0.002 and vade.optim.lr_schedule.decay_rate == 0.9
    assert vade.optim.lr_schedule.floor == 0.0002 and vade.optim.lr_schedule.decay_steps == 6000   # 10 epochs
    assert s3vdc.model.net == "conv" and s3vdc.model.conv_filters == (32, 64, 128)
    assert s3vdc.model.conv_kernels == (5, 5, 3) and s3vdc.model.activation == "elu"
    assert s3vdc.model.z_dim == 8 and s3vdc.train.batch_size == 128
    assert s3vdc.model.gamma_transform == "inverse_minmax"
    assert s3vdc.phases.gamma_training.objective.kl_z == 5e-4
    assert s3vdc.phases.gmm_init.method == "minibatch" and s3vdc.phases.gmm_init.batches == 200
    assert s3vdc.objective.vade_kl.kind == "periodic_cubic" and s3vdc.objective.vade_kl.start == 5e-4
    assert s3vdc.optim.lr == 0.002 and s3vdc.optim.lr_schedule.decay_rate == 0.96
    assert s3vdc.optim.lr_schedule.decay_steps == 1000


@pytest.mark.parametrize("name", ["vade_mnist.py", "s3vdc_mnist.py"])
def test_full_mnist_config_runs_on_mock_data(tfds_mock, tmp_path, name):
    from gmvc.trainer import train_and_evaluate
    c = _shrink(load_config(name), 8)
    with tfds_mock(256):
        summary = train_and_evaluate(c, tmp_path, echo=lambda *a, **k: None)
    assert summary["steps"] == 8 and summary["num_samples"] == 256
    assert sum(summary["cluster_sizes"]) == 256 and len(summary["cluster_sizes"]) == 10
    assert 0.0 <= summary["acc"] <= 1.0
    assert read_results(tmp_path)["compiles"] == 2        # one compiled chunk per train phase
    assert (tmp_path / "predictions.csv").exists()


def test_short_vade_digits_run_beats_kmeans(tmp_path):
    """The vade_digits recipe with shortened phases still clusters the digits better than
    k-means on the raw pixels (Hungarian accuracy 0.79 with 10 inits, measured in
    benchmarks/quality.py), and leaves every cluster in use."""
    from gmvc.trainer import train_and_evaluate
    c = load_config("vade_digits.py")
    c.phases.pretrain.steps = 800
    c.train.restarts = 1                                  # one of the config's three: a third of the time
    c.train.steps = 1200
    c.train.log_every = 200
    c.train.checkpoint_every = 600
    summary = train_and_evaluate(c, tmp_path, echo=lambda *a, **k: None)
    assert summary["acc"] > 0.80, summary["acc"]
    assert min(summary["cluster_sizes"]) > 50, summary["cluster_sizes"]
    assert summary["compiles"] == 2


def test_learning_rate_schedules_per_group():
    """optim.lr_schedule shapes the net's rate, optim.prior_lr_schedule the prior's; first Adam
    steps have magnitude lr(step), so the updates show each group's schedule."""
    import jax
    import jax.numpy as jnp
    from gmvc.config import base_config
    from gmvc.training.state import make_optimizer
    c = base_config()
    c.optim.lr, c.optim.prior_lr = 0.01, 0.1
    c.optim.lr_schedule = {"kind": "exponential_decay", "decay_rate": 0.5, "decay_steps": 1}
    c.optim.prior_lr_schedule = {"kind": "linear_warmup", "warmup_steps": 2, "start": 0.0}
    tx = make_optimizer(c.optim)
    params = {"net": {"w": jnp.ones(3)}, "prior": {"m": jnp.ones(3)}}
    grads = jax.tree.map(jnp.ones_like, params)
    state, seen = tx.init(params), []
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        seen.append((float(-updates["net"]["w"][0]), float(-updates["prior"]["m"][0])))
    net, prior = zip(*seen)
    assert net == pytest.approx([0.01, 0.005, 0.0025], rel=1e-4)
    assert prior == pytest.approx([0.0, 0.05, 0.1], rel=1e-4, abs=1e-7)


def test_vade_mnist5k_phases_build():
    """The default mnist5k recipe: its phases build, the mixture init smooths with the table of
    the neighbours phase just before it, and the neighbour side of the term is a fixed target."""
    from gmvc.training.phases import build_phases
    c = load_config("vade_mnist5k.py")
    phases = build_phases(c)
    assert [(p.name, p.kind) for p in phases] == [
        ("pretrain", "train"), ("knn", "neighbours"), ("gmm_init", "init_prior"), ("main", "train"),
        ("knn2", "neighbours"), ("gmm_init2", "init_prior"), ("main2", "train"), ("knn3", "neighbours"),
        ("gmm_init3", "init_prior"), ("main3", "train")]
    assert [p.end - p.start for p in phases if p.kind == "train"] == [1500, 1250, 625, 625]
    # every neighbours table holds each image's 3 nearest neighbours (README: 3, 5 and 10 over 50 seeds)
    assert [phases[i].spec["k"] for i in (1, 4, 7)] == [3, 3, 3]
    # every fit over-clustered on the smoothed codes, merged into 10 along the neighbour graph:
    # 80 components for the first, 30 for the refits
    assert [phases[i].spec["overcluster"] for i in (2, 5, 8)] == [80, 30, 30]
    assert phases[2].spec["smooth"] == 1 and phases[2].spec["select"] == "balance"
    # the refit keeps main's prior unless it partitions more evenly (gmm_init2 and gmm_init3 share
    # one compiled fit: tests/test_embedding_phases.py, test_init_prior_phases_with_one_fit_share_its_program)
    assert phases[5].spec["keep_current"] is True and phases[2].spec["keep_current"] is False
    assert c.terms.neighbours.stop_gradient is True
