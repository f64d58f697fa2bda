"""model.num_clusters=auto: the mixture finds K while it trains.

The model has K_max slots (gmvc/recipes/rules.py); a retired slot keeps its shape and has the
logit DEAD, so its weight is 0 and no compiled shape changes. The moves of gmvc/core/k_moves.py
run on every training sample's encoder mean, for each restart, between the steps of training:

- right after the first init_prior phase (choose_k.at_fit), on the pretrained embeddings that
  fit saw, rounds of all three moves until a round changes nothing (at most FIT_ROUNDS):
  retire (too few samples), merge (two neighbouring components linked in the 10-nearest-neighbour
  graph that DeepDPM's Hastings test would join), split (the test prefers two);
- after each chunk of train.log_every steps of a clustering phase (the train phases after the
  first init_prior phase; without one, those whose objective has `vade_kl`), a component left with
  too few samples retires (choose_k.during="retire"); with during="all" the three moves run
  there too. Measured (docs/results.md): once `pin` has shaped the embedding around the groups,
  the tests judge the groups the training made, not the data: merges went on past the classes
  (digits 11 -> 4) and the moons split again (2 -> 4).

A move changes the prior's slots, the `pin` groups of the samples it moves and, where the phase
reads the anchors of the first fit's groups, the anchors. The rounds after chunks stop after
choose_k.patience rounds in a row that changed nothing. Every test made is recorded (step, move,
slots, score, what scored it, accepted, weak) in the checkpoints' meta and results.json, and drawn
in k_selection.png (gmvc/eval/k_selection.py).
"""
import jax
import numpy as np

from gmvc.core import k_moves
from gmvc.errors import ConfigError
from gmvc.training import parallel
from gmvc.training.embedding_phases import anchors
from gmvc.training.state import Tables


MERGE_TESTS = ("hastings", "valley", "both")
DURING = ("retire", "all")
ALL_MOVES = ("retire", "merge", "split")
FIT_ROUNDS = 5          # at most this many rounds after the fit


def check(config, model, streamed):
    """A ConfigError where model.num_clusters=auto cannot run."""
    if not config.choose_k.auto:
        return
    if config.model.name != "vade" or not model.stored_prior:
        raise ConfigError(f"model.num_clusters=auto needs VaDE's mixture prior (model.name='vade'), not "
                          f"model.name={config.model.name!r}")
    if config.model.gamma_transform != "none":
        raise ConfigError("model.num_clusters=auto needs model.gamma_transform='none' (inverse_minmax rescales "
                          "over every slot, retired ones too)")
    if streamed:
        raise ConfigError("model.num_clusters=auto moves the groups between chunks: it needs the data in memory "
                          "(--config.parallel.stream=off)")
    c = config.choose_k
    if c.during not in DURING:
        raise ConfigError(f"choose_k.during must be one of {list(DURING)}, got {c.during!r}")
    if c.merge_test not in MERGE_TESTS:
        raise ConfigError(f"choose_k.merge_test must be one of {list(MERGE_TESTS)}, got {c.merge_test!r}")
    if not (isinstance(c.patience, int) and c.patience >= 1 and c.alpha > 0 and c.niw_scale > 0
            and 0 < c.merge_ratio <= 1 and 0 <= c.merge_links <= 1 and 0 <= c.min_share < 1):
        raise ConfigError(f"choose_k: patience must be a whole number >= 1, alpha and niw_scale above 0, merge_ratio "
                          f"in (0, 1], merge_links in [0, 1], min_share in [0, 1); got {c.to_dict()}")


def settings(config):
    c = config.choose_k
    return k_moves.Settings(alpha=float(c.alpha), niw_scale=float(c.niw_scale), merge_ratio=float(c.merge_ratio),
                            merge_links=float(c.merge_links), merge_test=str(c.merge_test),
                            split_margin=float(c.split_margin), min_share=float(c.min_share))


def moving_phases(phases):
    """Names of the train phases whose chunks are followed by moves."""
    first_fit = next((i for i, p in enumerate(phases) if p.kind == "init_prior"), None)
    if first_fit is None:
        return {p.name for p in phases if p.kind == "train" and p.spec.get("objective", {}).get("vade_kl")}
    return {p.name for p in phases[first_fit + 1:] if p.kind == "train"}


def pull_anchors(phases, index):
    """m where the train phase at `index` reads the anchors of an init_prior phase's groups (its
    "pull"), else 0: the latest table-making phase before it decides."""
    for p in reversed(phases[:index]):
        if p.kind == "neighbours":
            return 0
        if p.kind == "init_prior" and p.spec.get("pull"):
            return int(p.spec["pull"])
    return 0


