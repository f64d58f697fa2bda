"""Training phases from the config: each trains some steps with its own objective and trainable
parameter groups, or re-initialises the mixture prior from the embeddings. The trainer
(gmvc/trainer.py, run_phases) runs them all the same way; nothing here is specific to one method.

config.train.phases = ("pretrain", "gmm_init", "main") names entries of config.phases:
  {"kind": "train", "steps": n (-1 = the rest of train.steps; a fraction 0 < f < 1 = that share
   of train.steps, rounded), "objective": {...} (default
   config.objective), "trainable": ("net", "prior"), "lr": schedule (default optim.lr),
   "augment": {"shift": pixels, "rotate": degrees} (images only; gmvc/training/augment.py; default none),
   "batch_size": n (default train.batch_size)}
  {"kind": "init_prior", "method": "em" | "minibatch", "kmeans_iters": 50, "em_iters": 20,
   "n_init": 10, "select": "likelihood", "batches": 200, "batch_size": 128}   (minibatch: at most
   batches * batch_size embeddings; n_init fits from different seeds, the most likely one kept,
   or with select="balance" the one using its components most evenly; "smooth": n > 0 fits
   embeddings averaged n times with their nearest neighbours, which needs a neighbours phase
   right before it, with no train phase in between: mixture_init.fit_diag_gmm_smoothed;
   "keep_current": True makes the prior the model has (fitted by an earlier init_prior phase or
   trained by an earlier train phase) one more candidate: the new fit replaces it only if it
   scores better on the same embeddings, by the partition's balance for select="balance" (the
   n_init fits themselves are chosen by their soft usage) or by likelihood:
   embedding_phases.keep_or_replace; "balanced": True makes each EM step's responsibilities use every
   component equally on average: mixture_init.balanced_logits; "balanced_above": t fits that
   way only where the current prior's partition of the embeddings is uneven, its cluster sizes'
   KL from the uniform above t, and as usual otherwise: EmbeddingPhases.init_prior; "overcluster": m
   > K fits m components and merges them into K along the neighbour graph, which needs a
   neighbours phase right before it as smooth does: mixture_init.fit_diag_gmm_merged ("linkage":
   "average" | "modularity" | "both", how components merge; select="modularity" keeps the fit
   whose merged partition has the highest modularity on the graph); with it,
   "pull": m replaces the neighbour table by the m anchors of each sample's merged group (its
   members nearest the group's mean), for the `neighbours` term of the train phases after it:
   EmbeddingPhases.pull_table; "features": n compares the merged partition with a full GMM's
   (n fits) on the data's features and keeps the one that cuts fewer links of the features'
   3-NN graph: EmbeddingPhases.choose_features)
  {"kind": "neighbours", "k": 10}   (each sample's k nearest neighbours in the embedding, for
   the `neighbours` term of the train phases after it; gmvc/core/neighbours.py). "method":
   "exact" (every pair), "descent" (approximate, time and memory linear in N) or "auto" (the
   default: exact up to 200,000 samples, descent above)
An empty train.phases is one train phase of train.steps with config.objective.
"""
import json
from typing import NamedTuple

from gmvc.training.augment import parse_augment
from gmvc.errors import ConfigError
from gmvc.core.mixture_init import LINKAGES, SELECTIONS

TRAIN_KEYS = {"kind", "steps", "objective", "trainable", "lr", "augment", "batch_size"}
INIT_KEYS = {"kind", "method", "kmeans_iters", "em_iters", "n_init", "batches", "batch_size", "select", "smooth",
             "keep_current", "balanced", "balanced_above", "overcluster", "pull", "linkage", "features"}
INIT_DEFAULTS = {"method": "em", "select": "likelihood", "kmeans_iters": 50, "em_iters": 20, "n_init": 10, "batches": 200,
                 "batch_size": 128, "smooth": 0, "keep_current": False, "balanced": False,
                 "balanced_above": None, "overcluster": 0, "pull": 0, "linkage": "average",
                 "features": 0}
