"""Faults end cleanly: damaged run files, bad output paths, full disks, kills, signals, locks.

Every case checks the user-facing contract: exit code 2 (or the signal's code), one line
on stderr naming the file and the fix, no traceback, nothing lost, and a run that resumes
to the same metrics as an uninterrupted one.
"""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import metrics
from vaelab.cli import main

TINY = ["--dataset", "mnist-sample", "--hidden", "32", "--latent-dim", "4", "--batch-size", "125"]


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 8-epoch run to compare resumed runs against."""
    run = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *TINY, "--epochs", "8", "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture
def trained(trained_once, tmp_path) -> Path:
    """A one-epoch run of the test's own to damage: a copy of one trained once (files, their
    permission bits and times as training left them)."""
    run = tmp_path / "run"
    shutil.copytree(trained_once, run)
    return run


# ----------------------------------------------------------------------------- damaged files

DAMAGE = {
    "config-garbage": ("config.json", lambda p: p.write_bytes(b"\x00\xff{not json")),
    "config-wrong-kind": ("config.json", lambda p: p.write_text("[1, 2, 3]")),
    "config-other-version": ("config.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "model": {**json.loads(p.read_text())["model"], "new_knob": 3}}))),
    "config-wrong-type": ("config.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "train": {"epochs": "many"}}))),
    "state-garbage": ("checkpoint/state.json", lambda p: p.write_text("{\"epoch\": 1,")),
    "state-foreign": ("checkpoint/state.json", lambda p: p.write_text('{"hello": "world"}')),
    "model-truncated": ("checkpoint/model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100])),
    "model-empty": ("checkpoint/model.safetensors", lambda p: p.write_bytes(b"")),
    "model-foreign": ("checkpoint/model.safetensors", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" * 50)),
    "state-tensors-truncated": ("checkpoint/state.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-7])),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_run_files_give_one_line_and_are_kept(trained, capsys, case):
    name, damage = DAMAGE[case]
    path = trained / name
    damage(path)
    before = {p: p.read_bytes() for p in (trained / "checkpoint").iterdir()}
    for argv in (["evaluate", str(trained), "--k", "2", "--n", "5", "--quiet"],
                 ["sample", str(trained), "--n", "4"],
                 ["train", "--resume", str(trained), "--epochs", "2", "--quiet"]):
        assert main(argv) == 2, argv
        one_line_error(capsys, name.split("/")[-1])
    after = {p: p.read_bytes() for p in (trained / "checkpoint").iterdir()}
    assert before == after  # a checkpoint that fails to load is never replaced


def test_weights_from_another_run_are_refused(trained, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", *TINY, "--hidden", "48", "--epochs", "1", "--out", str(other), "--quiet"]) == 0
    shutil.copy(other / "checkpoint" / "model.safetensors", trained / "checkpoint" / "model.safetensors")
    assert main(["evaluate", str(trained), "--k", "2", "--n", "5", "--quiet"]) == 2
    one_line_error(capsys, "model.safetensors does not fit the model", "another run")


def test_missing_checkpoint_and_damaged_metrics(trained, capsys):
    (trained / "metrics.jsonl").write_text("{torn")
    assert main(["plot", str(trained), "--what", "curves"]) == 2
    one_line_error(capsys, "metrics.jsonl is damaged")
    shutil.rmtree(trained / "checkpoint")
    assert main(["evaluate", str(trained), "--quiet"]) == 2
    one_line_error(capsys, "has no checkpoint")


def test_checkpoint_swap_leftover_is_read(trained):
    from vaelab.checkpoint import read_checkpoint

    os.replace(trained / "checkpoint", trained / "checkpoint.old")  # a crash between the two renames
    ckpt, info, _, _ = read_checkpoint(trained)
    assert ckpt.name == "checkpoint.old" and info["epoch"] == 1


# ----------------------------------------------------------------------------- bad output places


def test_output_paths_that_are_files(trained, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["train", *TINY, "--epochs", "1", "--out", str(blocker), "--quiet"]) == 2
    one_line_error(capsys, "is a file, not a folder")
    assert main(["plot", str(trained), "--what", "recon", "--out", str(blocker)]) == 2
    one_line_error(capsys, "is a file, not a folder")
    assert main(["sample", str(trained), "--out", str(blocker / "s.png")]) == 2
    one_line_error(capsys, "is a file, not a folder")


def test_unwritable_cache_folder(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    for i in range(20):
        Image.new("L", (8, 8), i * 10).save(tmp_path / "imgs" / f"{i}.png")
    assert main(["train", "--dataset", str(tmp_path / "imgs"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    one_line_error(capsys, "image cache", "XDG_CACHE_HOME")


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys, reference):
    import vaelab.checkpoint as ck

    real, calls = ck.save_file, []

    def full_disk(tensors, path, **kw):
        calls.append(path)
        if len(calls) == 4:  # epoch 2's second file
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path, **kw)

    monkeypatch.setattr(ck, "save_file", full_disk)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "8", "--out", str(run), "--quiet"]) == 2
    one_line_error(capsys, "disk is full", "previous one is kept")
    assert not [p for p in run.iterdir() if p.name.startswith(".checkpoint-")]  # temporary files cleaned up
    assert json.loads((run / "checkpoint" / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(ck, "save_file", real)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert metrics(run, timing=False) == metrics(reference, timing=False)


def test_outputs_get_ordinary_permissions(trained):
    assert main(["evaluate", str(trained), "--k", "2", "--n", "5", "--quiet"]) == 0
    assert main(["plot", str(trained), "--what", "recon"]) == 0
    expected = 0o666 & ~_umask()
    for p in [trained / "eval-k2-n5.json", trained / "recon.png", trained / "metrics.jsonl", trained / "config.json",
              trained / "run.json", trained / "plots" / "recon.png", trained / "checkpoint" / "state.json"]:
        assert p.stat().st_mode & 0o777 == expected, p
    assert (trained / "checkpoint").stat().st_mode & 0o777 == 0o777 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ----------------------------------------------------------------------------- processes

CHILD = """
import os, sys
{patch}
from tests.conftest import metrics
from vaelab.cli import main
sys.exit(main(sys.argv[1:]))
"""

# os._exit in the middle of a checkpoint swap: after the old checkpoint was moved aside,
# before the new one is renamed into place (the second os.replace of save_checkpoint).
CRASH_IN_SWAP = """
import vaelab.checkpoint as ck
_real, _n = os.replace, [0]
def _replace(a, b):
    if str(b).endswith("checkpoint") and ".checkpoint-" in str(a):
        _n[0] += 1
        if _n[0] == {at}:
            os._exit(137)
    return _real(a, b)
