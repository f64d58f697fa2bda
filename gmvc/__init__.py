"""gmvc: deep generative clustering in JAX. The estimators (scikit-learn conventions) are
importable from here; the command line is `python -m gmvc.main`."""


def __getattr__(name):
    # Lazy: `python -m gmvc.main --help` and the config files do not import scikit-learn or JAX.
    if name in ("GMVCEstimator", "VaDE", "GMVAE", "load"):
        from gmvc import estimator
        return getattr(estimator, name)
    raise AttributeError(f"module 'gmvc' has no attribute {name!r}")
