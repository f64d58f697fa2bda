"""The evidence for changing a mixture's number of components (DeepDPM, Ronen et al. CVPR 2022):
the marginal likelihood of points under a Normal-Inverse-Wishart prior, in closed form, and the
Hastings ratios of splitting one cluster in two and of merging two into one.

A split of the points X of a cluster into X1 and X2 (sizes N1 + N2 = N) is accepted when

    log H = log alpha + lgamma(N1) + log L(X1) + lgamma(N2) + log L(X2) - lgamma(N) - log L(X) > 0,

alpha the Dirichlet process's concentration and L the NIW marginal likelihood; a merge of two
clusters into one is the inverse move, accepted when -log H > 0 for the pair. Numpy and scipy on
the host: the moves run between training chunks, on the encoder means.

`valley_ratio` is the unimodality test of a merge (the role Hartigan's dip test has in DipDECK):
the points of two components projected on the line between their means, their density there (a
Gaussian kernel estimate), and the ratio of its lowest point between the two peaks to the lower
peak (1: no valley, one mode; near 0: two modes). `propose_moves` runs the three moves of a
mixture with a fixed number of slots, where a retired slot has the logit DEAD.
"""
from typing import NamedTuple

import numpy as np


class NIW(NamedTuple):
    mean: np.ndarray       # [D] m0
    kappa: float           # k0: how many points the prior mean counts as
    nu: float              # degrees of freedom, > D - 1
    psi: np.ndarray        # [D, D] scale matrix


def niw_prior(z, kappa=1.0, scale=1.0):
    """A NIW prior scaled to the spread of the points z [N, D]: mean z's mean, nu = D + 2 (the
    least that gives the covariance a mean), psi = scale * diag(var z), so that the prior's mean
    covariance psi / (nu - D - 1) is `scale` times z's per-dimension variance."""
    z = np.asarray(z, np.float64)
    d = z.shape[1]
    return NIW(z.mean(0), float(kappa), d + 2.0, scale * np.diag(z.var(0) + 1e-12))


def log_marginal(x, prior):
    """log p(x) of the points x [N, D] with the Gaussian's mean and covariance integrated out
    under `prior` (NIW); 0 for no points."""
    from scipy.special import multigammaln      # scipy is loaded when a move is tested, not at start-up
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if n == 0:
        return 0.0
    xbar = x.mean(0)
    centred = x - xbar
    k_n, nu_n = prior.kappa + n, prior.nu + n
    diff = xbar - prior.mean
    psi_n = prior.psi + centred.T @ centred + (prior.kappa * n / k_n) * np.outer(diff, diff)
    return float(-0.5 * n * d * np.log(np.pi) + multigammaln(0.5 * nu_n, d) - multigammaln(0.5 * prior.nu, d)
                 + 0.5 * prior.nu * _logdet(prior.psi) - 0.5 * nu_n * _logdet(psi_n)
                 + 0.5 * d * (np.log(prior.kappa) - np.log(k_n)))


def log_split_ratio(x, sub, alpha, prior):
    """log H of splitting the points x [N, D] by `sub` [N] (bools: the second part) under
    concentration `alpha`; -inf when a part is empty."""
    from scipy.special import gammaln
    sub = np.asarray(sub, bool)
    n1, n2 = int((~sub).sum()), int(sub.sum())
    if n1 == 0 or n2 == 0:
        return -np.inf
    x = np.asarray(x, np.float64)
    return float(np.log(alpha) + gammaln(n1) + log_marginal(x[~sub], prior) + gammaln(n2)
                 + log_marginal(x[sub], prior) - gammaln(n1 + n2) - log_marginal(x, prior))


def log_merge_ratio(x1, x2, alpha, prior):
    """log H of merging the points x1 [N1, D] and x2 [N2, D] into one cluster: the inverse of
    their split."""
    x = np.concatenate([np.asarray(x1, np.float64), np.asarray(x2, np.float64)])
    sub = np.arange(len(x)) >= len(x1)
    return -log_split_ratio(x, sub, alpha, prior)