NEIGHBOUR_KEYS = {"kind", "k", "method"}
NEIGHBOUR_METHODS = ("auto", "exact", "descent")
GROUPS = ("net", "prior")


class Phase(NamedTuple):
    name: str
    kind: str        # "train" | "init_prior" | "neighbours"
    start: int       # first global step (init_prior phases take no steps: start == end)
    end: int
    spec: dict


def build_phases(config):
    total = config.train.steps
    if not config.train.phases:
        spec = {"kind": "train", "objective": dict(config.objective), "trainable": GROUPS,
                "batch_size": config.train.batch_size}
        if uses_neighbours(spec):
            raise _no_table_error("main")
        if uses_groups(spec):
            raise ConfigError("the 'pin' term needs an init_prior phase before the phase that uses it (train.phases)")
        return [Phase("main", "train", 0, total, spec)]
    specs = []
    for name in config.train.phases:
        if name not in config.phases:
            raise ConfigError(f"train.phases names {name!r}, which is not in config.phases ({sorted(config.phases)})")
        specs.append((name, _check_spec(name, config.phases[name].to_dict(), config)))
    fixed = sum(s["steps"] for _, s in specs if s["kind"] == "train" and s["steps"] >= 0)
    rest = [n for n, s in specs if s["kind"] == "train" and s["steps"] < 0]
    if len(rest) > 1:
        raise ConfigError(f"only one phase may take the rest of train.steps (steps=-1); these do: {rest}")
    if fixed > total or (rest and fixed == total):
        raise ConfigError(f"train.steps={total} leaves no steps for the phases {rest or ''}: the phases with "
                          f"fixed steps take {fixed}")
    phases, step, have_table, fresh_table, prior_trained, prior_fitted = [], 0, False, False, False, False
    for name, spec in specs:
        if spec["kind"] == "neighbours":
            have_table = fresh_table = True
        elif spec["kind"] == "init_prior" and fit_reads_table(spec) and not fresh_table:
            what = f"smooth={spec['smooth']}" if spec["smooth"] else f"overcluster={spec['overcluster']}"
            raise ConfigError(f"phase {name!r}: {what} needs a neighbours phase before it in "
                              f"train.phases, with no train phase in between (the table must be of the "
                              f"embeddings it fits)")
        if spec["kind"] == "init_prior" and spec["keep_current"] and not prior_trained:
            raise ConfigError(f"phase {name!r}: keep_current needs a prior fitted or trained before it (an "
                              f"init_prior phase, or a train phase with trainable 'prior'); before one, the "
                              f"prior is the untrained initial one, which no fit should have to beat")
        if spec["kind"] == "init_prior" and spec["balanced_above"] is not None and not prior_trained:
            raise ConfigError(f"phase {name!r}: balanced_above needs a prior fitted or trained before it, whose "
                              f"partition it measures")
        if spec["kind"] == "init_prior":
            prior_trained = prior_fitted = True        # a fitted prior is a current prior worth keeping
            if spec["pull"]:
                have_table, fresh_table = True, False      # a table of group members, not of nearest neighbours
        elif spec["kind"] == "train":
            prior_trained = prior_trained or trains_prior(spec, config)
            fresh_table = False
            if uses_neighbours(spec) and not have_table:
                raise _no_table_error(name)
            if uses_groups(spec) and not prior_fitted:
                raise ConfigError(f"phase {name!r}: the 'pin' term needs an init_prior phase before it in "
                                  f"train.phases (it pins each sample to its group in that fit's partition)")
            # a train phase without the term does not carry the table (nor checkpoint it)
            have_table = have_table and uses_neighbours(spec)
        steps = (total - fixed if spec["steps"] < 0 else spec["steps"]) if spec["kind"] == "train" else 0
        phases.append(Phase(name, spec["kind"], step, step + steps, spec))
        step += steps
    return phases


def _no_table_error(name):
    return ConfigError(f"phase {name!r}: the 'neighbours' term needs a neighbours phase before it in "
                       f"train.phases, with no train phase without the term in between (e.g. "
                       f"{{'kind': 'neighbours', 'k': 10}})")


