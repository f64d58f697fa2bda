"""What the estimators accept: their constructor's arguments (checked at fit, as scikit-learn
does, and at load) and their data X, each refused in one line that names the argument."""
import math
import numbers
import os

import ml_collections
import numpy as np
import scipy.sparse

from gmvc.data import nonfinite_rows
from gmvc.errors import ConfigError


class ArgumentError(ConfigError, TypeError):
    """An estimator's argument of the wrong type or value (a ValueError and a TypeError, as
    scikit-learn's own InvalidParameterError)."""


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def int_at_least(low):
    def check(name, value):
        if not is_int(value) or value < low:
            raise ArgumentError(f"{name} must be {'a positive int' if low == 1 else f'an int >= {low}'}, "
                                f"got {value!r}")
    return check


def _number_above(low, inclusive):
    def check(name, value):
        if (not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)) or not math.isfinite(value)
                or value < low or (value == low and not inclusive)):
            raise ArgumentError(f"{name} must be a number {'>=' if inclusive else '>'} {low}, got {value!r}")
    return check


def _one_of(*types, text):
    def check(name, value):
        if not isinstance(value, types):
            raise ArgumentError(f"{name} must be {text}, got {value!r}")
    return check


def _optional(check):
    return lambda name, value: value is None or check(name, value)


def _hidden_sizes(name, value):
    if not isinstance(value, (tuple, list)) or not all(is_int(h) and h > 0 for h in value):
        raise ArgumentError(f"{name} must be a tuple of positive ints (the layers' widths), got {value!r}")


def _auto_or(check, auto_means):
    """`check`, or the value "auto" (`auto_means` in the message of any other value)."""
    def either(name, value):
        if isinstance(value, str) and value == "auto":
            return
        try:
            check(name, value)
        except ArgumentError as e:
            raise ArgumentError(str(e).replace(f"{name} must be ", f"{name} must be 'auto' ({auto_means}) or ", 1)) \
                from None
    return either


_hidden_sizes_or_auto = _auto_or(_hidden_sizes, "widths that follow the data's size")


def _likelihood(name, value):
    if value not in ("auto", "bernoulli", "gaussian"):
        raise ArgumentError(f"{name} must be 'auto', 'bernoulli' or 'gaussian', got {value!r}")


def _random_state(name, value):
    if not (value is None or isinstance(value, np.random.RandomState) or (is_int(value) and 0 <= value < 2**32)):
        raise ArgumentError(f"{name} must be None, an int in [0, 2**32) or a numpy RandomState, got {value!r}")


def _overrides(name, value):
    if value is not None and not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
        raise ArgumentError(f"{name} must be None or a dict of config keys ({{'train.steps': 500}}), got {value!r}")


def refuse_complex(X):
    """Complex values in one line (numpy would cast them to their real parts, with a warning)."""
    dtype = getattr(X, "dtype", None)
    if not isinstance(dtype, np.dtype) and not scipy.sparse.issparse(X):
        try:
            dtype = np.asarray(X).dtype
        except (TypeError, ValueError):
            return                                            # validate_data says what is wrong
    if isinstance(dtype, np.dtype) and dtype.kind == "c":
        raise ValueError(f"X holds complex values ({dtype}): Complex data not supported; pass real features, "
                         f"e.g. np.abs(X), or X.real and X.imag side by side")


def check_finite(x):
    """One line naming the first samples (rows) of x that hold NaN or inf."""
    _, bad = nonfinite_rows(x)
    if len(bad):
        shown = ", ".join(map(str, bad[:5].tolist())) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"X holds NaN or inf in {len(bad)} of its {len(x)} samples (rows {shown}); drop or impute "
                         f"them first (e.g. sklearn.impute.SimpleImputer in a pipeline)")


COMMON = {"random_state": _random_state,
          "workdir": _optional(_one_of(str, os.PathLike, text="None or a folder's path")),
          "verbose": _one_of(bool, np.bool_, numbers.Integral, text="True or False"),
          "progress": _one_of(bool, np.bool_, numbers.Integral, text="True or False")}
ESTIMATOR = {"config": _optional(_one_of(str, os.PathLike, dict, ml_collections.ConfigDict,
                                         text="None, a recipe's name, a dict, a ConfigDict or a config file's path")),
             "overrides": _overrides, **COMMON}
VADE = {"n_clusters": _auto_or(int_at_least(1), "the mixture finds K while it trains"), "latent_dim": int_at_least(1), "hidden_sizes": _hidden_sizes_or_auto,
        "likelihood": _likelihood, "steps": _auto_or(int_at_least(1), "steps that follow the data's size"),
        "pretrain_steps": _optional(int_at_least(0)),
        "batch_size": int_at_least(1), "learning_rate": _number_above(0, inclusive=False),
        "c_marginal": _number_above(0, inclusive=True), "restarts": int_at_least(1), **COMMON}
def _clusters_not_auto(name, value):
    if isinstance(value, str) and value == "auto":
        raise ArgumentError(f"{name}='auto' is gmvc.VaDE's (its mixture finds K while it trains); GMVAE needs a "
                            f"positive int")
    int_at_least(1)(name, value)


GMVAE = {**VADE, "n_clusters": _clusters_not_auto, "hidden_sizes": _hidden_sizes, "steps": int_at_least(1), "w_dim": int_at_least(1),
         "cv_weight": _number_above(0, inclusive=True)}


def check_arguments(est, table):
    """The estimator's constructor arguments, each by its check in `table`."""
    for name, check in table.items():
        check(name, getattr(est, name))
