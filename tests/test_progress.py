"""Progress lines in logs: every long command says what it does, n of N, the rate and an ETA,
the first line after 5 s and then every 30 s, when stdout is a file or a pipe; nothing on a
terminal (the bar shows it), in Jupyter, under --quiet or on ranks other than 0. Every clock
here is fake: nothing depends on this machine's speed."""

import io
import json
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import vaelab
from vaelab.cli import main
from vaelab.runlog import ProgressLog
from vaelab.runtime import FIRST_LINE_S, LINE_S, ProgressLine

LINE = re.compile(r"^(?P<what>.+): (?P<n>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\w+)  (?P<rate>[\d.,]+) (?P=unit)/s  "
                  r"ETA (?P<eta>\d+:\d\d(:\d\d)?)$")


class Clock:
    """Each look at it: `tick` seconds later."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


class Log(io.StringIO):
    """stdout redirected to a file: what was printed, each line with the clock's time then."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock, self.stamped = clock, []

    def write(self, s: str) -> int:
        self.stamped += [(self.clock.now, line) for line in s.splitlines() if line]
        return super().write(s)


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(ProgressLine, "clock", staticmethod(c))
    return c


def redirect(clock: Clock, monkeypatch) -> Log:
    """stdout and stderr to files; each start of a ProgressLine's timing is recorded. Called in
    the test itself: pytest sets its own stdout again between a fixture and the test."""
    out = Log(clock)
    out.starts = []
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    restart = ProgressLine.restart

    def recorded(self):
        restart(self)
        if self.show:
            out.starts.append((self.start, self.what))
    monkeypatch.setattr(ProgressLine, "restart", recorded)
    return out