DEAD = -1e4           # the logit of a retired slot: its weight exp(-1e4) is 0 in float32; no shape changes


def active_slots(logits):
    return np.asarray(logits) > DEAD / 2


def cluster_slots(config, model, params):
    """The mixture components a trained model's clusters are: all of them, or with
    model.num_clusters=auto (config.choose_k.auto, VaDE's stored prior) its live slots; cluster i
    is slot cluster_slots[i]."""
    if config.choose_k.auto and model.stored_prior and model.num_clusters:
        return np.flatnonzero(active_slots(np.asarray(params["prior"]["logits"])))
    return np.arange(model.num_clusters)


def on_slots(out, slots):
    """A prediction's outputs with the responsibilities of the clusters `slots` only (the same
    dict where they are all the components)."""
    if "log_gamma" not in out or len(slots) == out["log_gamma"].shape[1]:
        return out
    return {**out, "log_gamma": out["log_gamma"][:, slots]}


def valley_ratio(z, mean_a, mean_b, grid=128, max_points=4000):
    """Unimodality of the points z [N, D] along the line from mean_a to mean_b: z projected on it
    (t = 0 at mean_a, 1 at mean_b), a Gaussian kernel density of t (Silverman's bandwidth), and
    min f over the stretch between its highest point on each side of t = 1/2, divided by the lower
    of those two peaks. 1.0: no valley between the means (unimodal); near 0: two modes."""
    z = np.asarray(z, np.float64)
    u = np.asarray(mean_b, np.float64) - np.asarray(mean_a, np.float64)
    length2 = float(u @ u)
    if len(z) < 4 or length2 <= 0:
        return 1.0
    t = (z - mean_a) @ u / length2
    if len(t) > max_points:                        # an even thinning: the same t every time
        t = np.sort(t)[np.linspace(0, len(t) - 1, max_points).astype(int)]
    q75, q25 = np.percentile(t, [75, 25])
    spread = min(t.std(), (q75 - q25) / 1.34) or t.std()
    h = max(0.9 * spread * len(t) ** -0.2, 1e-6)
    g = np.linspace(-0.25, 1.25, grid)
    f = np.exp(-0.5 * ((g[:, None] - t[None, :]) / h) ** 2).sum(1)
    left, right = g <= 0.5, g >= 0.5
    i = np.flatnonzero(left)[np.argmax(f[left])]
    j = np.flatnonzero(right)[np.argmax(f[right])]
    low = min(f[i], f[j])
    return float(min(1.0, f[i:j + 1].min() / low)) if low > 0 else 1.0


class Settings(NamedTuple):
    """The stated constants of the moves (config choose_k.*)."""
    alpha: float = 1.0             # the Dirichlet process's concentration in log H
    niw_scale: float = 10.0        # NIW psi = niw_scale x diag(var of all the embeddings)
    merge_ratio: float = 0.5       # merge when the valley between two means is no lower than this share of the lower peak
    merge_links: float = 0.02      # a merge needs the two linked: this share of the smaller one's 10-NN links cross
    merge_test: str = "hastings"   # "hastings" (log H of the merge > 0), "valley" (valley_ratio >= merge_ratio)
                                   # or "both"
    split_margin: float = 0.0      # split when log H exceeds this (and the halves have a valley below merge_ratio)
    min_share: float = 0.01        # retire a component holding fewer than max(5, min_share x N) samples
    weak_ratio: float = 0.1        # a merge within this of merge_ratio is weak evidence
    weak_log_h: float = 5.0        # a split within this of split_margin is weak evidence


def _gaussian(z, floor=1e-4):
    return z.mean(0), np.log(z.var(0) + floor)


def _two_means(z, iters=20):
    """A deterministic split of z [N, D] in two: 2-means started from the halves along the
    principal axis. Returns bools [N] (True: the second part)."""
    centred = z - z.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    side = centred @ axis > np.median(centred @ axis)
    for _ in range(iters):
        if side.all() or not side.any():
            break
        c0, c1 = z[~side].mean(0), z[side].mean(0)
        new = ((z - c1) ** 2).sum(1) < ((z - c0) ** 2).sum(1)
        if np.array_equal(new, side):
            break
        side = new
    return side


