"""Data-parallel training and evaluation with torchrun: 2 gloo processes on CPU give what
one process gives, and checkpoints move between process counts."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import metrics
from vaelab.cli import main

TINY = ["--dataset", "mnist-sample", "--hidden", "32", "--latent-dim", "4", "--batch-size", "100", "--quiet"]
TORCHRUN = shutil.which("torchrun")
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")


def torchrun_command(*args: str, n: int = 2) -> tuple[list[str], dict[str, str]]:
    """The torchrun command line and environment (no inherited rank, one thread per process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return [TORCHRUN, "--standalone", f"--nproc_per_node={n}", *args], env


def torchrun(*args: str, n: int = 2) -> subprocess.CompletedProcess:
    cmd, env = torchrun_command(*args, n=n)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def vaelab_ddp(*args: str, n: int = 2, script: bool = False) -> subprocess.CompletedProcess:
    """`torchrun -m vaelab ...`, or with `script` the installed command: `torchrun --no-python vaelab ...`."""
    launch = ("--no-python", shutil.which("vaelab") or "vaelab") if script else ("-m", "vaelab")
    r = torchrun(*launch, *map(str, args), n=n)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def elbos(run: Path) -> list[float]:
    return [r["test_elbo"] for r in metrics(run)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """Three epochs on one process: what every run on two processes is compared with."""
    run = tmp_path_factory.mktemp("one") / "run"
    assert main(["train", *TINY, "--epochs", "3", "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Two epochs on two processes (one torchrun job, shared by the tests that read it) and
    what the job printed."""
    run = tmp_path_factory.mktemp("two") / "ddp"
    return run, vaelab_ddp("train", *TINY, "--epochs", "2", "--out", run)


def test_gradients_are_identical_across_ranks_and_match_one_process(tmp_path):
    r = torchrun(str(Path(__file__).with_name("ddp_grads.py")), str(tmp_path / "g.json"))
    assert r.returncode == 0, r.stderr[-3000:]
    for kind, g in json.loads((tmp_path / "g.json").read_text()).items():
        assert g["same_on_all_ranks"], kind
        assert g["max_diff_vs_one_process"] < 1e-5 * g["grad_norm"], kind


def test_two_processes_log_the_test_elbo_of_one(one_process, two_processes):
    run, r = two_processes
    assert r.stdout.count("run folder:") == 1  # only rank 0 speaks
    a, b = elbos(one_process)[:2], elbos(run)
    assert len(a) == len(b) == 2 and max(abs(x - y) for x, y in zip(a, b)) < 1e-3
    assert json.loads((run / "run.json").read_text())["processes"] == 2


def test_two_processes_corrupt_the_images_one_process_corrupts(tmp_path):
    """--denoise draws its noise per (seed, step, image), so the training loss, which scores
    clean images under codes of corrupted ones, is the same on 1 and 2 processes."""
    flags = [*TINY, "--epochs", "1", "--denoise", "salt-pepper:0-0.5"]
    assert main(["train", *flags, "--out", str(tmp_path / "one")]) == 0
    vaelab_ddp("train", *flags, "--out", tmp_path / "two", script=True)  # the `vaelab` command under torchrun
    (one,), (two,) = (metrics(tmp_path / r) for r in ("one", "two"))
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-3)
    assert two["test_elbo"] == pytest.approx(one["test_elbo"], abs=1e-3)


def test_icvae_penalty_spans_the_global_batch_on_two_processes(tmp_path):
    """icvae's pairwise KL runs over the whole global batch (and test chunk), not each
    process's slice: its training loss and test loss are those of one process."""
    flags = [*TINY, "--model", "icvae", "--lambda", "5", "--batch-size", "37", "--epochs", "1"]
    assert main(["train", *flags, "--out", str(tmp_path / "one")]) == 0
    vaelab_ddp("train", *flags, "--out", tmp_path / "two")
    (one,), (two,) = (metrics(tmp_path / r) for r in ("one", "two"))
    for key in ("train_loss", "train_kl_marginal", "test_loss", "test_kl_marginal"):
        assert two[key] == pytest.approx(one[key], abs=1e-3), key


def test_checkpoints_resume_on_another_number_of_processes(one_process, two_processes, tmp_path):
    two_then_one = tmp_path / "a"  # a copy of the two-process run: the other test reads the original
    shutil.copytree(two_processes[0], two_then_one)
    assert main(["train", "--resume", str(two_then_one), "--epochs", "3", "--quiet"]) == 0
    one_then_two = tmp_path / "b"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(one_then_two)]) == 0
    vaelab_ddp("train", "--resume", one_then_two, "--epochs", "2", "--quiet")
    assert [len(elbos(run)) for run in (two_then_one, one_then_two)] == [3, 2]
    for run in (two_then_one, one_then_two):
        assert max(abs(x - y) for x, y in zip(elbos(run), elbos(one_process))) < 1e-3


def test_two_processes_stop_together_on_the_time_budget(tmp_path):
    """Under torchrun the budget stops every rank after the same epoch (rank 0 decides and
    shares it), and the job ends cleanly."""
    run = tmp_path / "budget"
    vaelab_ddp("train", *TINY, "--epochs", "3", "--minutes", "0.0001", "--out", run)
    assert len(elbos(run)) == 1


def test_sigterm_to_torchrun_stops_every_rank_once_and_resumes_exactly(tmp_path):
    """A scheduler's SIGTERM reaches torchrun, which passes it to the workers: they stop at
    the same step, rank 0 alone says so, the checkpoint is kept, and the run resumes (on
    one process) to the metrics of a run never stopped."""
    run = tmp_path / "stopped"
    cmd, env = torchrun_command("-m", "vaelab", "train", *TINY, "--epochs", "500", "--out", str(run))
    job = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        if len(metrics(run)) >= 2:
            break
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert err.count("SIGTERM received") == 1, err[-2000:]
    done = len(elbos(run))
    assert 2 <= done < 500
    assert main(["train", "--resume", str(run), "--epochs", str(done + 1), "--quiet"]) == 0
    ref = tmp_path / "ref"
    assert main(["train", *TINY, "--epochs", str(done + 1), "--out", str(ref)]) == 0
    assert max(abs(x - y) for x, y in zip(elbos(run), elbos(ref))) < 1e-3


def test_a_settings_error_under_torchrun_is_one_line_from_rank_0(tmp_path):
    r = torchrun("-m", "vaelab", "train", *TINY, "--batch-size", "1", "--out", str(tmp_path / "r"))
    assert r.returncode != 0
    assert r.stderr.count("vaelab train: error: a global batch of 1 cannot be split over 2 processes") == 1


def test_distributed_evaluate_writes_the_same_eval_json(one_process, tmp_path):
    assert main(["evaluate", str(one_process), "--k", "20", "--n", "101", "--quiet"]) == 0
    single = json.loads((one_process / "eval-k20-n101.json").read_text())
    vaelab_ddp("evaluate", one_process, "--k", "20", "--n-images", "101", "--quiet")
    sharded = json.loads((one_process / "eval-k20-n101.json").read_text())
    for key in single:
        if isinstance(single[key], float) and key != "seconds":
            assert sharded[key] == pytest.approx(single[key], rel=1e-6, abs=1e-6), key
        elif key != "seconds":
            assert sharded[key] == single[key], key


def test_python_m_vaelab_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "vaelab", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("vaelab ")


def test_compiled_step_trains_like_the_eager_one(one_process, tmp_path):
    """--compile is the GPU speed path; its logic runs on CPU too (a one-off compile of ~10 s)."""
    run = tmp_path / "compiled"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run), "--compile"]) == 0
    assert max(abs(x - y) for x, y in zip(elbos(run), elbos(one_process))) < 1e-3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_keeps_the_math_in_fp32(tmp_path, precision):
    """Autocast covers the networks only: every term the objective returns is fp32, and
    fp16 training runs through the gradient scaler (the GPU paths, exercised on CPU)."""
    import torch

    from vaelab.config import ModelConfig
    from vaelab.models import build_model
    from vaelab.objectives import Objective

    model = build_model(ModelConfig(hidden=(16,), decoder_hidden=None, latent_dim=3), (1, 6, 6))
    model.set_precision(torch.bfloat16 if precision == "bf16" else torch.float16)
    x = (torch.rand(8, 1, 6, 6) < 0.4).float()
    model.objective = Objective("iwae", {"samples": 4})
    terms = model(x)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in terms.values())
    run = tmp_path / precision
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run), "--precision", precision]) == 0
    assert -600 < elbos(run)[0] < -100