ck.os.replace = _replace
"""


def spawn(args: list[str], patch: str = "") -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD.format(patch=patch), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epoch(run: Path, epoch: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        try:
            if json.loads((run / "checkpoint" / "state.json").read_text())["epoch"] >= epoch:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)


def test_kill_9_at_random_points_then_resume_gives_identical_metrics(tmp_path, reference):
    rng = random.Random(1234)
    for trial in range(3):
        run = tmp_path / f"run{trial}"
        proc = spawn(["train", *TINY, "--epochs", "8", "--out", str(run), "--quiet"])
        wait_for_epoch(run, 1, proc)
        time.sleep(rng.uniform(0.0, 0.8))  # somewhere in epochs 2-8, maybe inside a checkpoint write
        assert proc.poll() is None, "the run ended before the kill; the trial would test nothing"
        proc.kill()
        proc.wait()
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
        assert metrics(run, timing=False) == metrics(reference, timing=False), f"trial {trial}"


@pytest.mark.parametrize("at", [1, 2])
def test_crash_inside_a_checkpoint_swap_then_resume(tmp_path, reference, at):
    run = tmp_path / "run"
    proc = spawn(["train", *TINY, "--epochs", "8", "--out", str(run), "--quiet"], CRASH_IN_SWAP.format(at=at))
    assert proc.wait(timeout=300) == 137
    assert not (run / "checkpoint").exists() and (run / "checkpoint.old").exists() == (at > 1)
    if at == 1:  # died writing the very first checkpoint: nothing to resume, start again
        assert main(["train", "--resume", str(run), "--quiet"]) == 2
        return
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert metrics(run, timing=False) == metrics(reference, timing=False)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_at_a_safe_point_and_resume_exactly(tmp_path, reference, sig, code):
    run = tmp_path / "run"
    proc = spawn(["train", *TINY, "--epochs", "8", "--out", str(run), "--quiet"])
    wait_for_epoch(run, 1, proc)
    assert proc.poll() is None
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "received: stopped after step" in err and "--resume" in err and "Traceback" not in err
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert metrics(run, timing=False) == metrics(reference, timing=False)


def test_second_trainer_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    proc = spawn(["train", *TINY, "--epochs", "50", "--out", str(run), "--quiet"])
    wait_for_epoch(run, 1, proc)
    assert main(["train", "--resume", str(run), "--epochs", "60", "--quiet"]) == 2
    one_line_error(capsys, "is in use by pid", str(proc.pid))
    assert main(["evaluate", str(run), "--k", "2", "--n", "20", "--quiet"]) == 0  # reads a whole checkpoint
    proc.kill()
    proc.wait()
    assert (run / ".lock").read_text().startswith(f"pid {proc.pid}")  # left behind by kill -9
    from vaelab.api import Run

    done = Run(run).checkpoint_epoch  # however far the killed trainer got on this machine
    assert main(["train", "--resume", str(run), "--epochs", str(done + 1), "--quiet"]) == 0  # stale: taken over


def test_run_records_its_provenance(trained):
    import torch

    from vaelab import __version__

    prov = json.loads((trained / "run.json").read_text())
    assert prov["vaelab_version"] == __version__ and prov["torch_version"] == torch.__version__
    assert prov["device"].startswith("cpu") and "git_commit" in prov
    assert main(["train", "--resume", str(trained), "--epochs", "2", "--quiet"]) == 0
    assert json.loads((trained / "run.json").read_text())["resumed"][0]["from_epoch"] == 1


def test_evaluate_warns_when_the_data_changed(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(40):
        Image.new("L", (8, 8), i * 5).save(tmp_path / "imgs" / f"{i}.png")
    run = tmp_path / "r"
    os.environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    try:
        assert main(["train", "--dataset", str(tmp_path / "imgs"), "--hidden", "8", "--latent-dim", "2",
                     "--epochs", "1", "--binarization", "none", "--likelihood", "gaussian", "--out", str(run),
                     "--quiet"]) == 0
        Image.new("L", (8, 8), 255).save(tmp_path / "imgs" / "new.png")
        capsys.readouterr()
        assert main(["evaluate", str(run), "--k", "2", "--quiet"]) == 0
        assert "differ from those the run trained on" in capsys.readouterr().err
    finally:
        del os.environ["XDG_CACHE_HOME"]


def test_missing_config_is_one_line(trained, capsys):
    (trained / "config.json").unlink()
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(trained)])
    assert e.value.code == 2
    one_line_error(capsys, "no config.json")


def test_overwrite_replaces_a_run_and_only_a_run(trained, tmp_path, capsys):
    """The README's demo line must run twice: --overwrite replaces the previous run."""
    assert main(["train", *TINY, "--epochs", "1", "--out", str(trained), "--quiet"]) == 2
    one_line_error(capsys, "already holds a run", "--overwrite")
    (trained / "plots").mkdir()
    assert main(["train", *TINY, "--epochs", "2", "--out", str(trained), "--quiet", "--overwrite"]) == 0
    assert len(metrics(trained)) == 2 and not (trained / "plots").exists()
    stranger = tmp_path / "not-a-run"
    (stranger / "checkpoint").mkdir(parents=True)
    (stranger / "precious.txt").write_text("keep me")
    assert main(["train", *TINY, "--epochs", "1", "--out", str(stranger), "--quiet", "--overwrite"]) == 2
    one_line_error(capsys, "not a vaelab run folder")
    assert (stranger / "precious.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- settings never silently dropped


def test_resume_to_fewer_epochs_than_done_is_refused_and_changes_nothing(trained, capsys):
    config = (trained / "config.json").read_bytes()
    assert main(["train", "--resume", str(trained), "--epochs", "1", "--quiet"]) == 0  # as many as done: nothing to do
    capsys.readouterr()
    main(["train", "--resume", str(trained), "--epochs", "2", "--quiet"])
    config = (trained / "config.json").read_bytes()
    assert main(["train", "--resume", str(trained), "--epochs", "1", "--quiet"]) == 2
    one_line_error(capsys, "already trained 2 epochs", "more than 2")
    assert (trained / "config.json").read_bytes() == config


def test_a_batch_size_replaced_is_said_even_under_quiet(tmp_path, capsys):
    assert main(["train", *TINY[:-2], "--batch-size", "100000", "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0
    assert "batches of 125 instead of 100000" in capsys.readouterr().err


def test_the_small_set_note_never_says_an_epoch_keeps_its_step_count_as_a_change(tmp_path, capsys):
    """2,000 images at 128 take 16 steps either way: the note says the batches even out instead."""
    assert main(["train", *TINY[:-2], "--batch-size", "128", "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "batches of 125 instead of 128, so that the epoch's 16 steps are of near-equal size" in err
    assert "last batch of 128 would hold 80 images" in err and "not 16" not in err


def test_the_small_set_note_counts_the_steps_an_epoch_takes(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (42, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "small.npz", train=images[:37], test=images[37:])  # 37 images: batches of 3, 13 steps
    assert main(["train", "--dataset", str(tmp_path / "small.npz"), "--hidden", "8", "--latent-dim", "2",
                 "--net", "mlp", "--batch-size", "128", "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert "batches of 3 instead of 128, so that an epoch has 13 steps, not 1" in capsys.readouterr().err
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["batch_size"] == 3 and row["step"] == 13


def test_evaluate_shows_its_results_when_the_run_folder_cannot_be_written(trained, capsys, monkeypatch):
    import errno

    from vaelab import files

    def read_only(path, obj):
        raise files.FileError(files.describe(OSError(errno.EROFS, "Read-only file system", str(path)),
                                             "cannot write"))

    monkeypatch.setattr(files, "write_json", read_only)
    assert main(["evaluate", str(trained), "--k", "2", "--n", "10", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert "-log p(x), IS k=2" in out and "ELBO" in out
    assert err.count("\n") == 1 and "read-only" in err and "not saved" in err


def test_a_train_that_fails_before_it_starts_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "new-run"
    assert main(["train", "--dataset", str(tmp_path / "no-such-folder"), "--out", str(out), "--quiet"]) == 2
    one_line_error(capsys, "does not exist")
    assert not out.exists()


def test_an_out_folder_inside_the_image_folder_is_refused(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "pictures"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(images / f"{i}.png")
    assert main(["train", "--dataset", str(images), "--out", str(images / "runs" / "x"), "--quiet"]) == 2
    one_line_error(capsys, "inside the data folder", "outside it")
    assert sorted(p.name for p in images.iterdir()) == [f"{i}.png" for i in range(4)]


def test_a_full_disk_reported_by_safetensors_is_one_line_and_keeps_the_checkpoint(trained, capsys, monkeypatch):
    from safetensors import SafetensorError

    from vaelab import checkpoint

    before = {p.name: p.read_bytes() for p in (trained / "checkpoint").iterdir()}

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr(checkpoint, "save_file", full)
    assert main(["train", "--resume", str(trained), "--epochs", "2", "--quiet"]) == 2
    one_line_error(capsys, "cannot write the checkpoint", "disk is full", "previous one is kept")
    assert {p.name: p.read_bytes() for p in (trained / "checkpoint").iterdir()} == before
    assert not [p for p in trained.iterdir() if p.name.startswith(".checkpoint-")]


def test_a_real_full_disk_ends_in_one_error_line_without_a_traceback(tmp_path, capsys):
    """On a real small file system (a 300 KiB tmpfs): every write path (metrics, pictures,
    TensorBoard's writer thread, safetensors) meets ENOSPC somewhere."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the injected-error tests above cover the same paths")
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        assert main(["train", "--dataset", "mnist-sample", "--hidden", "32", "--latent-dim", "4", "--epochs", "2",
                     "--out", str(disk / "run"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "\n".join(err)
        assert err[-1].startswith("vaelab train: error:") and "disk is full" in err[-1]
        assert all(line.startswith(("warning:", "vaelab train: error:")) for line in err)
        assert not [p for p in (disk / "run").iterdir() if p.name.startswith(".checkpoint-")]
        json.loads((disk / "run" / "config.json").read_text())  # what was written is whole
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ----------------------------------------------------------------------------- hostile image folders


def _hostile_folder(root: Path) -> Path:
    """20 good PNGs and one in another mode, plus a FIFO, a broken link, a file whose name is
    not UTF-8, a truncated PNG and a decompression bomb, each named like an image."""
    import os

    from PIL import Image

    root.mkdir()
    for i in range(20):
        Image.new("RGB", (8, 8), (10 * i, 100, 200 - 5 * i)).save(root / f"img{i:02d}.png")
    os.mkfifo(root / "fifo.png")
    (root / "broken.png").symlink_to(root / "no-such-target.png")
    (root / "truncated.png").write_bytes((root / "img01.png").read_bytes()[:40])
    Image.new("1", (15000, 15000)).save(root / "bomb.png")  # 225 million pixels in a few KiB
    Image.new("LA", (8, 8), (90, 128)).save(root / "grey-alpha.png")  # another mode: converted
    with open(os.path.join(os.fsencode(root), b"bad-\xff-name.png"), "wb") as f:
        f.write((root / "img00.png").read_bytes())
    return root


def test_special_files_and_odd_names_are_named_or_skipped_never_opened(tmp_path, capsys):
    data = _hostile_folder(tmp_path / "hostile")
    args = ["train", "--dataset", str(data), "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
            "--net", "mlp", "--test-fraction", "0.4", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = one_line_error(capsys, "--skip-bad-images", "and 2 more")
    assert any(word in err for word in ("FIFO", "UTF-8"))
    assert main([*args, "--skip-bad-images", "--out", str(tmp_path / "b")]) == 0
    skipped = (tmp_path / "b" / "skipped_images.txt").read_text()
    assert "fifo.png" in skipped and "broken.png" in skipped and "bad-\\xff-name.png" in skipped
    assert "truncated.png" in skipped and "bomb.png" in skipped and "grey-alpha.png" not in skipped


def test_a_warm_up_longer_than_an_epoch_is_said_even_under_quiet(tmp_path, capsys):
    assert main(["train", *TINY, "--epochs", "1", "--warmup-steps", "5000", "--out", str(tmp_path / "w"),
                 "--quiet"]) == 0
    assert "--warmup-steps 5000 is longer than an epoch (16 steps)" in capsys.readouterr().err