LINK_NEIGHBOURS = 10


def _knn(z, k):
    """Each row's k nearest other rows [N, k] (exact; at most 20,000 rows are linked, the rest -1)."""
    from sklearn.neighbors import NearestNeighbors
    n = len(z)
    rows = np.arange(n) if n <= 20_000 else np.linspace(0, n - 1, 20_000).astype(int)
    out = np.full((n, k), -1)
    k = min(k, len(rows) - 1)
    if k < 1:
        return out[:, :0]
    idx = NearestNeighbors(n_neighbors=k + 1).fit(z[rows]).kneighbors(z[rows], return_distance=False)[:, 1:]
    out[rows, :k] = rows[idx]
    return out


def link_share(knn, hard, a, b):
    """The neighbour links between components a and b (either way), over k x the smaller one's
    size: 0 for two clusters apart, a few percent for two pieces of one."""
    linked = knn >= 0
    other = np.where(linked, hard[np.maximum(knn, 0)], -1)
    cross = ((hard == a)[:, None] & (other == b)).sum() + ((hard == b)[:, None] & (other == a)).sum()
    smaller = min((hard == a).sum(), (hard == b).sum())
    return float(cross / (knn.shape[1] * smaller)) if smaller and knn.shape[1] else 0.0


def _hard(z, prior, live):
    """Each embedding's most likely live component (diagonal Gaussians with their weights)."""
    logits, means, log_vars = (np.asarray(prior[k], np.float64) for k in ("logits", "means", "log_vars"))
    lj = -0.5 * (log_vars[None] + (z[:, None, :] - means[None]) ** 2 * np.exp(-log_vars)[None]).sum(-1) + logits[None]
    lj[:, ~live] = -np.inf
    return lj.argmax(1)