def _check_spec(name, spec, config):
    kind = spec.get("kind")
    allowed = {"train": TRAIN_KEYS, "init_prior": INIT_KEYS, "neighbours": NEIGHBOUR_KEYS}.get(kind)
    if allowed is None:
        raise ConfigError(f"phase {name!r}: unknown kind {kind!r}; known kinds: ['init_prior', 'neighbours', 'train']")
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"phase {name!r}: unknown key(s) {unknown}; a {kind} phase takes {sorted(allowed)}")
    if kind == "neighbours":
        spec = {"k": 10, "method": "auto", **spec}
        if not isinstance(spec["k"], int) or isinstance(spec["k"], bool) or spec["k"] < 1:
            raise ConfigError(f"phase {name!r}: k must be a whole number >= 1, got {spec['k']!r}")
        if spec["method"] not in NEIGHBOUR_METHODS:
            raise ConfigError(f"phase {name!r}: unknown method {spec['method']!r}; known: {list(NEIGHBOUR_METHODS)}")
        return spec
    if kind == "init_prior":
        spec = {**INIT_DEFAULTS, **spec}
        if spec["method"] not in ("em", "minibatch"):
            raise ConfigError(f"phase {name!r}: unknown method {spec['method']!r}; known: ['em', 'minibatch']")
        if spec["select"] not in SELECTIONS:
            raise ConfigError(f"phase {name!r}: unknown select {spec['select']!r}; known: {list(SELECTIONS)}")
        if spec["select"] == "modularity" and not spec["overcluster"]:
            raise ConfigError(f"phase {name!r}: select 'modularity' scores a merged partition of the neighbour "
                              f"graph: it needs overcluster")
        if spec["linkage"] not in LINKAGES:
            raise ConfigError(f"phase {name!r}: unknown linkage {spec['linkage']!r}; known: {list(LINKAGES)}")
        smooth = spec["smooth"]
        if not isinstance(smooth, int) or isinstance(smooth, bool) or smooth < 0:
            raise ConfigError(f"phase {name!r}: smooth must be a whole number >= 0, got {smooth!r}")
        for flag in ("keep_current", "balanced"):
            if not isinstance(spec[flag], bool):
                raise ConfigError(f"phase {name!r}: {flag} must be true or false, got {spec[flag]!r}")
        above = spec["balanced_above"]
        if above is not None and (isinstance(above, bool) or not isinstance(above, (int, float)) or not above >= 0):
            raise ConfigError(f"phase {name!r}: balanced_above must be a number >= 0 (an imbalance, the KL of the "
                              f"cluster sizes from the uniform) or None, got {above!r}")
        if above is not None and spec["balanced"]:
            raise ConfigError(f"phase {name!r}: balanced=True fits balanced always; balanced_above={above!r} only "
                              f"where the current partition is uneven: set one of them")
        over, k = spec["overcluster"], config.model.num_clusters
        if not isinstance(over, int) or isinstance(over, bool) or over < 0 or 0 < over <= k:
            raise ConfigError(f"phase {name!r}: overcluster must be 0 (off) or a whole number of components above "
                              f"model.num_clusters={k}, got {over!r}")
        features = spec["features"]
        if not isinstance(features, int) or isinstance(features, bool) or features < 0 or (features and not over):
            raise ConfigError(f"phase {name!r}: features must be 0 (off) or a whole number of GMM fits on the "
                              f"features, and needs overcluster (the merged partition it is compared with); got "
                              f"features={features!r}")
        pull = spec["pull"]
        if not isinstance(pull, int) or isinstance(pull, bool) or pull < 0 or (pull and not over):
            raise ConfigError(f"phase {name!r}: pull must be 0 (off) or a whole number of group members, and needs "
                              f"overcluster (the merged partition it draws from); got pull={pull!r}")
        if pull and (spec["keep_current"] or spec["balanced_above"] is not None):
            raise ConfigError(f"phase {name!r}: pull draws from this phase's own fit: it cannot be combined with "
                              f"keep_current or balanced_above")
        for what, value in (("smooth", smooth), ("overcluster", over)):
            if value and spec["method"] != "em":
                raise ConfigError(f"phase {name!r}: {what} needs method 'em' (all the embeddings, as the "
                                  f"neighbour table has them); got {spec['method']!r}")
        return spec
    spec = {"objective": dict(config.objective), "trainable": GROUPS, **spec}
    spec["trainable"] = tuple(spec["trainable"])
    spec["augment"] = parse_augment(spec.get("augment"), f"phase {name!r}")
    bad = sorted(set(spec["trainable"]) - set(GROUPS))
    if bad:
        raise ConfigError(f"phase {name!r}: unknown parameter group(s) {bad}; groups are {list(GROUPS)}")
    if "steps" not in spec:
        raise ConfigError(f"phase {name!r}: a train phase needs 'steps' (-1 for the rest of train.steps)")
    steps = spec["steps"]
    if isinstance(steps, float) and 0 < steps < 1:
        spec["steps"] = steps = int(round(steps * config.train.steps))      # a share of train.steps
    elif isinstance(steps, float) and steps == round(steps):
        spec["steps"] = steps = int(steps)                                  # 60.0 (a typed override of a share)
    elif isinstance(steps, bool) or not isinstance(steps, int) or steps < -1:
        raise ConfigError(f"phase {name!r}: steps must be a whole number >= 0, -1 (the rest of train.steps) or a "
                          f"fraction of train.steps in (0, 1); got {steps!r}")
    size = spec.setdefault("batch_size", config.train.batch_size)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"phase {name!r}: batch_size must be a whole number >= 1, got {size!r}")
    return spec


