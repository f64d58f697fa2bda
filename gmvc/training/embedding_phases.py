"""The phases that read the embedding of the data instead of taking steps: init_prior refits
each restart's mixture prior to its embeddings (k-means++, EM; optionally smoothed or merged
along the neighbour graph), neighbours finds each sample's nearest neighbours for the
`neighbours` term. Labels are never read (a neighbours phase may report their agreement)."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from gmvc.core import mixture
from gmvc.core.batching import make_embed, make_predict
from gmvc.core.mixture_init import (cluster_counts, fit_diag_gmm, fit_diag_gmm_merged, fit_diag_gmm_smoothed,
                                    mean_log_likelihood, moments, partition_modularity)
from gmvc.core.neighbours import DESCENT_ABOVE, agreement, knn_descent, knn_table
from gmvc.training.feature_partition import (FEATURE_MARGIN, FEATURE_NEIGHBOURS, FEATURE_ROWS, cut_share,
                                             full_gmm_partition, reduce_features)
from gmvc.training.phases import program_key, uses_groups


class EmbeddingPhases:
    """The init_prior and neighbours phases of a run, with their compiled programs: one embedding
    (one program for any N, in batches of `batch_size`), and one fit per fit_key (phases that
    fit alike share it)."""

    def __init__(self, model, restarts, batch_size, phases=(), say=None):
        self.model, self.restarts = model, restarts
        self.say = say or _quiet        # reports each choice, one line
        self.embed = make_embed(model, batch_size)
        self.predict = None if model.stored_prior else make_predict(model, batch_size)   # the model's own partition
        self.pins = any(uses_groups(p.spec) for p in phases)     # some train phase reads the fits' groups
        self.fits = make_fits(phases, model)
        self.balanced_fits = make_fits(phases, model, balanced=True)
        self.groups = None
        self.features = None        # (the features' partition [N], their neighbour table), made once a run

    def init_prior(self, phase, params, x, rng, table=None, groups=None):
        """params with each restart's prior refitted to its embeddings of x (all of it for "em", at
        most batches * batch_size samples for "minibatch"); `table`: the neighbour table [R, N, k]
        of x's rows (spec["smooth"], spec["overcluster"]). With spec["balanced_above"] = t, a
        restart whose current prior partitions its embeddings with an imbalance above t (the KL of
        the cluster sizes from the uniform) gets a balanced fit, the others a plain one. With
        spec["keep_current"], a restart keeps its prior unless the new fit scores better on the
        same embeddings (keep_or_replace); self.say reports each choice. The restarts' priors are
        stacked on the host (numpy). When a train phase has the `pin` term, self.groups [R, N] holds
        each restart's partition of x by the prior it keeps: the merged groups of an over-clustered
        fit, else each embedding's most likely component. A model whose mixture is a prior network
        (GMVAE) gets the fit written into that network instead (_partition)."""
        spec = phase.spec
        if spec["method"] == "minibatch":
            n = prior_fit_rows(spec, len(x))
            x = x[np.asarray(jax.random.permutation(jax.random.fold_in(rng, 0), len(x)))[:n]]
        priors, self.pulled, kept_groups = [], [], []   # pull: per restart (table [N, m], groups [N], share of links within)
        for r in range(self.restarts):
            params_r = jax.tree.map(lambda a: a[r], params)
            note = f" restart {r}" if self.restarts > 1 else ""
            if spec["keep_current"] and spec["features"] and groups is not None and len(x) <= FEATURE_ROWS \
                    and np.array_equal(np.asarray(groups[r]), self.feature_partition(x, spec["features"])[0]):
                self.say(f"phase {phase.name!r}{note}: kept the features' partition (no refit)")
                priors.append(jax.device_get(params_r if not self.model.stored_prior else params_r["prior"]))
                kept_groups.append(self.features[0])
                continue
            z = self.embed(params_r, x)
            current = (jax.device_get(prior_report(params_r["prior"], z))
                       if uses_current(spec) and self.model.stored_prior else None)
            fit = self._fit(phase, current, note)
            new = fit(rng, r, z, None if table is None else np.asarray(table[r]))
            merged = None
            if spec["overcluster"]:
                new, merged = new
                merged = np.asarray(merged)
                if spec["features"] and not spec["keep_current"]:
                    new, merged = self.choose_features(phase, x, z, new, merged, r, note)
            if spec["pull"]:
                group_anchors = anchors(np.asarray(z), merged, self.model.num_clusters, spec["pull"])
                self.pulled.append((group_anchors[merged], merged,
                                    1.0 - cut_share(merged, table[r])))
            if not self.model.stored_prior:
                params_r, group = self._partition(phase, params_r, x, z, new, merged, table, r, note)
                if spec["features"] and spec["keep_current"]:
                    fitted, chosen = self.choose_features(phase, x, z, None, group, r, note, "kept")
                    if fitted is not None:
                        params_r, group = self.model.load_prior(params_r, fitted), chosen
                priors.append(params_r)
                kept_groups.append(group)
                continue
            kept = new
            if spec["keep_current"]:
                kept = keep_or_replace(phase, params_r["prior"], new, z, note, self.say, current,
                                       None if table is None else (np.asarray(table[r]), merged))
            partition = merged if kept is new and merged is not None else None
            if spec["features"] and spec["keep_current"]:
                partition = np.asarray(hard_partition(kept, z)) if partition is None else partition
                kept, partition = self.choose_features(phase, x, z, kept, partition, r, note, "kept")
            if self.pins:
                kept_groups.append(np.asarray(hard_partition(kept, z)) if partition is None else partition)
            priors.append(jax.device_get(kept))
        if self.pins:
            self.groups = np.stack(kept_groups).astype(np.int32)
        if not self.model.stored_prior:        # GMVAE: its whole params, the prior network's set to the fit
            return jax.tree.map(lambda *a: np.stack(a), *jax.device_get(priors))
        return {**params, "prior": jax.tree.map(lambda *a: np.stack(a), *priors)}

    def choose_features(self, phase, x, z, prior, partition, r, note="", what="merged"):
        """(prior, groups [N]) of restart r: `prior` and its `partition` [N] (the merged one of a
        first fit, the one kept in a keep_current phase), or the features' partition where that
        cuts fewer links of the features' graph. The features' partition is a full-covariance GMM
        of spec["features"] fits on x reduced to at most 10 principal components
        (feature_partition); the graph, each sample's 3 nearest neighbours in those features. The
        features' partition replaces `partition` only if it cuts below FEATURE_MARGIN (0.8) of
        the share of the graph's links that `partition` cuts (a near tie is no evidence: it keeps
        `partition`); the prior is then fitted to its groups on the embeddings z (group g is
        component g). Above FEATURE_ROWS samples nothing is compared."""
        if len(x) > FEATURE_ROWS:
            return prior, partition
        k = self.model.num_clusters
        feature_groups, table = self.feature_partition(x, phase.spec["features"])
        cut_own, cut_features = cut_share(partition, table), cut_share(feature_groups, table)
        replace = cut_features < FEATURE_MARGIN * cut_own
        sizes = [sorted(np.bincount(g, minlength=k).tolist(), reverse=True) for g in (partition, feature_groups)]
        choice = "the features' GMM partition replaces" if replace else "kept"
        self.say(f"phase {phase.name!r}{note}: {choice} the {what} partition "
                 f"(share of the features' {FEATURE_NEIGHBOURS}-NN links cut: {what} {cut_own:.4f} {sizes[0]}, "
                 f"features' full GMM {cut_features:.4f} {sizes[1]}; it replaces below {FEATURE_MARGIN:g} x "
                 f"{cut_own:.4f})")
        if not replace:
            return prior, partition
        return jax.device_get(prior_of_groups(z, feature_groups, k)), feature_groups

    def feature_partition(self, x, fits=5):
        """(partition [N], neighbour table [N, 3]) of the features of x, made at the first call of a
        run (a full GMM of `fits` fits from seed 0, so that a resumed run makes the same one)."""
        if self.features is None:
            reduced = reduce_features(x)
            self.features = (full_gmm_partition(reduced, self.model.num_clusters, fits, seed=0),
                             np.asarray(knn_table(reduced.astype(np.float32), FEATURE_NEIGHBOURS)))
        return self.features

    def _partition(self, phase, params_r, x, z, new, merged, table, r, note):
        """(params, groups [N]) of one restart of a model without a stored prior (GMVAE), whose
        prior network model.load_prior sets to the fit: group g (the fit's merged group g, else
        its hard partition) is then the model's component g. With keep_current the model keeps
        its network and its own partition (each sample's most likely cluster) unless the fit's
        partition scores better by phase.spec["select"] ("modularity" on the neighbour graph, or
        "balance")."""
        fitted = merged if merged is not None else np.asarray(hard_partition(new, z))
        if not phase.spec["keep_current"]:
            return self.model.load_prior(params_r, new), fitted
        k = self.model.num_clusters
        own = np.asarray(self.predict(params_r, x)["log_gamma"]).argmax(1)
        s_old, s_new = partition_scores(phase.spec["select"], (own, fitted), table[r], k)
        what = (f"modularity on the neighbour graph: the model's {s_old:.4f}, new fit {s_new:.4f}"
                if phase.spec["select"] == "modularity"
                else f"imbalance: the model's {-s_old:.4f}, new fit {-s_new:.4f}")
        keep = not s_new > s_old
        sizes = [sorted(np.bincount(g, minlength=k).tolist(), reverse=True) for g in (own, fitted)]
        choice = "kept the model and its" if keep else "the new fit replaces the prior network and the"
        self.say(f"phase {phase.name!r}{note}: {choice} partition ({what}; cluster sizes: the model's {sizes[0]}, "
                 f"new fit {sizes[1]})")
        return (params_r, own) if keep else (self.model.load_prior(params_r, new), fitted)

    def _fit(self, phase, current, note):
        """The plain fit, or the balanced one where balanced_above finds the current partition uneven."""
        spec = phase.spec
        if phase.name not in self.fits:
            self.fits[phase.name] = prior_fit(spec, self.model)
        if spec["balanced_above"] is None:
            return self.fits[phase.name]
        uneven = partition_imbalance(current[0])
        balanced = uneven > spec["balanced_above"]
        self.say(f"phase {phase.name!r}{note}: the current partition's imbalance {uneven:.4f} is "
                 f"{'above' if balanced else 'within'} balanced_above={spec['balanced_above']}: a "
                 f"{'balanced' if balanced else 'plain'} fit")
        if not balanced:
            return self.fits[phase.name]
        if phase.name not in self.balanced_fits:
            self.balanced_fits[phase.name] = prior_fit({**spec, "balanced": True}, self.model)
        return self.balanced_fits[phase.name]

    def pull_table(self, labels=None, name=""):
        """After an init_prior phase with "pull": m, the table [R, N, m] that gives each sample the
        m anchors of its group in that fit's merged partition (the members nearest the group's
        mean embedding), which the `neighbours` term of the next train phases reads in place of
        nearest neighbours: each group is pulled into the component its anchors hold (group g
        is the prior's component g), so groups of any shape keep apart. `labels` only report."""
        tables = np.stack([table for table, _, _ in self.pulled])
        _, groups, within = self.pulled[0]
        sizes = sorted(np.bincount(groups).tolist(), reverse=True)
        shared = "" if labels is None else f"; {agreement(tables[0], labels):.1%} share its label (reported only)"
        self.say(f"phase {name!r}: the kept partition's group sizes {sizes}, {within:.1%} of the neighbour "
                 f"links within a group; each sample pulled to its group's {tables.shape[2]} anchors{shared}")
        return tables

    def neighbours(self, phase, params, x, labels=None):
        """The neighbour table [R, N, k]: each restart's k nearest neighbours of every row of x in its
        embedding. `labels` only report how many neighbours share a sample's label."""
        k, method = phase.spec["k"], phase.spec["method"]
        if method == "auto":
            method = "descent" if len(x) > DESCENT_ABOVE else "exact"
        if method == "exact":
            find = lambda z, r: knn_table(z, k)
        else:
            find = lambda z, r: knn_descent(z, k, jax.random.fold_in(jax.random.key(0), r))
        tables = np.stack([find(self.embed(jax.tree.map(lambda a: a[r], params), x), r) for r in range(self.restarts)])
        shared = "" if labels is None else f" ({agreement(tables[0], labels):.1%} share its label; reported only)"
        how = "" if method == "exact" else " (approximate: NN-descent)"
        self.say(f"phase {phase.name!r}: {k} nearest neighbours of each sample in the embedding{how}{shared}")
        return tables


def anchors(z, groups, k, m):
    """[k, m] row indices: for each group of the partition `groups` [N] (labels in [0, k)) of the
    embeddings z [N, D], its m members nearest the group's mean (repeated in a group of fewer
    than m; an empty group, which no row reads, gets row 0)."""
    out = np.zeros((k, m), np.int32)
    for g in range(k):
        members = np.flatnonzero(groups == g)
        if len(members):
            d = np.sum((z[members] - z[members].mean(0)) ** 2, axis=1)
            nearest = members[np.argsort(d, kind="stable")[:m]]
            out[g] = np.resize(nearest, m)
    return out


def make_fits(phases, model, balanced=False):
    """{phase name: compiled fit} of the init_prior phases; phases with the same fit_key
    (vade_mnist5k's gmm_init2 and gmm_init3) share one program. `balanced`: the
    balanced fits (spec with balanced=True) of the phases with balanced_above, shared the same
    way; each compiles at its first call, so a run whose partitions stay even never compiles one."""
    specs = {p.name: {**p.spec, "balanced": True} if balanced else p.spec for p in phases
             if p.kind == "init_prior" and (not balanced or p.spec["balanced_above"] is not None)}
    by_key = {}
    return {name: by_key.setdefault(fit_key(spec), prior_fit(spec, model)) for name, spec in specs.items()}


def fit_key(spec):
    """What an init_prior phase's compiled fit depends on: keep_current, balanced_above and
    features are decided around it (balanced_above's balanced fit is compiled only where a run
    needs it; the features' partition is host code)."""
    return program_key({k: v for k, v in spec.items() if k not in ("keep_current", "balanced_above", "features")})


def prior_fit(spec, model):
    """The compiled fit(rng, restart, z, table) -> prior of an init_prior phase for restart
    `restart`, whose fit draws from fold_in(rng, restart + 1) (folded inside the program: an
    eager fold_in would compile a program of its own); `table`, the neighbour table of z's rows,
    is read only with spec["smooth"] > 0 or spec["overcluster"] > 0. An over-clustered fit returns
    (prior, its merged groups [N])."""
    fit_args = dict(kmeans_iters=spec["kmeans_iters"], em_iters=spec["em_iters"] if spec["method"] == "em" else 0,
                    n_init=spec["n_init"], select=spec["select"], balanced=spec["balanced"])
    smooth, k, over = spec["smooth"], model.num_clusters, spec["overcluster"]
    key = lambda rng, restart: jax.random.fold_in(rng, restart + 1)
    if over:
        return jax.jit(lambda rng, restart, z, table: fit_diag_gmm_merged(key(rng, restart), z, table, k, over, smooth,
                                                                          with_groups=True, linkage=spec["linkage"],
                                                                          **fit_args))
    if smooth:
        return jax.jit(lambda rng, restart, z, table: fit_diag_gmm_smoothed(key(rng, restart), z, table, k, smooth,
                                                                           **fit_args))
    return jax.jit(lambda rng, restart, z, table=None: fit_diag_gmm(key(rng, restart), z, k, **fit_args))


def prior_fit_rows(spec, num_train):
    """How many embeddings an init_prior phase fits."""
    return min(num_train, spec["batches"] * spec["batch_size"]) if spec["method"] == "minibatch" else num_train


def uses_current(spec):
    """Whether an init_prior phase scores the prior the model has (keep_current, balanced_above)."""
    return spec["keep_current"] or spec["balanced_above"] is not None


def partition_imbalance(sizes):
    """KL of a partition's cluster sizes [K] from the uniform: 0 when every component is used
    equally (on the host, in float64)."""
    p = np.asarray(sizes, np.float64) / np.sum(sizes)
    return float(np.log(len(p)) + np.sum(p * np.log(np.maximum(p, 1e-30))))


def partition_scores(select, partitions, table, k):
    """The score of each hard partition [N] (labels in [0, k); higher is better): "modularity" on
    the neighbour graph `table` [N, n], else ("balance") minus the KL of its cluster sizes from
    the uniform."""
    if select == "modularity":
        graph = jnp.asarray(np.asarray(table))
        return [float(partition_modularity(jnp.asarray(g), graph, k)) for g in partitions]
    return [-partition_imbalance(np.bincount(np.asarray(g), minlength=k)) for g in partitions]


def keep_or_replace(phase, current, new, z, note="", say=None, current_report=None, graph=None):
    """init_prior with keep_current: `new` replaces `current` only if it scores better on the
    embeddings z by phase.spec["select"]: "balance" scores the partition (each embedding to its
    most likely component; KL of its cluster sizes from the uniform, lower is better), as
    accuracy sees it, so a prior trained toward even soft usage cannot win by components that
    overlap; "likelihood" the mean log-likelihood of z; "modularity" the partitions' modularity on
    the neighbour graph, `graph` = (table [N, n], the new fit's merged groups [N]), the current
    prior's partition being its hard one. A tie keeps `current`; a current prior that scores NaN
    gives way to a fit that does not. `note` names the restart in the message; `current_report`:
    prior_report(current, z) where the caller has it."""
    select = phase.spec["select"]
    sizes_old, ll_old = jax.device_get(prior_report(current, z)) if current_report is None else current_report
    sizes_new, ll_new = jax.device_get(prior_report(new, z))
    if select == "balance":
        s_old, s_new = (-partition_imbalance(n) for n in (sizes_old, sizes_new))
        what = f"partition's imbalance: current {-s_old:.4f}, new fit {-s_new:.4f}"
    elif select == "modularity":
        table, merged = graph
        k = len(sizes_old)
        s_old, s_new = partition_scores("modularity", (hard_partition(current, z), merged), table, k)
        sizes_new = np.bincount(merged, minlength=k)
        what = f"modularity on the neighbour graph: current {s_old:.4f}, new fit {s_new:.4f}"
    else:
        s_old, s_new = float(ll_old), float(ll_new)
        what = f"mean log-likelihood: current {s_old:.4f}, new fit {s_new:.4f}"
    keep = not (s_new > s_old or (math.isnan(s_old) and not math.isnan(s_new)))
    if say:
        sizes = [sorted(np.asarray(n).astype(int).tolist(), reverse=True) for n in (sizes_old, sizes_new)]
        say(f"phase {phase.name!r}{note}: "
             f"{'kept the current prior' if keep else 'the new fit replaces the prior'} ({what}; cluster sizes of "
             f"the {len(z)} embeddings fitted: current {sizes[0]}, new fit {sizes[1]})")
    return current if keep else new


def prior_of_groups(z, groups, k):
    """The diagonal mixture fitted to a hard partition `groups` [N] of the embeddings z [N, D]:
    each group's share, mean and variance (component g is group g)."""
    z = jnp.asarray(z)
    d = z.shape[1]
    rows = jnp.concatenate([z, jax.nn.one_hot(jnp.asarray(groups), k, dtype=z.dtype)], axis=1)
    fit = moments(rows, lambda chunk: chunk[:, d:], k)
    return {"logits": fit["logits"], "means": fit["means"][:, :d], "log_vars": fit["log_vars"][:, :d]}


@jax.jit
def hard_partition(prior, z):
    """Each embedding's most likely component under the prior: [N]."""
    return jnp.argmax(mixture.log_responsibilities(z, prior["logits"], prior["means"], prior["log_vars"]), axis=1)


@jax.jit
def prior_report(prior, z):
    """(cluster sizes [K] of z's partition by the prior, mean log-likelihood of z)."""
    return cluster_counts(prior, z), mean_log_likelihood(prior, z)


def _quiet(*args, **kwargs):
    pass