def progress_lines(log: Log) -> list[dict]:
    """The progress lines printed, each checked against the rule: the first of a piece of work
    FIRST_LINE_S after it started, the next LINE_S after the one before; its rate is n over
    the time since the start and its ETA the rest at that rate."""
    found = []
    for t, text in log.stamped:
        m = LINE.match(text)
        if not m:
            continue
        line = {**m.groupdict(), "t": t, "text": text}
        start = max(s for s, what in log.starts if what == line["what"] and s <= t)
        before = [f for f in found if f["what"] == line["what"] and f["t"] >= start]
        assert t - (before[-1]["t"] if before else start) >= (LINE_S if before else FIRST_LINE_S), text
        n, total = int(line["n"].replace(",", "")), int(line["total"].replace(",", ""))
        assert 0 < n < total, text
        rate = n / (t - start)
        assert line["rate"] == (f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"), text
        minutes, seconds = divmod(round((total - n) / rate), 60)
        assert line["eta"] == f"{minutes}:{seconds:02d}", text
        found.append(line)
    return found


# ----------------------------------------------------------------------------- the rule


def test_a_progress_line_comes_after_5_s_then_every_30_s_with_n_of_n_rate_and_eta(clock, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    line = ProgressLine("scoring fashion_mnist test", 10_000)
    printed = []
    for _ in range(100):  # 100 images every 2 s
        clock.now += 2
        line.update(100)
        if out.getvalue():
            printed.append((line.done, out.getvalue()))
            out.seek(0), out.truncate()
    assert [n for n, _ in printed] == list(range(300, 10_000, 1500))  # at 6 s, 36 s, 66 s, ...
    assert printed[0][1] == "scoring fashion_mnist test: 300/10,000 images  50 images/s  ETA 3:14\n"
    assert printed[1][1] == "scoring fashion_mnist test: 1,800/10,000 images  50 images/s  ETA 2:44\n"
    assert printed[-1][0] < 10_000  # none at the end: the result follows


def test_rates_below_ten_keep_two_digits_and_long_etas_show_hours(clock, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    line = ProgressLine("training the probe", 500, "epochs")
    clock.now = 40
    line.update(1)
    assert out.getvalue() == "training the probe: 1/500 epochs  0.025 epochs/s  ETA 5:32:40\n"


@pytest.mark.parametrize("where", ["quiet", "terminal", "jupyter", "rank 1"])
def test_no_progress_lines_when_quiet_on_a_terminal_in_jupyter_or_on_another_rank(where, clock, monkeypatch):
    out = Terminal() if where == "terminal" else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", Terminal() if where == "terminal" else io.StringIO())
    if where == "jupyter":
        kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
        monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    if where == "rank 1":
        monkeypatch.setenv("RANK", "1")
    bar = types.SimpleNamespace(n=0, update=lambda k: setattr(bar, "n", bar.n + k), close=lambda: None)
    with ProgressLine("encoding", 1000, show=where != "quiet", bar=bar) as line:
        for _ in range(10):
            clock.now += 60
            line.update(10)
    assert out.getvalue() == "" and line.done == 100 and bar.n == 100  # still counted, and the bar drawn


def test_training_lines_follow_the_same_clock(clock, monkeypatch, capsys):
    log = ProgressLog(epochs=2, steps_per_epoch=100, batch_size=10, show=True)
    log.start_epoch(1)
    terms = {"loss": torch.full((10,), 5.0)}
    for i in range(1, 101):
        clock.now += 1
        log.step(i, terms)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[1] for line in lines] == ["step 5/100", "step 35/100", "step 65/100", "step 95/100"]


# ----------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("progress") / "run"
    assert main(["train", "--dataset", "mnist-sample", "--hidden", "32", "--latent-dim", "4", "--epochs", "1",
                 "--quiet", "--out", str(out)]) == 0
    return out


def noise(tmp) -> str:
    """An array file of 600 noise images of MNIST's shape: data of another kind."""
    path = f"{tmp}/noise.npy"
    np.save(path, np.random.default_rng(0).random((600, 28, 28)).astype(np.float32))
    return path


def commands(run, tmp):
    """Each long command on the tiny run, and the pieces of work it reports (patterns)."""
    return {
        "evaluate": (["evaluate", str(run), "--k", "10"], [r"evaluating mnist-sample test \(ELBO and IS-NLL, k=10\)"]),
        "score": (["score", str(run), "--split", "all", "--k", "5", "--out", f"{tmp}/s.csv"],
                  ["scoring mnist-sample train", "scoring mnist-sample test"]),
        "ood": (["ood", str(run), "--out-of", noise(tmp), "--k", "5", "--n", "400"],
                ["scoring mnist-sample test", r"scoring \S*noise\S* train", "scoring mnist-sample train"]),
        "encode": (["encode", str(run), "--split", "all", "--out", f"{tmp}/codes.npz"], ["encoding mnist-sample train"]),
        "plot": (["plot", str(run), "--what", "latents,denoise", "--out", f"{tmp}/plots"],
                 ["drawing figures of run", "denoise figure: reconstructing 500 test images"]),
        "probe": (["probe", str(run), "--probe-epochs", "3"],
                  ["training the probe on the codes of 2,000 mnist-sample images"]),
    }


@pytest.mark.parametrize("command", ["evaluate", "score", "ood", "encode", "plot", "probe"])
def test_every_long_command_prints_progress_lines_in_a_log(command, run, tmp_path, clock, monkeypatch):
    log = redirect(clock, monkeypatch)
    clock.tick = 5.0  # every look at the clock: 5 s later
    args, pieces = commands(run, tmp_path)[command]
    assert main(args) == 0
    found = progress_lines(log)
    said = {f["what"] for f in found}
    assert all(any(re.fullmatch(p, what) for p in pieces) for what in said), log.getvalue()
    assert all(any(re.fullmatch(p, what) for what in said) for p in pieces), log.getvalue()


@pytest.mark.parametrize("command", ["evaluate", "score", "ood", "encode", "plot", "probe"])
@pytest.mark.parametrize("where", ["terminal", "--quiet"])
def test_no_progress_lines_on_a_terminal_or_with_quiet(command, where, run, tmp_path, clock, monkeypatch):
    if where == "--quiet" and command in ("plot", "probe"):
        pytest.skip("plot and probe have no --quiet")
    clock.tick = 5.0
    out = Terminal() if where == "terminal" else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", Terminal() if where == "terminal" else io.StringIO())
    args, _ = commands(run, tmp_path)[command]
    assert main(args + ([where] if where == "--quiet" else [])) == 0
    assert not [line for line in out.getvalue().splitlines() if LINE.match(line)], out.getvalue()


def test_building_the_cache_of_a_large_folder_prints_progress_lines(tmp_path, clock, monkeypatch):
    log = redirect(clock, monkeypatch)
    from PIL import Image

    from vaelab.images import Transform, load_folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "dots"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(600):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"{i:03d}.png")
    clock.tick = 5.0
    data = load_folder(root, Transform(None, 1, "black", 0.1))
    assert len(data.train) + len(data.test) == 600
    found = progress_lines(log)
    said = {f["what"] for f in found}
    assert "decoding train" in said and said <= {"reading headers", "decoding train", "decoding test"}
    assert "later runs reuse the cache" in log.getvalue()


def test_compare_passes_each_runs_progress_to_the_log_with_a_line_per_run(tmp_path, clock, monkeypatch):
    log = redirect(clock, monkeypatch)
    # the runs are processes of their own: their clock ticks 5 s a look too
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import itertools\nfrom vaelab.runtime import ProgressLine\n_ticks = itertools.count(0, 5)\n"
        "ProgressLine.clock = staticmethod(lambda: float(next(_ticks)))\n")
    src = Path(vaelab.__file__).parents[1]  # the vaelab under test
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), str(src), os.environ.get("PYTHONPATH", "")]))
    clock.tick = 60.0
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--epochs", "1", "--seeds", "0,1", "--k", "5", "--n", "300",
                 "--base=--dataset=mnist-sample --latent-dim 4 --batch-size 250", "tiny=--hidden 16"]) == 0
    text = log.getvalue().splitlines()
    assert "run 1/2  tiny seed 0: training to 1 epochs" in text
    assert "run 1/2  tiny seed 0: finished (1 of 2 runs done in 1:00, ETA 1:00)" in text
    assert "run 2/2  tiny seed 1: finished (2 of 2 runs done in 2:00, ETA 0:00)" in text
    for seed in (0, 1):  # each run's training and evaluation progress, marked with the run
        mine = [line for line in text if line.startswith(f"  tiny seed {seed} | ")]
        assert any(line.startswith(f"  tiny seed {seed} | epoch 1/1  step ") and "run left" in line for line in mine)
        assert any(LINE.match(line.split(" | ", 1)[1]) for line in mine), mine
    assert json.loads((out / "compare.json").read_text())["table"][0]["seeds"] == 2
