"""The thread policy: the CPUs a process may use, the other vaelab processes running, the
`threads` setting, following the share as processes start and end, and where it is said and
recorded. Fake cgroup files, registries in temporary folders and injected clocks: nothing
here depends on the machine's speed or load."""

import argparse
import doctest
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import vaelab
from vaelab import runtime
from vaelab.api import Run
from vaelab.cli import _threads, build_parser, main
from vaelab.runtime import (
    ThreadChoice,
    ThreadPolicy,
    cgroup_cpus,
    choose_threads,
    count_peers,
    cpu_budget,
    rebalance_threads,
    register,
    unregister,
    usable_cpus,
)

TORCHRUN = {"TORCHELASTIC_RUN_ID": "job", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.fixture
def sleeper():
    """A live process that is not this one; killed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def entry_for(folder: Path, pid: int, *, started=None, on_demand=False, job=None) -> Path:
    """A registry entry as `register` writes it, for another process."""
    folder.mkdir(parents=True, exist_ok=True)
    started = runtime._start_time(pid) if started is None else started
    path = folder / str(pid)
    path.write_text(json.dumps({"started": started, "on_demand": on_demand, "job": job}))
    return path


@pytest.fixture
def no_omp(monkeypatch):
    for name in ("OMP_NUM_THREADS", *TORCHRUN):
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------- CPUs


@pytest.mark.parametrize("files, quota", [
    ({}, None),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "garbage\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 0.5),
])
def test_cgroup_quota_v1_and_v2(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpus(tmp_path) == quota


@pytest.mark.parametrize("quota, expected", [(None, 8), ("max", 8), ("250000", 2), ("50000", 1), ("1600000", 8)])
def test_usable_cpus_is_the_affinity_capped_by_the_quota_and_at_least_one(tmp_path, quota, expected):
    if quota is not None:
        (tmp_path / "cpu.max").write_text(f"{quota} 100000\n")
    assert usable_cpus(set(range(8)), cgroup=tmp_path) == expected


def test_usable_cpus_reads_this_process_affinity():
    assert usable_cpus(cgroup="/nonexistent") == len(os.sched_getaffinity(0))


# ----------------------------------------------------------------------------- the registry


def test_live_peers_count_and_dead_or_reused_entries_are_removed(tmp_path, sleeper):
    folder = tmp_path / "reg"
    assert count_peers(folder) == 0  # no folder yet
    mine = register(folder)
    assert mine == folder / str(os.getpid()) and count_peers(folder) == 0  # oneself is no peer
    live = entry_for(folder, sleeper.pid)
    (folder / "notes.txt").write_text("not an entry")
    (folder / "123x").write_text("{}")
    assert count_peers(folder) == 1
    # a pid that now belongs to another process (another start time) is not the registered one
    reused = entry_for(folder, os.getppid(), started="1")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = entry_for(folder, dead.pid, started="12345")
    broken = folder / "99999999"
    broken.write_text("{not json")
    assert count_peers(folder) == 1
    assert not reused.exists() and not stale.exists() and live.exists()
    sleeper.kill()
    sleeper.wait()
    assert count_peers(folder) == 0 and not live.exists()
    unregister(mine)
    assert not mine.exists()
    unregister(mine)  # twice: nothing to do


def test_an_on_demand_process_counts_only_while_it_works(tmp_path, sleeper):
    folder = tmp_path / "reg"
    path = entry_for(folder, sleeper.pid, on_demand=True)
    os.utime(path, (1000, 1000))
    assert count_peers(folder, now=1000 + runtime.ON_DEMAND_WINDOW_S - 1) == 1
    assert count_peers(folder, now=1000 + runtime.ON_DEMAND_WINDOW_S + 1) == 0


def test_register_of_an_on_demand_process_starts_idle_and_touch_makes_it_busy(tmp_path):
    clock = [100.0]
    with ThreadPolicy(1, on_demand=True, folder=tmp_path, clock=lambda: clock[0]) as policy:
        assert policy.entry.stat().st_mtime == 0
        policy.check()
        assert time.time() - policy.entry.stat().st_mtime < 60


def test_workers_of_ones_own_torchrun_job_are_not_peers(tmp_path, monkeypatch, sleeper):
    folder = tmp_path / "reg"
    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    sibling = entry_for(folder, sleeper.pid, job=runtime._job())
    assert count_peers(folder) == 0 and sibling.exists()
    sibling.write_text(json.dumps({"started": runtime._start_time(sleeper.pid), "on_demand": False,
                                   "job": "another@127.0.0.1:29501"}))
    assert count_peers(folder) == 1


def test_the_registry_is_per_user_under_the_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert runtime.registry_folder() == tmp_path / f"vaelab-{os.getuid()}" / "processes"


# ----------------------------------------------------------------------------- the choice


def test_the_fair_share_divides_the_cpus_among_the_processes():
    assert choose_threads(cpus=2, peers=0, env={}) == ThreadChoice(2, 2, 0, "auto")
    assert choose_threads(cpus=2, peers=1, env={}) == ThreadChoice(1, 2, 1, "auto")
    assert choose_threads(cpus=2, peers=5, env={}).threads == 1  # never 0
    assert choose_threads(cpus=16, peers=3, env={}).threads == 4
    # under torchrun the job's workers on this machine share the CPUs among themselves too
    assert choose_threads(cpus=16, peers=0, env=TORCHRUN) == ThreadChoice(8, 16, 1, "auto")
    assert choose_threads(cpus=16, peers=2, env=TORCHRUN).threads == 4


def test_precedence_asked_then_exported_omp_then_auto():
    assert choose_threads(3, cpus=2, peers=1, env={"OMP_NUM_THREADS": "1"}) == ThreadChoice(3, 2, 0, "asked")
    assert choose_threads(0, cpus=2, peers=1, env={"OMP_NUM_THREADS": "2"}) == ThreadChoice(2, 2, 0, "OMP_NUM_THREADS")
    assert choose_threads(0, cpus=2, peers=1, env={"OMP_NUM_THREADS": "x"}).reason == "auto"
    assert choose_threads(0, cpus=2, peers=1, env={"OMP_NUM_THREADS": "0"}).reason == "auto"
    # torchrun's own OMP_NUM_THREADS=1 for each of several workers is not the user's choice
    assert choose_threads(0, cpus=8, peers=0, env={**TORCHRUN, "OMP_NUM_THREADS": "1"}) == \
        ThreadChoice(4, 8, 1, "auto")
    assert choose_threads(0, cpus=8, peers=0, env={**TORCHRUN, "OMP_NUM_THREADS": "3"}).reason == "OMP_NUM_THREADS"


def test_the_line_says_the_choice_and_why():
    assert ThreadChoice(1, 2, 1, "auto").line() == "threads: 1 of 2 CPUs (1 other vaelab process running)"
    assert ThreadChoice(1, 4, 3, "auto").line() == "threads: 1 of 4 CPUs (3 other vaelab processes running)"
    assert ThreadChoice(2, 2, 0, "auto").line() == "threads: 2 of 2 CPUs (no other vaelab process running)"
    assert "as asked with --threads" in ThreadChoice(4, 2, 0, "asked").line()
    assert "OMP_NUM_THREADS" in ThreadChoice(1, 2, 0, "OMP_NUM_THREADS").line()


# ----------------------------------------------------------------------------- following the share


def test_a_process_alone_shrinks_when_another_starts_and_grows_back_when_it_ends(tmp_path, no_omp):
    folder, clock = tmp_path / "reg", [0.0]
    torch.set_num_threads(3)
    peers = []
    try:
        with ThreadPolicy(folder=folder, cpus=2, interval=5.0, clock=lambda: clock[0]) as policy:
            assert policy.choice == ThreadChoice(2, 2, 0, "auto") and torch.get_num_threads() == 2
            assert (folder / str(os.getpid())).is_file()  # counted by the others
            peers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
            entry_for(folder, peers[0].pid)
            clock[0] = 4.9
            assert policy.check() is None and torch.get_num_threads() == 2  # not yet time to count
            clock[0] = 5.0
            assert policy.check() == ThreadChoice(1, 2, 1, "auto") and torch.get_num_threads() == 1
            clock[0] = 7.0
            assert rebalance_threads() is None
            peers[0].kill()
            peers[0].wait()
            assert rebalance_threads(force=True) == ThreadChoice(2, 2, 0, "auto")
            assert torch.get_num_threads() == 2 and cpu_budget() == 2
        assert torch.get_num_threads() == 3  # the setting from before, as a notebook kernel had it
        assert not (folder / str(os.getpid())).exists()
    finally:
        for p in peers:
            p.kill()
            p.wait()
        torch.set_num_threads(2)


def test_an_asked_count_is_kept_whatever_else_runs(tmp_path, no_omp, sleeper):
    folder, clock = tmp_path / "reg", [0.0]
    with ThreadPolicy(3, folder=folder, cpus=2, clock=lambda: clock[0]) as policy:
        entry_for(folder, sleeper.pid)
        clock[0] = 100
        assert policy.check() is None and torch.get_num_threads() == 3
        assert cpu_budget() == 3


def test_a_policy_inside_another_asking_nothing_leaves_the_outer_in_charge(tmp_path, no_omp):
    with ThreadPolicy(1, folder=tmp_path, cpus=2) as outer:
        with ThreadPolicy(folder=tmp_path, cpus=2) as inner:
            assert inner.choice is outer.choice and torch.get_num_threads() == 1
            assert inner.entry is None and rebalance_threads(force=True) is None
        with ThreadPolicy(2, folder=tmp_path, cpus=2):
            assert torch.get_num_threads() == 2 and outer.entry.is_file()
        assert torch.get_num_threads() == 1 and outer.entry.is_file()
    assert rebalance_threads() is None  # none in force


def test_decoding_workers_take_the_share_not_every_core(tmp_path, monkeypatch):
    from vaelab import images

    class NoPool:
        def __init__(self, *a, **k):
            raise AssertionError("a pool of worker processes was started")

    monkeypatch.setattr(images, "ProcessPoolExecutor", NoPool)
    jobs = list(range(300))
    with ThreadPolicy(1, folder=tmp_path):
        assert images._parallel(lambda j: j, jobs, "decoding", len(jobs), [1] * len(jobs), False) == jobs


# ----------------------------------------------------------------------------- training, the API and the CLI


def test_training_follows_the_share_between_epochs_and_records_it(tmp_path, monkeypatch, no_omp, capsys):
    """A second process starts after the first epoch: the next epoch runs on the smaller
    share, said in one line; run.json records the choice at the start."""
    run = tmp_path / "run"

    def peers(folder=None, now=None):  # another process once an epoch is on disk
        return 1 if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text() else 0

    monkeypatch.setattr(runtime, "count_peers", peers)
    monkeypatch.setattr(runtime, "usable_cpus", lambda *a, **k: 2)
    torch.set_num_threads(2)
    vaelab.train("mnist-sample", out=run, epochs=2, hidden=[16], latent_dim=2, progress=False)
    out = capsys.readouterr().out
    assert out.count("threads: 2 of 2 CPUs (no other vaelab process running)") == 1
    assert out.count("threads: 1 of 2 CPUs (1 other vaelab process running)") == 1
    assert [r["threads"] for r in Run(run).records()] == [2, 1]
    prov = json.loads((run / "run.json").read_text())
    assert prov["thread_choice"] == {"threads": 2, "cpus": 2, "other_processes": 0, "reason": "auto"}
    assert torch.get_num_threads() == 2


def test_a_notebook_kernel_gets_its_thread_setting_back(tmp_path):
    torch.set_num_threads(2)
    run = vaelab.train("mnist-sample", out=tmp_path / "run", epochs=1, hidden=[16], latent_dim=2, threads=1,
                       progress=False, quiet=True)
    assert torch.get_num_threads() == 2
    assert [r["threads"] for r in Run(run.path).records()] == [1]
    prov = json.loads((run.path / "run.json").read_text())
    assert prov["threads"] == 1 and prov["thread_choice"]["reason"] == "asked"


def test_train_threads_end_to_end_on_the_shipped_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--threads", "1", "--hidden", "16",
                 "--out", str(run), "--no-progress"]) == 0
    assert "threads: 1 of " in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["train"]["threads"] == 1
    assert json.loads((run / "run.json").read_text())["thread_choice"]["reason"] == "asked"
    # a machine setting: a resumed run may take another count
    assert main(["train", "--resume", str(run), "--epochs", "2", "--threads", "2", "--quiet"]) == 0
    assert "threads:" not in capsys.readouterr().out  # --quiet
    assert json.loads((run / "config.json").read_text())["train"]["threads"] == 2
    prov = json.loads((run / "run.json").read_text())
    assert prov["resumed"][0]["thread_choice"]["threads"] == 2


def test_every_command_doing_torch_work_takes_threads(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    extra = {"compare": ["--out", "c", "--epochs", "1", "x=--hidden 8"], "ood": [str(run), "--out-of", "mnist"],
             "encode": [str(run), "--out", "codes.npz"]}
    for command, parser in sub.choices.items():
        positional = [str(run)] if any(a.dest == "run_dir" for a in parser._actions) else []
        argv = [command, *extra.get(command, positional)]
        dest = "train.threads" if command == "train" else "threads"
        assert getattr(build_parser().parse_args(argv), dest) in (0, None), command  # 0 or unset: choose
        assert getattr(build_parser().parse_args([*argv, "--threads", "3"]), dest) == 3, command
    assert set(sub.choices) >= {"train", "evaluate", "score", "ood", "encode", "sample", "probe", "plot", "serve",
                                "compare"}


def test_a_command_runs_on_its_share_and_says_it(tmp_path, capsys, no_omp):
    run = vaelab.train("mnist-sample", out=tmp_path / "run", epochs=1, hidden=[16], latent_dim=2, progress=False,
                       quiet=True)
    capsys.readouterr()
    torch.set_num_threads(2)
    assert main(["sample", str(run.path), "--n", "4", "--out", str(tmp_path / "s.png"), "--threads", "1"]) == 0
    assert "threads: 1 of " in capsys.readouterr().out and torch.get_num_threads() == 2
    assert main(["evaluate", str(run.path), "--k", "2", "--n", "10", "--threads", "1", "--quiet"]) == 0
    assert "threads:" not in capsys.readouterr().out


def test_compare_passes_threads_to_its_runs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with _threads(argparse.Namespace(command="compare", threads=3)):
        assert os.environ["OMP_NUM_THREADS"] == "3"
        assert rebalance_threads() is None  # compare itself waits on its runs: it takes no share
    assert "OMP_NUM_THREADS" not in os.environ  # this process's environment is as it was
    with _threads(argparse.Namespace(command="compare", threads=0)):
        assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with _threads(argparse.Namespace(command="compare", threads=1)):
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "2"


# ----------------------------------------------------------------------------- the docstrings' examples


@pytest.mark.parametrize("name", ["cgroup_cpus", "usable_cpus", "register", "count_peers", "ThreadChoice",
                                  "choose_threads", "ThreadPolicy", "rebalance_threads", "active_threads",
                                  "cpu_budget"])
def test_the_examples_run(name, tmp_path, no_omp):
    obj = getattr(runtime, name)
    globs = {"tmp": str(tmp_path), "Path": Path, "os": os, **{k: getattr(runtime, k) for k in dir(runtime)}}
    tests = doctest.DocTestFinder(exclude_empty=True).find(obj, name, globs=globs)
    assert tests and tests[0].examples, name
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    assert runner.failures == 0, name


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_under_torchrun_the_workers_share_the_cpus_among_themselves(tmp_path):
    """torchrun gives each of several workers OMP_NUM_THREADS=1 when the user set none; the
    automatic choice counts the job's workers on this machine instead."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMP_NUM_THREADS")}
    run = tmp_path / "run"
    r = subprocess.run([shutil.which("torchrun"), "--standalone", "--nproc_per_node=2", "-m", "vaelab", "train",
                        "--dataset", "mnist-sample", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                        "--batch-size", "100", "--out", str(run), "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    choice = json.loads((run / "run.json").read_text())["thread_choice"]
    assert choice["reason"] == "auto" and choice["other_processes"] >= 1  # the other worker at least
    assert 1 <= choice["threads"] <= max(1, usable_cpus() // 2)
    assert r.stdout.count("threads: ") == 1  # rank 0 says it
