"""The scoreboard: gmvc beside the peers on many sets, in one JSON object and a Markdown table.

    python benchmarks/quality.py --suite=DIR --seeds=3 --out=scoreboard.json   # runs it (see quality.py)
    python benchmarks/scoreboard.py scoreboard.json                             # its table, for docs/results.md

Per set: gmvc's ACC, NMI and ARI (mean and std over seeds) and seconds a fit, each peer's, the
best peer (the highest mean ACC) and gmvc's gap to it in ACC (negative: below it), and every
method's rank on the set by mean ACC (1 the best; ties share the average rank). Over sets: each
method's mean ACC, NMI, ARI, seconds a fit and mean rank, taken over the sets where every method
has a figure (`common_sets`), so the means compare like with like.
"""
import json
import pathlib
import sys

import numpy as np

PEERS = ("kmeans", "full_gmm", "umap_gmm", "spectral")
LABELS = {"gmvc": "gmvc", "kmeans": "k-means", "full_gmm": "full GMM", "umap_gmm": "UMAP+GMM", "spectral": "spectral"}
PEER_NAMES = {"gmm_full": "full_gmm"}        # peers_dev.jsonl's names for quality.py's methods
METRICS = ("acc", "nmi", "ari")


def read_peers(path, manifest):
    """{set: {method: summary}} from a peers file (one JSON object per set and method), each row
    checked against the set's manifest entry (N, D, K) so figures of another build are refused."""
    peers = {}
    for i, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        entry = manifest.get(row["set"])
        if entry is None:
            continue                           # a set this suite directory does not have
        mismatch = [f"{k}={row[k]} (manifest: {entry[k]})" for k in ("N", "D", "K") if row.get(k) != entry[k]]
        if mismatch:
            raise ValueError(f"{path}:{i}: {row['set']} {row['method']}: {', '.join(mismatch)}")
        method = PEER_NAMES.get(row["method"], row["method"])
        peers.setdefault(row["set"], {})[method] = peer_summary(row)
    return peers


def peer_summary(row):
    """A peers-file row in quality.py's summary form."""
    out = {"runs": len(row["seeds"]), "seeds": row["seeds"], "from": "peers file"}
    for m in METRICS:
        values = row.get(f"{m}s")
        out[f"{m}_mean"] = row[f"{m}_mean"]
        if values:
            out[f"{m}_std"] = round(float(np.std(values)), 4)
    out["seconds_mean"] = round(float(np.mean(row["seconds"])), 2)
    if row.get("notes"):
        out["notes"] = row["notes"]
    return out


def ranks(accs):
    """{method: rank by ACC}, 1 the best, ties sharing the average of their places."""
    order = sorted(accs, key=lambda m: -accs[m])
    out, i = {}, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and accs[order[j + 1]] == accs[order[i]]:
            j += 1
        for m in order[i:j + 1]:
            out[m] = (i + j) / 2 + 1
        i = j + 1
    return out


def set_row(result):
    """One set's line of the board from quality.py's per-set result (methods as keys)."""
    methods = {m: result[m] for m in ("gmvc",) + PEERS if m in result and "acc_mean" in result[m]}
    peers = {m: s for m, s in methods.items() if m != "gmvc"}
    row = {"set": result["set"], "kind": result.get("kind"), "N": result.get("num_samples"),
           "K": result.get("num_clusters"), "methods": methods,
           "ranks": ranks({m: s["acc_mean"] for m, s in methods.items()})}
    if peers:
        best = max(peers, key=lambda m: peers[m]["acc_mean"])
        row["best_peer"], row["best_peer_acc"] = best, peers[best]["acc_mean"]
        if "gmvc" in methods:
            row["gap"] = round(methods["gmvc"]["acc_mean"] - peers[best]["acc_mean"], 4)
    return row


