"""benchmarks/ladder.py in its tiny --quick form: every part runs and writes its result file
(a check of the script; nothing here is timed or compared with a target)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys

import pytest

from .conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("ladder")


def test_an_unknown_part_is_refused(bench):
    with pytest.raises(SystemExit):
        bench.parse(["speed,nope"])


def test_the_gpu_path_trains_in_bf16_with_compile_and_checks_on_a_cpu_in_fp32(bench):
    assert bench.gpu_flags("cuda") == ["--device", "cuda", "--precision", "bf16", "--compile"]
    assert bench.gpu_flags("cpu") == ["--device", "cpu", "--precision", "fp32"]


def first_call_real(real, here):
    """`real` for the first call, `here` (the same work in this process) for every later one:
    the script's process wrappers run once each, and the other runs skip the seconds of
    start-up a process of their own costs."""
    calls = []

    def call(*args, **kwargs):
        calls.append(args)
        return (real if len(calls) == 1 else here)(*args, **kwargs)

    return call


@pytest.fixture
def mostly_in_process(bench, monkeypatch):
    """benchmarks/common.vaelab and ladder.plain_loop: the first call of each in a process of
    its own, as the script makes them; the later ones in this process (`vaelab.cli.main`,
    `ladder._plain_loop`), with the same arguments and the same failure."""
    import torch

    from common import VaelabFailed  # benchmarks/common.py, on the path the bench fixture set
    from vaelab.cli import main

    def vaelab_here(*args, quiet=True, env=None, threads=None, check=True, capture=False):
        argv = [str(a) for a in args]
        if quiet and argv[0] in ("train", "evaluate") and "--quiet" not in argv:
            argv.append("--quiet")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        if check and code:
            raise VaelabFailed(f"{' '.join(argv)} exited with {code}:\n{err.getvalue()[-2000:]}")
        return subprocess.CompletedProcess([sys.executable, "-m", "vaelab", *argv], code, out.getvalue(),
                                           err.getvalue())

    def plain_loop_here(run, epochs, device="cpu", threads=2):
        before = torch.get_num_threads()
        try:
            return bench._plain_loop(str(run), int(epochs), device, int(threads))
        finally:
            torch.set_num_threads(before)

    monkeypatch.setattr(bench, "vaelab", first_call_real(bench.vaelab, vaelab_here))
    monkeypatch.setattr(bench, "plain_loop", first_call_real(bench.plain_loop, plain_loop_here))


def test_quick_mode_runs_every_part_and_records_its_command(bench, mostly_in_process, tmp_path):
    argv = ["speed,nll,ood,colour,gpu", "--quick", "--threads", "1", "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "out"), "--extra", "--hidden 4 --res-blocks 0"]
    written = bench.main(argv)
    parts = {p.name.split("-")[1]: json.loads(p.read_text()) for p in written}
    assert set(parts) == {"speed", "nll", "ood", "colour", "gpu"}
    assert all(r["command"].startswith("python benchmarks/ladder.py speed,nll,ood,colour,gpu --quick")
               and r["machine"]["cores"] for r in parts.values())
    speed = parts["speed"]["rows"]
    assert [r["recipe"] for r in speed] == ["binary-28x28", "colour-32x32"]
    assert all(r["ratio_to_plain_epoch"] > 0 and r["plain"]["steps_images_per_s"] > 0 for r in speed)
    best = parts["ood"]["best"]  # the report `vaelab ood` wrote is the one read back
    assert set(best) == {"mnist-sample vs mnist-sample-2", "mnist-sample vs noise", "mnist-sample vs constant"}
    assert all(0 <= b["mean"] <= 1 for b in best.values())
    nll = parts["nll"]["runs"][0]
    assert math.isfinite(nll["nll"]) and nll["k"] == 5 and len(nll["active_units_levels"]) == 3
    assert parts["colour"]["rows"]["ladder"]["bits_per_dim"] > 0 and parts["colour"]["bits_per_dim_lower_by"] is not None
    assert parts["gpu"]["flags"] == ["--device", "cpu", "--precision", "fp32"] and parts["gpu"]["bits_per_dim"]["value"] > 0
