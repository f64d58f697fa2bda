"""Which of the restarts trained side by side a run keeps: chosen without labels."""
import jax
import numpy as np

from gmvc.core.batching import make_predict
from gmvc.training.embedding_phases import partition_imbalance as sizes_imbalance

RESTART_CHOICES = ("objective", "balance")


def choose_restart(config, program, model, stacked_params, x):
    """(one restart's params, {"chosen_restart", "restart_objective", ...}): the lowest objective
    of the last train phase (`program`, a gmvc.training.program.Program) on the whole data, or with
    train.restart_choice="balance" (data with roughly balanced classes) the most even partition:
    each sample in its most likely cluster, the KL of the cluster sizes from the uniform
    (partition_imbalance). The partition, not the mean of q(c | x): a restart whose q(c | x) is
    uniform for every sample has a perfectly even soft usage and all its samples in one cluster."""
    restarts = config.train.restarts
    unstack = lambda r: jax.tree.map(lambda a: a[r], stacked_params)
    losses = [program.full_loss(unstack(r), x, program.score_step) for r in range(restarts)]
    info = {"restart_objective": [round(v, 5) for v in losses]}
    scores = losses
    if config.train.restart_choice == "balance" and model.num_clusters:
        predict = make_predict(model, config.eval.batch_size)
        scores = [partition_imbalance(predict(unstack(r), x)["log_gamma"]) for r in range(restarts)]
        info["restart_imbalance"] = [round(v, 5) for v in scores]
    best = int(np.nanargmin(scores)) if np.isfinite(scores).any() else 0
    return unstack(best), {"chosen_restart": best, **info}


def partition_imbalance(log_gamma):
    """KL of the hard partition's cluster sizes from the uniform (embedding_phases'
    partition_imbalance of the argmax counts); NaN responsibilities give NaN."""
    if not np.all(np.isfinite(log_gamma)):
        return float("nan")
    return sizes_imbalance(np.bincount(np.argmax(log_gamma, axis=1), minlength=log_gamma.shape[1]))


def describe_choice(choice, restarts):
    """One line saying which restart was kept and why."""
    r = choice["chosen_restart"]
    why = (f"the most even partition (cluster sizes' KL to uniform {choice['restart_imbalance'][r]:.4f})"
           if "restart_imbalance" in choice else
           f"the lowest objective on the data ({choice['restart_objective'][r]:.4f})")
    return f"restart {r} of {restarts} has {why}; its parameters are used"