def board(results):
    """The scoreboard from quality.py's per-set results."""
    rows = [set_row(r) for r in results]
    names = [m for m in ("gmvc",) + PEERS if any(m in r["methods"] for r in rows)]
    common = [r for r in rows if all(m in r["methods"] for m in names)]
    methods = {}
    for m in names:
        figures = [r["methods"][m] for r in common]
        summary = {f"mean_{k}": round(float(np.mean([f[f"{k}_mean"] for f in figures])), 2 if k == "seconds" else 4)
                   if figures else None
                   for k in METRICS + ("seconds",)}
        summary["mean_rank"] = round(float(np.mean([r["ranks"][m] for r in common])), 3) if common else None
        summary["sets"] = sum(m in r["methods"] for r in rows)
        methods[m] = summary
    out = {"methods": methods, "common_sets": [r["set"] for r in common],
           "left_out": {r["set"]: sorted(set(names) - set(r["methods"])) for r in rows if r not in common}}
    gaps = [r["gap"] for r in rows if "gap" in r]
    if gaps:
        out["gmvc_vs_best_peer"] = {"mean_gap": round(float(np.mean(gaps)), 4),
                                    "sets_at_or_above": sum(g >= 0 for g in gaps), "sets": len(gaps)}
    out["sets"] = rows
    return out


def _cell(s, std=True):
    if s is None:
        return "–"
    return f"{s['acc_mean']:.3f} ({s['acc_std']:.3f})" if std and "acc_std" in s else f"{s['acc_mean']:.3f}"


def table(score):
    """The board as a Markdown table: gmvc's figures, each peer's ACC (std), the best peer and the
    gap, then each method's mean ACC, mean rank and seconds a fit over the common sets."""
    names = list(score["methods"])
    with_gmvc = "gmvc" in names
    peers = [m for m in names if m != "gmvc"]
    head = (["set", "kind", "N", "K"] + (["gmvc ACC", "NMI", "ARI", "s/fit"] if with_gmvc else [])
            + [LABELS[m] for m in peers] + ["best peer", "gap"])
    lines = [_line(head), "|" + " --- |" * len(head)]
    for r in score["sets"]:
        cells = [r["set"], r["kind"] or "", str(r["N"]), str(r["K"])]
        g = r["methods"].get("gmvc")
        if with_gmvc:
            cells += ([_cell(g), f"{g['nmi_mean']:.3f}", f"{g['ari_mean']:.3f}", f"{g['seconds_mean']:.0f}"]
                      if g else ["–"] * 4)
        cells += [_cell(r["methods"].get(m)) for m in peers]
        cells += [LABELS.get(r.get("best_peer"), "–"), f"{r['gap']:+.3f}" if "gap" in r else "–"]
        lines.append(_line(cells))
    n = len(score["common_sets"])
    sets = f"{n} set{'s' if n != 1 else ''}"
    for label, key, fmt in ((f"mean ACC ({sets})", "mean_acc", "{:.3f}"), ("mean rank", "mean_rank", "{:.2f}"),
                            ("seconds a fit", "mean_seconds", "{:.1f}")):
        values = [fmt.format(score["methods"][m][key]) if score["methods"][m][key] is not None else "–"
                  for m in names]
        if with_gmvc:
            values[1:1] = ["", "", ""]        # under NMI, ARI, s/fit
        lines.append(_line([label, "", "", ""] + values + ["", ""]))
    notes = []
    if score["left_out"]:
        notes.append(f"The means and ranks are over the {sets} where every method has a figure; left out: "
                     + ", ".join(f"{s} (no {', '.join(LABELS[m] for m in ms)})" for s, ms in score["left_out"].items())
                     + ".")
    versus = score.get("gmvc_vs_best_peer")
    if versus:
        notes.append(f"gmvc's mean gap to the best peer: {versus['mean_gap']:+.3f} ACC; at or above it on "
                     f"{versus['sets_at_or_above']} of {versus['sets']} sets.")
    return "\n".join(lines + ([""] + notes if notes else []))


def _line(cells):
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/scoreboard.py SCOREBOARD.json   (prints its Markdown table)")
    print(table(json.loads(pathlib.Path(sys.argv[1]).read_text())))
