"""The recipes of gmvc/recipes/: every config in configs/ keeps the values it had when the configs
were written out by hand (tests/data/config_values.json, which the published numbers depend on),
the estimators build the configs they built before (tests/data/estimator_config_values.json),
and their default configs come from the package, not from a file of the working directory."""
import builtins
import io
import json
import pathlib
import runpy
import subprocess
import sys

import numpy as np
import pytest

import gmvc
from gmvc import recipes
from gmvc.errors import ConfigError
from gmvc.estimator import resolve_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(__file__).resolve().parent / "data"
CONFIG_VALUES = json.loads((DATA / "config_values.json").read_text())
ESTIMATOR_VALUES = json.loads((DATA / "estimator_config_values.json").read_text())
CONFIG_FILES = sorted(p.stem for p in (ROOT / "configs").glob("*.py"))


def assert_same(config, expected):
    """Equal values, and equal JSON (which also tells 1 from 1.0); tuples stand as lists."""
    got = json.loads(json.dumps(config.to_dict()))
    assert got == expected
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_every_config_file_has_its_values_and_its_recipe():
    assert CONFIG_FILES == sorted(CONFIG_VALUES)
    assert set(CONFIG_FILES) <= set(recipes.RECIPES)
    assert set(recipes.RECIPES) - set(CONFIG_FILES) == {"vade", "gmvae"}      # cluster is configs/cluster.py too


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_file_keeps_its_values(name):
    config = runpy.run_path(str(ROOT / "configs" / f"{name}.py"))["get_config"]()
    assert_same(config, CONFIG_VALUES[name])
    assert config.name == name


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_recipe_gives_the_config_and_is_locked(name):
    c = recipes.get(name)()
    assert_same(c, CONFIG_VALUES[name])
    assert_same(recipes.get(name)(), CONFIG_VALUES[name])      # a second call: nothing shared was changed
    with pytest.raises(AttributeError):
        c.train.stepz = 5                                      # locked: a misspelt key is an error


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="vade_digits"):
        recipes.get("vade_digit")
    with pytest.raises(ConfigError, match="neither a recipe"):
        resolve_config("vade_digit")


def test_loading_a_config_imports_no_jax():
    code = ("import runpy, sys; runpy.run_path('configs/vade_mnist5k.py')['get_config'](); "
            "from gmvc import recipes; recipes.gmvae_spiral(); recipes.vade(); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------- the estimators

X01 = np.random.RandomState(0).rand(20, 4).astype(np.float32)                  # in [0, 1]: Bernoulli
XG = (np.random.RandomState(0).randn(20, 4) * 3).astype(np.float32)            # not: Gaussian
ESTIMATORS = {
    "VaDE()": lambda: gmvc.VaDE(),
    "VaDE(c_marginal=0)": lambda: gmvc.VaDE(c_marginal=0.0),
    "VaDE(custom)": lambda: gmvc.VaDE(n_clusters=3, latent_dim=4, hidden_sizes=(32, 16), likelihood="gaussian",
                                      steps=300, pretrain_steps=100, batch_size=16, learning_rate=1e-2, restarts=2,
                                      random_state=5),
    "GMVAE()": lambda: gmvc.GMVAE(),
    "GMVAE(custom)": lambda: gmvc.GMVAE(n_clusters=4, latent_dim=3, w_dim=5, hidden_sizes=(64, 32),
                                        likelihood="gaussian", cv_weight=1.0, steps=1000, pretrain_steps=300,
                                        batch_size=8, learning_rate=1e-2, c_marginal=0.3, restarts=2),
    "GMVAE(hidden=())": lambda: gmvc.GMVAE(hidden_sizes=()),
}


@pytest.mark.parametrize("case", sorted(ESTIMATORS))
def test_estimator_builds_the_config_it_built_before(case):
    est = ESTIMATORS[case]()
    assert_same(est._make_config(X01), ESTIMATOR_VALUES[f"{case}:x01"])
    assert_same(est._make_config(XG), ESTIMATOR_VALUES[f"{case}:xg"])


def test_estimator_defaults_are_the_recipes():
    assert_same(gmvc.VaDE()._base_config(), json.loads(json.dumps(recipes.cluster().to_dict())))
    assert_same(gmvc.GMVAE()._base_config(), json.loads(json.dumps(recipes.cluster_gmvae().to_dict())))
    assert gmvc.GMVCEstimator().config is None
    assert_same(gmvc.GMVCEstimator()._base_config(), json.loads(json.dumps(recipes.cluster().to_dict())))
    assert_same(gmvc.GMVCEstimator()._make_config(X01), ESTIMATOR_VALUES["VaDE():x01"])


def test_pretraining_is_a_share_of_the_steps():
    """pretrain_steps None is 3/8 of the steps (a short run keeps its shape); one that leaves no
    steps to cluster in is named."""
    for make in (gmvc.VaDE, gmvc.GMVAE):
        c = make(steps=200)._base_config()
        assert c.phases.pretrain.steps == 75 / 200 and c.phases.main.steps == 62.5 / 200
    with pytest.raises(ConfigError, match="pretrain_steps=1500 leaves no steps to cluster in"):
        gmvc.VaDE(steps=1000, pretrain_steps=1500)._base_config()


def test_general_estimator_takes_a_recipe_name_or_a_config_file():
    # Before recipes, GMVCEstimator() defaulted to the file configs/vade_digits.py: its config then
    # is the one of the recipe named so, and of that file.
    before = ESTIMATOR_VALUES["GMVCEstimator()"]
    assert_same(gmvc.GMVCEstimator(config="vade_digits")._make_config(X01), before)
    assert_same(gmvc.GMVCEstimator(config=str(ROOT / "configs" / "vade_digits.py"))._make_config(X01), before)
    assert_same(gmvc.GMVCEstimator(config=recipes.vade_digits())._make_config(X01), before)
    c = gmvc.GMVCEstimator(config="gmvae_spiral", overrides={"train.steps": 500})._make_config(X01)
    assert c.model.name == "gmvae" and c.train.steps == 500 and c.data.source == "array"


@pytest.mark.parametrize("make", [gmvc.VaDE, gmvc.GMVAE, gmvc.GMVCEstimator], ids=lambda m: m.__name__)
def test_default_config_reads_no_file_outside_the_repository(make, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                    # where no configs/ folder is

    def no_file(*args, **kwargs):
        raise AssertionError(f"a file was read: {args}")
    for target, name in ((builtins, "open"), (io, "open"), (pathlib.Path, "open"), (runpy, "run_path")):
        monkeypatch.setattr(target, name, no_file)
    c = make()._make_config(X01)
    assert c.model.name in ("vade", "gmvae") and c.data.source == "array" and c.train.batch_size == 20
