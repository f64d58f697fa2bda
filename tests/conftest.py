"""Test setup: 8 fake CPU devices (before jax is imported), quiet logs, and small-run helpers."""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One compilation cache for the session and the CLI runs it starts: many tests compile the same
# small programs again (scikit-learn's checks fit one tiny estimator many times).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"gmvc_test_jax_cache_{os.getuid()}_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import json  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300, **popen):
    """Run `python -m gmvc.main` from the project root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "gmvc.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **popen)


def config_flags(config_file, overrides):
    """The command line of `config_file` (in configs/) with {"section.key": value} overrides."""
    return [f"--config=configs/{config_file}", *(f"--config.{k}={v}" for k, v in overrides.items())]


def load_config(config_file, overrides=None):
    """The same config in this process (its recipe in gmvc.recipes, unlocked), with the same overrides."""
    from gmvc import recipes
    c = recipes.get(pathlib.Path(config_file).stem)()
    c.unlock()
    for dotted, value in (overrides or {}).items():
        *sections, key = dotted.split(".")
        target = c
        for section in sections:
            target = target[section]
        target[key] = value
    return c


def read_results(workdir):
    return json.loads((pathlib.Path(workdir) / "results.json").read_text())


@pytest.fixture
def spiral_config():
    """The default spiral config, shrunk for fast tests (one restart, few steps)."""
    return load_config("gmvae_spiral.py", {"train.restarts": 1, "train.steps": 200, "train.log_every": 50,
                                           "train.checkpoint_every": 100, "data.num_points": 1000})


@pytest.fixture(scope="module")
def fast_compiles_module():
    """XLA's backend optimisations off while a module runs, for modules whose programs are tiny and
    each run a few times, so compile time is the whole cost (same semantics, as in test_terms.py);
    a module asks for it with `pytestmark = pytest.mark.usefixtures("fast_compiles_module")`."""
    import jax
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def tfds_mock():
    """tfds.testing.mock_data(num_examples=n) as a context factory: random images, no download."""
    tfds = pytest.importorskip("tensorflow_datasets")

    def mock(num_examples):
        return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)
    return mock


def pytest_sessionfinish(session, exitstatus):
    """Free JAX's compiled programs and collect garbage before the session reports: a worker of
    `pytest -n` (pytest-xdist) then exits at once after its last report, instead of spending its
    shutdown in JAX's garbage-collection callback (where the controller's stop can land as a
    KeyboardInterrupt)."""
    import gc
    import jax
    jax.clear_caches()
    gc.collect()
