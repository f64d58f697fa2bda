"""What a run with model.num_clusters=auto says and draws about K: the one-line report and
k_selection.png (gmvc/training/k_auto.py makes the record)."""
from gmvc.run.export import new_figure


def report(summary):
    """One line: the K found, how the moves went, and whether the evidence was weak."""
    moves = summary["moves"]
    counts = {m: sum(1 for t in moves if t["move"] == m) for m in ("retire", "merge", "split")}
    weak = summary["weak_moves"]
    evidence = (f"; weak evidence: {weak} of {len(moves)} accepted moves scored within the margin of their "
                f"threshold, so K is uncertain" if weak else "")
    stop = "the moves had stopped" if summary["stopped"] else "the moves were still changing K at the end"
    return (f"K found: {summary['k']} of {summary['k_max']} slots ({counts['retire']} retired, {counts['merge']} "
            f"merges, {counts['split']} splits; {stop}){evidence}")


def plot(summary, outdir):
    """k_selection.png: K over the steps, and the score of every move tested (accepted filled,
    refused hollow) against its threshold."""
    path = outdir / "k_selection.png"
    fig, _ = new_figure((13, 3.6))
    fig.clear()
    axes = fig.subplots(1, 3)
    steps = [p["step"] for p in summary["path"]]
    axes[0].step(steps, [p["k"] for p in summary["path"]], where="post", color="k")
    axes[0].set(xlabel="step", ylabel="K (live components)", title=f"K over training: {summary['k']} at the end")
    hastings = summary["settings"]["merge_test"] == "hastings"
    for ax, move, label, threshold in ((axes[1], "merge", "log H (merge above)" if hastings else
                                        "valley ratio (merge at or above)",
                                        0.0 if hastings else summary["settings"]["merge_ratio"]),
                                       (axes[2], "split", "log H (split above)", summary["settings"]["split_margin"])):
        tests = [t for t in summary.get("tests", []) if t["move"] == move]
        for accepted, style in ((False, dict(facecolors="none", edgecolors="0.5")), (True, dict(color="C3"))):
            pts = [(t["step"], t["score"]) for t in tests if t["accepted"] == accepted]
            if pts:
                ax.scatter(*zip(*pts), s=14, label="accepted" if accepted else "refused", **style)
        ax.axhline(threshold, color="C0", lw=1)
        ax.set(xlabel="step", ylabel=label, title=f"{move} tests")
        if tests:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path