def trains_prior(spec, config):
    """Whether a train phase moves the prior: "prior" is trainable, the phase has steps, and the
    prior's learning rate is not 0 (optim.prior_lr, or with prior_lr < 0 the net's rate)."""
    if "prior" not in spec["trainable"] or spec["steps"] == 0:
        return False
    rate = config.optim.prior_lr
    if isinstance(rate, (int, float)) and rate < 0:
        rate = spec.get("lr", config.optim.lr)
    return not (isinstance(rate, (int, float)) and rate == 0)


def fit_reads_table(spec):
    """Whether an init_prior phase's fit reads the neighbour table (smooth, overcluster)."""
    return bool(spec["smooth"] or spec["overcluster"])


def uses_neighbours(spec):
    """Whether a train phase's objective reads the neighbour table (its state then carries it)."""
    return spec["kind"] == "train" and "neighbours" in spec["objective"]


def uses_groups(spec):
    """Whether a phase is a train phase with the `pin` term (it reads the groups of the last
    init_prior phase's partition)."""
    return spec["kind"] == "train" and "pin" in spec["objective"]


def neighbour_k(phases, index):
    """The width of the table the phases before phases[index] leave: k of the last neighbours
    phase, or m of a later init_prior phase with "pull": m; 0 for none."""
    ks = [p.spec["k"] if p.kind == "neighbours" else p.spec["pull"] for p in phases[:index]
          if p.kind == "neighbours" or (p.kind == "init_prior" and p.spec["pull"])]
    return ks[-1] if ks else 0


def resume_index(phases, step):
    """The train phase a checkpoint at `step` belongs to: the one whose steps end it.
    A checkpoint at a phase boundary is written before any init_prior phase that follows."""
    for i, p in enumerate(phases):
        if p.kind == "train" and p.start < step <= p.end:
            return i
    raise ConfigError(f"a checkpoint at step {step} is past the phases of this config (train.steps="
                      f"{phases[-1].end}); raise train.steps or use another --workdir")


def program_key(spec):
    """What a train phase's compiled program depends on: its spec without the step count (the
    phase's start and end are traced), so phases that differ only in length share one program."""
    return json.dumps({k: v for k, v in spec.items() if k != "steps"}, sort_keys=True, default=repr)