def propose_moves(z, prior, groups, settings, step, moves=("retire", "merge", "split")):
    """One round of moves on a mixture with slots: `prior` {"logits" [K], "means" [K, D],
    "log_vars" [K, D]} (numpy; a slot is live while its logit is above DEAD / 2), z [N, D] the
    encoder means, `groups` [N] the partition the `pin` term holds (or None). In order:
    1. retire: a live component holding (by each embedding's most likely component) fewer than
       max(5, min_share x N) samples; its samples go to their next most likely component;
    2. merge, repeated while one passes: each live component with its 3 nearest live ones by mean
       distance; of the pairs linked in the embeddings' 10-nearest-neighbour graph (link_share >=
       merge_links: a projection cannot tell two interlocking shapes apart, the graph can), the
       one with the highest valley_ratio >= merge_ratio merges (its moments matched, the weights
       added; the second slot retires);
    3. split: each live component not touched in this round, with at least 2 x the retire floor,
       split by 2-means; accepted when log H > split_margin and the halves' valley_ratio is below
       merge_ratio (so the next round's merge test would not undo it), into a free slot.
    Returns (prior, groups, tests): tests, one dict per test made (step, move, slots, score,
    accepted, weak). `moves`: ("retire",) runs only the first."""
    prior = {k: np.array(v, np.float64) for k, v in prior.items()}
    groups = None if groups is None else np.array(groups)
    z = np.asarray(z, np.float64)
    n = len(z)
    floor = max(5, int(np.ceil(settings.min_share * n)))
    tests, touched = [], set()
    hastings = settings.merge_test == "hastings"
    live = active_slots(prior["logits"])
    hard = _hard(z, prior, live)

    def record(move, slots, score, accepted, weak, **more):
        by = {"retire": "samples", "split": "log_h", "merge": "log_h" if hastings else "valley_ratio"}[move]
        tests.append({"step": int(step), "move": move, "slots": [int(s) for s in slots], "score": round(float(score), 4),
                      "by": by, "accepted": bool(accepted), "weak": bool(weak),
                      **{k: round(float(v), 4) for k, v in more.items()}})

    def retire(k):
        prior["logits"][k] = DEAD
        live[k] = False

    # 1. retire the components too small to hold a cluster
    counts = np.bincount(hard, minlength=len(live))
    for k in np.flatnonzero(live & (counts < floor)):
        if live.sum() <= 1:
            break
        retire(k)
        record("retire", [k], counts[k], True, False)
        touched.add(int(k))
    hard = _hard(z, prior, live)
    if groups is not None:
        moved = ~live[groups]
        groups[moved] = hard[moved]

    if moves == ("retire",):
        return prior, groups, tests

    # 2. merge while the best neighbouring pair shows no valley and is linked in the neighbour graph
    knn = _knn(z, LINK_NEIGHBOURS)
    niw = niw_prior(z, scale=settings.niw_scale)
    threshold = 0.0 if hastings else settings.merge_ratio
    weak = settings.weak_log_h if hastings else settings.weak_ratio
    while live.sum() > 1:
        slots = np.flatnonzero(live)
        means = prior["means"][slots]
        d = ((means[:, None] - means[None]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        pairs = {tuple(sorted((int(slots[i]), int(slots[j])))) for i in range(len(slots))
                 for j in np.argsort(d[i])[:3] if np.isfinite(d[i, j])}
        scored = []
        for a, b in sorted(pairs):
            members = (hard == a) | (hard == b)
            if members.sum() < 4:
                continue
            links = link_share(knn, hard, a, b)
            if settings.merge_test == "hastings":
                ratio = log_merge_ratio(z[hard == a], z[hard == b], settings.alpha, niw)
            else:
                ratio = valley_ratio(z[members], prior["means"][a], prior["means"][b])
                if settings.merge_test == "both" and ratio >= threshold:
                    ratio = ratio if log_merge_ratio(z[hard == a], z[hard == b], settings.alpha, niw) > 0 else -1.0
            scored.append((ratio if links >= settings.merge_links else -np.inf, a, b, ratio, links))
        best = max(scored, default=None)
        refused = best is None or best[0] < threshold
        for _, a, b, ratio, links in scored:
            if refused or (a, b) != best[1:3]:
                record("merge", [a, b], ratio, False, abs(ratio - threshold) < weak, links=links)
        if refused:
            break
        _, a, b, ratio, links = best
        members = (hard == a) | (hard == b)
        prior["means"][a], prior["log_vars"][a] = _gaussian(z[members])
        prior["logits"][a] = np.logaddexp(prior["logits"][a], prior["logits"][b])
        retire(b)
        record("merge", [a, b], ratio, True, ratio - threshold < weak, links=links)
        touched.update((a, b))
        hard[hard == b] = a
        if groups is not None:
            groups[groups == b] = a

    # 3. split where the evidence says two
    for k in [int(k) for k in np.flatnonzero(live)]:
        members = np.flatnonzero(hard == k)
        free = np.flatnonzero(~live)
        if k in touched or len(members) < 2 * floor or not len(free):
            continue
        side = _two_means(z[members])
        if min(side.sum(), (~side).sum()) < floor:
            continue
        log_h = log_split_ratio(z[members], side, settings.alpha, niw)
        parts = (z[members][~side], z[members][side])
        if log_h > settings.split_margin:
            valley = valley_ratio(z[members], parts[0].mean(0), parts[1].mean(0))
            accepted = hastings or valley < settings.merge_ratio
        else:
            accepted = False
        weak = abs(log_h - settings.split_margin) < settings.weak_log_h
        record("split", [k] + ([int(free[0])] if accepted else []), log_h, accepted, weak)
        if not accepted:
            continue
        new, logit, s = int(free[0]), prior["logits"][k], side.mean()
        for slot, part, w in ((k, parts[0], 1.0 - s), (new, parts[1], s)):
            prior["means"][slot], prior["log_vars"][slot] = _gaussian(part)
            prior["logits"][slot] = logit + np.log(w)
        live[new] = True
        touched.update((k, new))
        hard[members[side]] = new
        if groups is not None:
            groups[members[side]] = new
    return prior, groups, tests


def _logdet(a):
    sign, value = np.linalg.slogdet(a)
    if sign <= 0:
        raise ValueError("the NIW scale matrix is not positive definite")
    return value
