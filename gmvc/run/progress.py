"""Progress of a run: one line per chunk of steps on the terminal, one JSON record per chunk in
<workdir>/metrics.jsonl."""
import json
import math
import time

from gmvc.run import export


class Progress:
    """One line per chunk: step, steps/s, each term, ETA; also appended to metrics.jsonl."""

    def __init__(self, log_path, start_step, total_steps, echo=print, write=True):
        self.log_path, self.total, self.echo, self.write = log_path, total_steps, echo, write
        self.t0 = self.t_last = time.time()
        self.step_last = start_step
        if write:
            truncate_log(log_path, start_step)

    def __call__(self, step, values, phase="main"):
        now = time.time()
        first = self.t_last == self.t0    # the first chunk's time includes compilation
        rate = (step - self.step_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        record = {"step": step, "phase": phase, "steps_per_sec": round(rate, 2), "elapsed_s": round(now - self.t0, 2),
                  **values}
        if self.write:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        terms = " ".join(f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, float))
        note = " (incl. compile)" if first else ""
        self.echo(f"[{phase}] step {step}/{self.total} | {rate:.1f} steps/s{note} | ETA {format_time(eta)} | {terms}",
                  flush=True)
        return rate


def format_time(seconds):
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


def truncate_log(path, step):
    """On resume, drop log lines past the checkpoint: the resumed run logs those steps again."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    export.atomic_write_text(path, "".join(line + "\n" for line in keep))
