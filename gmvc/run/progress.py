"""Progress of a run: one line per chunk of steps on the terminal, one JSON record per chunk in
<workdir>/metrics.jsonl."""
import json
import math
import sys
import time

from gmvc.run import export


class Progress:
    """One line per chunk of steps, at most WIDTH columns: the phase, the step, a smoothed ETA,
    the loss and the ELBO (training, validation) where they are known. Every value of the chunk,
    every term included, goes to metrics.jsonl (and TensorBoard)."""

    WIDTH = 100
    KEY_TERMS = ("loss", "elbo", "val_elbo")

    def __init__(self, log_path, start_step, total_steps, echo=print, write=True, clock=time.time, bar=None):
        """`bar`: None, or a file (sys.stdout where a person watches, see attended()) to draw a
        tqdm bar on in place of the lines; the run's other messages then go above it (self.say)."""
        self.log_path, self.total, self.echo, self.write, self.clock = log_path, total_steps, echo, write, clock
        self.t0 = self.t_last = clock()
        self.step_last = start_step
        self.since = None              # (time, step) at the end of the first chunk, which includes compiling
        self.bar = None
        if bar is not None:
            tqdm = _tqdm_class()
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", ncols=bar_width(self.WIDTH), file=bar,
                            mininterval=0.2, bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                                        "[{elapsed}{postfix}]")
        if write:
            truncate_log(log_path, start_step)

    def say(self, *args, **kwargs):
        """The run's other messages, as `echo` would print them: above the bar when there is one."""
        if self.bar is not None and self.echo is print:
            self.bar.write(" ".join(map(str, args)), file=self.bar.fp)
        else:
            self.echo(*args, **kwargs)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def __call__(self, step, values, phase="main"):
        """Log the chunk that ended at `step`; returns its steps per second."""
        now = self.clock()
        rate = (step - self.step_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step
        record = {"step": step, "phase": phase, "steps_per_sec": round(rate, 2), "elapsed_s": round(now - self.t0, 2),
                  **values}
        if self.write:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.bar is None:
            self.echo(self.line(step, values, phase, now, rate), flush=True)
        else:
            self.bar.set_description_str(f"[{phase}]", refresh=False)
            self.bar.set_postfix_str(f"ETA {format_time(self.eta(step, now)[0])} {self.key_terms(values)}",
                                     refresh=False)
            self.bar.update(step - self.bar.n)
        return rate

    def eta(self, step, now):
        """(seconds left, steps per second) at the average rate since the first chunk, whose time
        is mostly compiling: steadier than the last chunk's rate, which jumps at phase changes.
        (nan, nan) at the first chunk."""
        if self.since is None:
            self.since = (now, step)
        t, s = self.since
        if step <= s:
            return float("nan"), float("nan")
        average = (step - s) / max(now - t, 1e-9)
        return (self.total - step) / average, average

    def key_terms(self, values):
        return " ".join(f"{k}={values[k]:.4g}" for k in self.KEY_TERMS if isinstance(values.get(k), float))

    def line(self, step, values, phase, now, chunk_rate):
        left, average = self.eta(step, now)
        speed = f"{chunk_rate:.1f} steps/s incl. compile" if math.isnan(average) else f"{average:.1f} steps/s"
        text = (f"[{phase}] {step}/{self.total} {100.0 * step / max(self.total, 1):3.0f}% | ETA {format_time(left)} | "
                f"{speed} | {self.key_terms(values)}")
        return text if len(text) <= self.WIDTH else text[: self.WIDTH - 1] + "…"


def _tqdm_class():
    """tqdm's notebook widget where Jupyter can draw it (ipywidgets), else its text bar."""
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm import tqdm
    return tqdm


def attended():
    """Whether a person watches the output: a terminal, or a Jupyter notebook's cell."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    if shell is not None and "IPKernelApp" in getattr(shell, "config", {}):
        return True
    return hasattr(sys.stdout, "isatty") and sys.stdout.isatty()


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


def bar_width(widest):
    """The terminal's width (COLUMNS, else the terminal's own), at most `widest` columns: a bar
    wider than the terminal wraps onto a new line at every update."""
    import shutil
    return max(20, min(widest, shutil.get_terminal_size((widest, 24)).columns))
