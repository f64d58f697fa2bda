"""gmvc.run.progress: the progress line fits 100 columns, its ETA settles, and metrics.jsonl
keeps every value."""
import json

import numpy as np

from gmvc.run.progress import Progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_line_fits_100_columns_and_the_log_keeps_every_term(tmp_path):
    lines, clock = [], Clock()
    progress = Progress(tmp_path / "metrics.jsonl", 0, 123456, echo=lambda m, **k: lines.append(m), clock=clock)
    values = {f"term_number_{i}": float(i) * 1.2345 for i in range(30)}
    values.update({"loss": 12345.678, "elbo": -12345.678, "val_elbo": -12346.5})
    for step in (250, 500, 750):
        clock.now += 3.0
        progress(step, values, phase="a_phase_with_a_rather_long_name_indeed")
    assert all(len(line) <= 100 for line in lines), [len(line) for line in lines]
    assert lines[0].startswith("[a_phase_with_a_rather_long_name_indeed] 250/123456   0% | ETA ? | 83.3 steps/s incl")
    assert lines[1].startswith("[a_phase_with_a_rather_long_name_indeed] 500/123456   0% | ETA ")
    assert lines[2].endswith("…") and len(lines[2]) == 100            # cut, not wrapped
    short = Progress(tmp_path / "other.jsonl", 0, 2500, echo=lambda m, **k: None, write=False, clock=clock)
    typical = {**values, "loss": 23.28, "elbo": -23.1, "val_elbo": -24.05}
    assert short.line(250, typical, "main", clock.now, 83.3) == (
        "[main] 250/2500  10% | ETA ? | 83.3 steps/s incl. compile | loss=23.28 elbo=-23.1 val_elbo=-24.05")
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [250, 500, 750]
    assert all(r["term_number_29"] == values["term_number_29"] for r in logged)


def test_the_eta_settles_within_30_percent_after_a_fifth_of_the_run(tmp_path):
    """A run of 40 chunks: the first takes 60 s (compiling), the others 2 s +- 40% at random,
    with a phase twice as slow in the middle. From 20% of the run on, the ETA is within 30% of the
    time that really remains."""
    rng = np.random.default_rng(0)
    durations = [60.0] + [2.0 * (2.0 if 15 <= i < 25 else 1.0) * rng.uniform(0.6, 1.4) for i in range(1, 40)]
    clock, etas = Clock(), []
    progress = Progress(tmp_path / "metrics.jsonl", 0, 40 * 250, echo=lambda m, **k: None, write=False, clock=clock)
    for i, d in enumerate(durations):
        clock.now += d
        step = (i + 1) * 250
        progress(step, {"loss": 1.0})
        etas.append(progress.eta(step, clock.now)[0])
    for i in range(8, 39):                          # from 20% of the run on
        true_left = sum(durations[i + 1:])
        assert abs(etas[i] - true_left) <= 0.3 * true_left, (i, etas[i], true_left)


def test_the_bar_fits_100_columns_and_messages_go_above_it(tmp_path):
    import io
    out, clock = io.StringIO(), Clock()
    progress = Progress(tmp_path / "metrics.jsonl", 0, 1000, echo=print, clock=clock, bar=out)
    for step in range(100, 1001, 100):
        clock.now += 1.0
        progress(step, {"loss": 23.28, "elbo": -23.1, "val_elbo": -24.05, "recon": 19.1}, phase="pretrain")
        if step == 500:
            progress.say("phase 'gmm_init': mixture prior initialised from the embeddings (em)")
    progress.close()
    frames = [f for f in out.getvalue().replace("\r", "\n").split("\n") if f.strip()]
    assert frames and max(len(f) for f in frames) <= 100, max(frames, key=len)
    assert any(f.startswith("[pretrain] 100%|") and "1000/1000" in f and "loss=23.28 elbo=-23.1" in f
               for f in frames)
    assert "phase 'gmm_init': mixture prior initialised from the embeddings (em)" in frames
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 10


def test_a_run_with_a_bar(spiral_config, tmp_path, capsys):
    from gmvc.trainer import train_and_evaluate
    spiral_config.tensorboard.enabled = False
    train_and_evaluate(spiral_config, tmp_path, write_outputs=False, bar=True)
    printed = capsys.readouterr().out.replace("\r", "\n").splitlines()
    assert any(line.startswith("[main] 100%|") for line in printed)
    assert not any(line.startswith("[main] 200/200") for line in printed)        # the bar, not the lines
    assert printed[-1] == f"results: {tmp_path / 'results.json'}"
    assert max(len(line) for line in printed if line.startswith("[main]")) <= 100


def test_a_silent_run_with_a_bar_prints_the_bar_only(spiral_config, tmp_path, capsys):
    """What an estimator's default fit shows where a person watches: the bar, no messages."""
    from gmvc.trainer import train_and_evaluate
    spiral_config.tensorboard.enabled = False
    train_and_evaluate(spiral_config, tmp_path, echo=lambda *a, **k: None, write_outputs=False, bar=True)
    printed = [line for line in capsys.readouterr().out.replace("\r", "\n").splitlines() if line.strip()]
    assert printed and all(line.lstrip().startswith(("[main]", "0%")) for line in printed), printed


def test_the_writer_of_another_process_writes_and_prints_nothing(tmp_path):
    """gmvc.eval.writer.Writer: process 0's says and logs (metrics.jsonl, the progress line);
    every other process holds one that neither prints nor writes."""
    import types
    from gmvc.eval.writer import Writer
    train = types.SimpleNamespace(steps=100, log_every=50)
    ctx = types.SimpleNamespace(config=types.SimpleNamespace(train=train, tensorboard=types.SimpleNamespace(
        enabled=False, images_every=0)))
    for main in (True, False):
        lines, workdir = [], tmp_path / str(main)
        workdir.mkdir()
        writer = Writer(lambda m, **k: lines.append((m, k.get("flush"))), main)
        writer.say("before the progress line")
        writer.open(ctx, workdir, 0, bar=False, images=False)
        values = {"loss": 1.5}
        writer.log(50, "main", values, params={})
        writer.close()
        if main:
            assert lines[0] == ("before the progress line", True) and lines[1][0].startswith("[main] 50/100")
            assert json.loads((workdir / "metrics.jsonl").read_text())["loss"] == 1.5 and "steps_per_sec" in values
        else:
            assert lines == [] and list(workdir.iterdir()) == []
