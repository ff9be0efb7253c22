"""IDX parsing, validation, look-up order, checksummed download and binarisation."""

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import data as vd
from vaelab.batches import Batches, Feed, Loading, SplitInputs, as_input
from vaelab.data import DataError, load_dataset, read_idx


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def write_set(directory: Path, n_train=20, n_test=10, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in files.items():
        raw = idx_bytes(arr)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return files


def test_read_idx_round_trip_raw_and_gzip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "b.gz"), arr)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "bad magic"),
        (b"\x00\x00\x08", "bad magic"),
        (b"\x12\x34\x08\x01" + b"\x00" * 8, "bad magic"),
        (b"\x00\x00\x08\x03\x00\x00", "header truncated"),
        (idx_bytes(np.zeros((5, 4, 4), np.uint8))[:-7], "truncated"),
        (idx_bytes(np.zeros((5, 4, 4), np.uint8)) + b"xx", "trailing bytes"),
    ],
    ids=["empty", "short", "wrong-magic", "short-header", "truncated-body", "trailing"],
)
def test_read_idx_rejects_bad_files_naming_them(tmp_path, content, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))
    path = tmp_path / "x.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(path)


def test_mismatched_labels_and_wrong_kind_are_rejected(tmp_path):
    files = write_set(tmp_path / "d")
    # labels from a different split: 10 labels for 20 images
    (tmp_path / "d" / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(files["t10k-labels-idx1-ubyte"])))
    with pytest.raises(DataError, match="10 labels for 20 images"):
        load_dataset("mnist", data_dir=tmp_path / "d")
    # an image file where labels belong
    write_set(tmp_path / "e")
    (tmp_path / "e" / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(files["t10k-images-idx3-ubyte"])))
    with pytest.raises(DataError, match="1-D label file"):
        load_dataset("mnist", data_dir=tmp_path / "e")


def test_load_dataset_from_dir_gives_uint8_tensors(tmp_path):
    files = write_set(tmp_path / "raw", gz=False)
    ds = load_dataset("mnist", data_dir=tmp_path / "raw")
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape == (20, 1, 28, 28)
    assert ds.test.labels.dtype == torch.int64 and len(ds.test) == 10
    np.testing.assert_array_equal(ds.train.images[:, 0].numpy(), files["train-images-idx3-ubyte"])


def test_lookup_order_and_missing_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env"))
    write_set(tmp_path / "cache" / "vaelab" / "mnist", seed=1)
    assert vd.locate("mnist", allow_download=False) == tmp_path / "cache" / "vaelab" / "mnist"
    write_set(tmp_path / "env" / "mnist", seed=2)
    assert vd.locate("mnist", allow_download=False) == tmp_path / "env" / "mnist"
    write_set(tmp_path / "explicit", seed=3)
    assert vd.locate("mnist", tmp_path / "explicit") == tmp_path / "explicit"
    # an explicit directory without the files is an error, not a fallback
    with pytest.raises(DataError, match="does not hold"):
        vd.locate("mnist", tmp_path / "nowhere")
    # nothing anywhere and no download: the message lists where it looked and the fix
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError) as e:
        vd.locate("mnist", allow_download=False)
    msg = str(e.value)
    assert str(tmp_path / "empty" / "mnist") in msg and "\n" not in msg
    # the fix works for every command: score and ood take no --data-dir
    assert "--data-dir" not in msg and "VAELAB_DATA=DIR" in msg
    assert f"in {tmp_path / 'empty-cache' / 'vaelab' / 'mnist'}, or in DIR/mnist" in msg


def _mirror(tmp_path):
    src = tmp_path / "mirror"
    write_set(src, seed=4)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in src.iterdir()}
    return src, md5


def test_download_verifies_md5_and_writes_atomically(tmp_path, monkeypatch):
    src, md5 = _mirror(tmp_path)
    info = vd.DatasetInfo("toy", vd.DATASETS["mnist"].files, md5, ("file:///nonexistent/", src.as_uri() + "/"),
                          (), tuple("0123456789"), "test")
    monkeypatch.setitem(vd.DATASETS, "toy", info)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    ds = load_dataset("toy")  # first mirror fails, second serves
    assert len(ds.train) == 20
    target = tmp_path / "cache" / "vaelab" / "toy"
    assert sorted(p.name for p in target.iterdir()) == sorted(md5)


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    src, md5 = _mirror(tmp_path)
    bad = {k: "0" * 32 for k in md5}
    info = vd.DatasetInfo("toy2", vd.DATASETS["mnist"].files, bad, (src.as_uri() + "/",), (),
                          tuple("0123456789"), "test")
    monkeypatch.setitem(vd.DATASETS, "toy2", info)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    with pytest.raises(DataError, match="MD5 mismatch"):
        load_dataset("toy2")
    assert list((tmp_path / "cache" / "vaelab" / "toy2").iterdir()) == []


def test_embedded_sample_is_real_mnist():
    ds = load_dataset("mnist-sample")
    assert ds.train.images.shape == (2000, 1, 28, 28) and len(ds.test) == 500
    assert set(ds.train.labels.tolist()) == set(range(10))
    # digits: mostly background, mean intensity like MNIST's (~0.13)
    assert 0.09 < ds.train.images.float().mean().item() / 255 < 0.17


def test_binarization_modes():
    images = torch.full((2000, 1, 2, 2), 64, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    grey = as_input(images, Feed("none"))
    assert torch.allclose(grey, torch.full_like(grey, 64 / 255))
    b = as_input(images, Feed("dynamic"), generator=g)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert abs(b.mean().item() - 64 / 255) < 0.02
    split = vd.Split(images, torch.zeros(2000, dtype=torch.int64))
    dyn = Batches(split, 2000, Feed("dynamic"), "cpu", loading=Loading(shuffle=False))
    first, second = next(iter(dyn))[0], next(iter(dyn))[0]
    assert not torch.equal(first, second)  # fresh sample every time an image is used
    fixed = Batches(split, 2000, Feed("fixed"), "cpu", loading=Loading(shuffle=False))
    assert torch.equal(next(iter(fixed))[0], next(iter(fixed))[0])
    once = SplitInputs(split, Feed("dynamic"), 5, "cpu")
    assert torch.equal(once.rows(0, 2000)[0], SplitInputs(split, Feed("dynamic"), 5, "cpu").rows(0, 2000)[0])


def test_batches_cover_split_without_repeats():
    split = vd.Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    batches = Batches(split, 3, Feed("none"), "cpu", loading=Loading(seed=1))
    labels = torch.cat([b.labels for b in batches])
    assert sorted(labels.tolist()) == list(range(10)) and len(batches) == 4


def test_process_slices_make_up_the_single_process_batch():
    """Each of 3 data-parallel processes keeps its slice of the same global batch, noise included."""
    split = vd.Split(torch.randint(0, 256, (50, 1, 3, 3), dtype=torch.uint8), torch.arange(50))
    one = list(Batches(split, 16, Feed("dynamic"), "cpu", loading=Loading(seed=3)))
    parts = [list(Batches(split, 16, Feed("dynamic"), "cpu", loading=Loading(seed=3, rank=r, world=3)))
             for r in range(3)]
    for i, whole in enumerate(one):
        assert torch.equal(torch.cat([p[i].x for p in parts]), whole.x)
        assert torch.equal(torch.cat([p[i].idx for p in parts]), whole.idx)
        assert {p[i].size for p in parts} == {whole.size}