def _parent(proc: Path) -> int | None:
    try:
        return int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_a_rank_killed_ends_the_other_in_one_line_and_the_run_resumes(tmp_path):
    """kill -9 of one worker: the surviving rank says in one line which rank was lost and how
    to resume (no gloo traceback of its own); the checkpoint it kept resumes."""
    run = tmp_path / "lost"
    cmd, env = torchrun_command("-m", "vaelab", "train", *TINY, "--epochs", "500", "--out", str(run))
    job = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 300  # a bound against a hang, not a speed requirement
    while time.monotonic() < deadline and job.poll() is None:
        if metrics(run):
            break
        time.sleep(0.2)
    workers = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == job.pid]
    victim = next(int(p) for p in workers if b"RANK=1" in Path(f"/proc/{p}/environ").read_bytes().split(b"\0"))
    os.kill(victim, signal.SIGKILL)
    _, err = job.communicate(timeout=180)
    ours = [line for line in err.splitlines() if "vaelab train" in line or "[rank0]" in line]
    assert len(ours) == 1 and "lost rank 1" in ours[0] and f"--resume {run}" in ours[0], err[-3000:]
    assert "[rank0]: Traceback" not in err
    done = len(elbos(run))
    assert main(["train", "--resume", str(run), "--epochs", str(done + 1), "--quiet"]) == 0
    assert len(elbos(run)) == done + 1


def test_scores_on_two_processes_are_the_scores_of_one(tmp_path):
    run = tmp_path / "h"
    assert main(["train", *TINY, "--model", "hvae", "--lower-latents", "6", "--epochs", "1", "--out", str(run)]) == 0
    assert main(["score", str(run), "--k", "7", "--n", "53", "--out", str(tmp_path / "one.csv"), "--quiet"]) == 0
    vaelab_ddp("score", run, "--k", "7", "--n-images", "53", "--out", tmp_path / "two.csv", "--quiet")
    one, two = (tmp_path / "one.csv").read_text(), (tmp_path / "two.csv").read_text()
    assert one.count("\n") == 54
    rows = [[line.split(","), other.split(",")] for line, other in zip(one.splitlines(), two.splitlines())]
    for a, b in rows[1:]:
        assert a[:3] == b[:3]  # split, index, label
        assert [float(v) for v in a[3:]] == pytest.approx([float(v) for v in b[3:]], rel=1e-5, abs=1e-4)