class KMoves:
    """The moves of one run and their record: K per restart after each round, every test, the
    rounds in a row without a move."""

    def __init__(self, ctx, say):
        self.ctx, self.say = ctx, say
        self.settings = settings(ctx.config)
        self.patience = int(ctx.config.choose_k.patience)
        self.moving = moving_phases(ctx.phases)
        r = ctx.config.train.restarts
        self.rec = {"k_max": int(ctx.model.num_clusters), "path": [], "tests": [[] for _ in range(r)], "quiet": 0}

    def resume(self, record):
        if record:
            self.rec = record

    def record(self):
        return self.rec

    @property
    def done(self):
        return self.rec["quiet"] >= self.patience

    def after_fit(self, index, step, params, tables):
        """(params, tables) after the round of moves that follows the first init_prior phase, on
        the embeddings that fit saw (host arrays, as run_phases holds them)."""
        phase = self.ctx.phases[index]
        if self.rec["path"] or phase.kind != "init_prior" or not self.ctx.config.choose_k.at_fit:
            return params, tables                    # the first fit only, and not again on resume
        for _ in range(FIT_ROUNDS):                  # until a round changes nothing
            prior, groups, neighbours, m = self._move(index + 1, step, phase.name, params, tables.groups,
                                                      tables.neighbours, ALL_MOVES)
            if prior is None:
                break
            params = {**params, "prior": prior}
            tables = tables._replace(groups=groups, neighbours=neighbours if m else tables.neighbours)
        self.rec["quiet"] = 0                        # the training's rounds count afresh
        return params, tables

    def after_chunk(self, index, step, state, tables):
        """(state, tables) after one round of moves at `step` (device arrays, the layout's); the
        same objects where no move was accepted."""
        ctx, phase = self.ctx, self.ctx.phases[index]
        if phase.name not in self.moving or self.done:
            return state, tables
        layout = ctx.layout
        host = lambda a: None if a is None else np.array(parallel.to_host(a if layout.mode != "pmap" else a[0]))
        params = jax.tree.map(host, state.params)
        moves = ALL_MOVES if ctx.config.choose_k.during == "all" else ("retire",)
        prior, groups, neighbours, m = self._move(index, step, phase.name, params, host(tables.groups),
                                                  host(tables.neighbours), moves)
        if prior is None:
            return state, tables
        state = parallel.get_state(layout, state)
        state = state._replace(params={**state.params, "prior": prior})
        return parallel.put_state(layout, state), parallel.put_state(layout, Tables(neighbours, groups))

    def _move(self, index, step, name, params, groups, neighbours, moves):
        """One round for every restart on host arrays: (prior, groups, neighbours, m) with the moves
        applied, or prior None where none was accepted. `index`: the train phase the tables feed
        (m: the anchors it reads, 0 for none)."""
        ctx = self.ctx
        prior = {k: np.array(v) for k, v in params["prior"].items()}
        groups = None if groups is None else np.array(groups)
        m = pull_anchors(ctx.phases, index) if neighbours is not None and index < len(ctx.phases) else 0
        neighbours = None if neighbours is None else np.array(neighbours)
        changed, ks = False, []
        for r in range(ctx.config.train.restarts):
            z = np.asarray(ctx.embedding.embed(jax.tree.map(lambda a: a[r], params), ctx.x_train))
            prior_r = {k: v[r] for k, v in prior.items()}
            new, groups_r, tests = k_moves.propose_moves(z, prior_r, None if groups is None else groups[r],
                                                         self.settings, step, moves)
            self.rec["tests"][r].extend(tests)
            accepted = [t for t in tests if t["accepted"]]
            if accepted:
                changed = True
                for k in prior:
                    prior[k][r] = new[k].astype(prior[k].dtype)
                if groups is not None:
                    groups[r] = groups_r
                    if m:
                        neighbours[r] = anchors(z, groups_r, len(prior["logits"][r]), m)[groups_r]
                self.say(f"K at step {step}{f' (restart {r})' if len(prior['logits']) > 1 else ''}: "
                         f"{int(k_moves.active_slots(prior['logits'][r]).sum())} "
                         f"({', '.join(describe(t) for t in accepted)})")
            ks.append(int(k_moves.active_slots(prior["logits"][r]).sum()))
        self.rec["path"].append({"step": int(step), "phase": name, "k": ks})
        self.rec["quiet"] = 0 if changed else self.rec["quiet"] + 1
        if self.done:
            self.say(f"K: no move for {self.patience} rounds at step {step}: the moves stop (K = {ks[0]})")
        return (prior if changed else None), groups, neighbours, m

    def summary(self, params, restart):
        """results.json's choose_k: the final K of the chosen restart, its path and moves."""
        logits = np.asarray(params["prior"]["logits"])
        tests = self.rec["tests"][restart]
        accepted = [t for t in tests if t["accepted"]]
        weak = [t for t in accepted if t["weak"]]
        return {"k": int(k_moves.active_slots(logits).sum()), "k_max": self.rec["k_max"],
                "slots": np.flatnonzero(k_moves.active_slots(logits)).tolist(),
                "path": [{"step": p["step"], "phase": p["phase"], "k": p["k"][restart]} for p in self.rec["path"]],
                "moves": accepted, "weak_moves": len(weak), "tests": tests,
                "refused": {m: sum(1 for t in tests if t["move"] == m and not t["accepted"])
                            for m in ("merge", "split", "retire")},
                "settings": self.settings._asdict(), "patience": self.patience,
                "stopped": self.done}


def describe(test):
    what = {"log_h": "log H", "valley_ratio": "valley ratio", "samples": "samples"}[test["by"]]
    weak = "; weak evidence" if test["weak"] else ""
    return f"{test['move']} {test['slots']} ({what} {test['score']:g}{weak})"

