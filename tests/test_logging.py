"""What training leaves to read: TensorBoard events, and logs without progress-bar noise."""

import importlib.util
import io
import os
import shutil
import subprocess
import sys
import time
import types

import pytest

from tests.conftest import metrics
from vaelab.data import load_dataset
from vaelab.runtime import bar_redraws, progress_bar
from vaelab.training import Limits, resume, train

# CI installs the test extra, which includes tensorboard: there these tests must run
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None and not os.environ.get("CI"),
                                       reason="tensorboard is not installed (pip install -e '.[tensorboard]')")


def events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()


def term_tags(record):
    """metrics.jsonl key -> TensorBoard tag: train_kl -> train/kl."""
    return {k: k.replace("_", "/", 1) for k in record if k.startswith(("train_", "test_"))}


@needs_tensorboard
def test_tensorboard_has_every_term_per_epoch_the_pictures_and_the_hparams(tmp_path, tiny_cfg):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run = train(tiny_cfg, tmp_path / "run", progress=False, quiet=True)
    rows = metrics(run)
    acc = events(run)
    tags = term_tags(rows[-1])
    assert {"train/loss", "train/kl", "test/elbo", "test/recon"} <= set(tags.values())
    for key, tag in {**tags, "lr": "lr", "examples_per_s": "images_per_s"}.items():
        assert [(e.step, pytest.approx(e.value, rel=1e-5)) for e in acc.Scalars(tag)] == \
            [(r["epoch"], r[key]) for r in rows], tag
    for name in ("recon", "samples"):
        assert [im.step for im in acc.Images(name)] == [1, 2]
        assert acc.Images(name)[-1].encoded_image_string.startswith(b"\x89PNG")

    hp = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hp)
    start = HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.latent_dim"].number_value == 4
    assert start.hparams["data.dataset"].string_value == "mnist-sample"
    assert "train.epochs" not in start.hparams  # a metric: --resume may change it
    assert [(e.step, e.value) for e in acc.Scalars("hparam/epochs")] == [(2, 2)]
    assert acc.Scalars("hparam/test_elbo")[-1].value == pytest.approx(rows[-1]["test_elbo"], rel=1e-5)


@needs_tensorboard
def test_epochs_redone_after_a_kill_appear_once(tmp_path, tiny_cfg):
    data = load_dataset("mnist-sample")
    run = train(tiny_cfg.replace(train={"epochs": 1}), tmp_path / "run", progress=False, quiet=True, dataset=data)
    shutil.copytree(run / "checkpoint", tmp_path / "epoch1")
    resume(run, Limits(epochs=2), progress=False, quiet=True, dataset=data)
    # killed after epoch 2's events and metrics, before its checkpoint: resuming redoes epoch 2
    shutil.rmtree(run / "checkpoint")
    shutil.copytree(tmp_path / "epoch1", run / "checkpoint")
    time.sleep(1.1)  # event files are read in name order, which begins with their creation second
    resume(run, Limits(epochs=3), progress=False, quiet=True, dataset=data)

    acc = events(run)
    for tag in [*term_tags(metrics(run)[-1]).values(), "lr", "images_per_s"]:
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3], tag
    assert [im.step for im in acc.Images("recon")] == [1, 2, 3]
    assert [e.value for e in acc.Scalars("hparam/epochs")][-1] == 3


def test_training_without_tensorboard_installed(tmp_path, tiny_cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    run = train(tiny_cfg.replace(train={"epochs": 1}), tmp_path / "run", progress=False, quiet=True)
    assert [r["epoch"] for r in metrics(run)] == [1]
    assert not (run / "tensorboard").exists()


def vaelab_train(tmp_path, *flags):
    """`vaelab train` with stdout and stderr piped, as under CI or nohup: their text."""
    args = ["--dataset", "mnist-sample", "--hidden", "32", "--latent-dim", "4", "--epochs", "1",
            "--out", str(tmp_path / "run"), *flags]
    proc = subprocess.run([sys.executable, "-m", "vaelab", "train", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("flags, epoch_lines", [((), True), (("--no-progress",), True), (("--quiet",), False)])
def test_logs_outside_a_terminal_have_no_bar_and_keep_epoch_lines_unless_quiet(tmp_path, flags, epoch_lines):
    out = vaelab_train(tmp_path, *flags)
    assert "\r" not in out
    assert ("epoch   1  train loss" in out) == epoch_lines
    assert ("note:" in out) == epoch_lines  # 2000 sample images: smaller batches than asked
    assert "run folder:" in out


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_is_drawn_on_a_terminal_or_in_jupyter_only(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert bar_redraws()
    for show in (True, False):
        with progress_bar(range(3), show=show) as bar:
            assert bar.disable != show
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a log file
    assert not bar_redraws()
    with progress_bar(range(3)) as bar:
        assert bar.disable
    kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert bar_redraws()


def test_progress_lines_go_to_logs_but_not_to_a_terminal_with_a_bar_or_to_jupyter(monkeypatch):
    from vaelab.runtime import progress_lines

    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert not progress_lines()  # the bar shows the progress
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # `vaelab train > train.log`
    assert progress_lines()
    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # no bar: lines on the terminal instead
    assert progress_lines()
    kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert not progress_lines()
