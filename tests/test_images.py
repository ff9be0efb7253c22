"""The user's images: folders and arrays -> the uint8 cache -> batches, and CIFAR-10 offline."""

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import cache as vc
from vaelab import data as vd
from vaelab import images as vi
from vaelab.arrays import load_array
from vaelab.batches import Batches, Feed, Loading, SplitInputs
from vaelab.config import DataConfig
from vaelab.data import DataError, ImageFile, Split
from vaelab.images import Transform, load_folder
from vaelab.noise import pixel_uniform as counter_uniform
from vaelab.sources import load_configured

T = Transform(None, 0, "white", 0.1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def digits(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST digits from the shipped sample: (n, 28, 28) uint8 and labels."""
    d = vd.load_dataset("mnist-sample")
    return d.train.images[:n, 0].numpy(), d.train.labels[:n].numpy()


def write_class_folder(root: Path, n: int = 40, fmt: str = "png") -> dict[str, int]:
    x, y = digits(n)
    for i in range(n):
        (root / f"class{y[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(root / f"class{y[i]}" / f"{i:03d}.{fmt}")
    return {f"class{y[i]}/{i:03d}.{fmt}": int(y[i]) for i in range(n)}


# ----------------------------------------------------------------------------- folders


def test_class_folders_give_labels_and_a_grey_cache(tmp_path):
    write_class_folder(tmp_path / "ds", 60)
    d = load_folder(tmp_path / "ds", T, progress=False)
    assert d.image_shape == (1, 28, 28)  # every image grey -> one channel
    assert d.classes == tuple(sorted({f"class{v}" for v in digits(60)[1]}))
    assert len(d.train) + len(d.test) == 60 and len(d.test) > 0
    # rows decode to exactly the files' pixels, labels match the folder names
    x, y = digits(60)
    manifest = json.loads((vc.cache_folder((tmp_path / "ds").resolve(), T) / "manifest.json").read_text())
    for split in ("train", "test"):
        files = manifest["splits"][split]["files"]
        split_obj = getattr(d, split)
        rows = split_obj.images.read(np.arange(len(files)))
        for r, rel in enumerate(files):
            i = int(Path(rel).stem)
            assert np.array_equal(rows[r, 0], x[i])
            assert d.classes[int(split_obj.labels[r])] == f"class{y[i]}"


def test_flat_folder_is_unlabelled_and_labelled_commands_say_so(tmp_path):
    x, _ = digits(30)
    (tmp_path / "flat").mkdir()
    for i in range(30):
        Image.fromarray(x[i]).save(tmp_path / "flat" / f"{i}.png")
    d = load_folder(tmp_path / "flat", T, progress=False)
    assert d.classes == () and not d.labelled and (d.train.labels == -1).all()
    with pytest.raises(DataError, match="needs class labels.*one folder per class"):
        d.require_labels("the probe")


def test_files_pillow_can_only_write_are_passed_over_like_text(tmp_path):
    """A PDF that Pillow wrote (it cannot read one back) sits beside the images: not an image."""
    write_class_folder(tmp_path / "ds", 20)
    Image.fromarray(digits(1)[0][0]).save(tmp_path / "ds" / "class0" / "scan.pdf")
    (tmp_path / "ds" / "class0" / "notes.txt").write_text("not an image")
    d = load_folder(tmp_path / "ds", T, progress=False)
    assert len(d.train) + len(d.test) == 20 and not d.skipped


def test_loose_images_beside_class_folders_are_refused(tmp_path):
    write_class_folder(tmp_path / "ds", 10)
    Image.fromarray(digits(1)[0][0]).save(tmp_path / "ds" / "loose.png")
    with pytest.raises(DataError, match="loose.png sits beside class folders"):
        load_folder(tmp_path / "ds", T, progress=False)


def test_train_and_test_subfolders_define_the_splits(tmp_path):
    x, _ = digits(12)
    for split, idx in (("train", range(0, 9)), ("test", range(9, 12))):
        for i in idx:
            (tmp_path / "ds" / split / "a").mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(tmp_path / "ds" / split / "a" / f"{i}.png")
    d = load_folder(tmp_path / "ds", T, progress=False)
    assert (len(d.train), len(d.test)) == (9, 3) and d.classes == ("a",)


def test_hash_split_is_stable_when_files_are_added(tmp_path):
    names = [f"img{i:04d}.png" for i in range(2000)]
    test1 = {n for n in names[:1000] if vi.in_test_split(n, 0.1)}
    test2 = {n for n in names if vi.in_test_split(n, 0.1)}
    assert test1 == {n for n in test2 if n in names[:1000]}  # nothing moved
    assert 0.07 < len(test2) / 2000 < 0.13


def test_every_pillow_mode_and_format_decodes(tmp_path):
    """L, P, RGB, RGBA, LA, 1, I;16 in PNG, JPEG, BMP, GIF, WebP and TIFF -> one RGB cache."""
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, np.arange(30, dtype=np.uint8)[None] * 8
    root = tmp_path / "mixed"
    root.mkdir()
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(rgb).save(root / "rgb.jpg", quality=95)
    Image.fromarray(rgb).save(root / "rgb.bmp")
    Image.fromarray(rgb).convert("P").save(root / "pal.gif")
    Image.fromarray(rgb).save(root / "rgb.webp", lossless=True)
    Image.fromarray(rgb).save(root / "rgb.tiff")
    Image.fromarray(rgb[..., 0]).save(root / "grey.png")
    Image.fromarray(rgb[..., 0]).convert("1").save(root / "bw.png")
    Image.fromarray(np.full((20, 30), 65535, np.uint16)).save(root / "deep.png")  # I;16, white
    rgba = np.dstack([rgb, np.zeros((20, 30), np.uint8)])  # fully transparent
    Image.fromarray(rgba, "RGBA").save(root / "clear.png")
    la = np.dstack([rgb[..., 0], np.zeros((20, 30), np.uint8)])
    Image.fromarray(la, "LA").save(root / "clear_la.png")
    d = load_folder(root, Transform(None, 0, "black", 0.5), progress=False)
    assert d.image_shape == (3, 20, 30)
    files = {}
    manifest = json.loads((vc.cache_folder(root.resolve(), Transform(None, 0, "black", 0.5)) / "manifest.json")
                          .read_text())
    for split in ("train", "test"):
        rows = getattr(d, split).images.read(np.arange(len(getattr(d, split))))
        files.update(dict(zip(manifest["splits"][split]["files"], rows)))
    assert len(files) == 11
    assert np.array_equal(files["rgb.png"], rgb.transpose(2, 0, 1))
    assert np.abs(files["rgb.jpg"].astype(int) - rgb.transpose(2, 0, 1)).max() < 12
    assert (files["deep.png"] == 255).all()  # 16-bit white stays white
    assert (files["clear.png"] == 0).all() and (files["clear_la.png"] == 0).all()  # composited on black
    assert np.array_equal(files["grey.png"][0], files["grey.png"][1])  # grey replicated to RGB


def test_resize_shorter_side_then_centre_crop(tmp_path):
    img = np.zeros((40, 80), np.uint8)
    img[:, 20:60] = 255  # the centre 40x40 is white, the sides black
    (tmp_path / "wide").mkdir()
    Image.fromarray(img).save(tmp_path / "wide" / "a.png")
    Image.fromarray(img).save(tmp_path / "wide" / "b.png")
    d = load_folder(tmp_path / "wide", Transform((20, 20), 1, "white", 0.5), progress=False)
    assert d.image_shape == (1, 20, 20)
    rows = np.concatenate([s.images.read(np.arange(len(s))) for s in (d.train, d.test)])
    # 40x80 -> 20x40, centre 20x20 crop: white (the bicubic filter greys the outermost columns a little)
    assert (rows[..., 1:-1] == 255).all() and rows.min() > 200
    d2 = load_folder(tmp_path / "wide", Transform((10, 30), 1, "white", 0.5), progress=False)
    assert d2.image_shape == (1, 10, 30)  # non-square target: scale to cover, crop


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((10, 20), np.uint8)
    img[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    (tmp_path / "p").mkdir()
    Image.fromarray(img).save(tmp_path / "p" / "a.jpg", exif=exif, quality=100)
    Image.fromarray(img.T.copy()).save(tmp_path / "p" / "b.png")  # 20 x 10 as stored
    d = load_folder(tmp_path / "p", Transform(None, 1, "white", 0.5), progress=False)
    assert d.image_shape == (1, 20, 10)  # displayed size of the photo matches the PNG
    rows = np.concatenate([s.images.read(np.arange(len(s))) for s in (d.train, d.test)])
    assert any(r[0, :10].mean() > 200 and r[0, 10:].mean() < 50 for r in rows)  # white on top after rotation


def test_images_of_different_sizes_need_image_size(tmp_path):
    (tmp_path / "d").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "d" / "a.png")
    Image.new("L", (16, 8)).save(tmp_path / "d" / "b.png")
    with pytest.raises(DataError, match="differ in size.*--image-size"):
        load_folder(tmp_path / "d", T, progress=False)


def test_cache_is_reused_then_refreshed_incrementally(tmp_path, monkeypatch):
    files = write_class_folder(tmp_path / "ds", 40)
    load_folder(tmp_path / "ds", T, progress=False)
    calls = []
    real = vi.decode
    monkeypatch.setattr(vi, "decode", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    load_folder(tmp_path / "ds", T, progress=False)
    assert calls == []  # unchanged folder: nothing decoded, nothing read but the listing
    # a changed and an added file are decoded, the other 39 copied from the old cache
    first = sorted(files)[0]
    Image.fromarray(np.full((28, 28), 7, np.uint8)).save(tmp_path / "ds" / first)
    os.utime(tmp_path / "ds" / first, ns=(1, 1))
    Image.fromarray(np.full((28, 28), 9, np.uint8)).save(tmp_path / "ds" / "class1" / "new.png")
    d = load_folder(tmp_path / "ds", T, progress=False)
    assert sorted(Path(c).name for c in calls) == sorted([Path(first).name, "new.png"])
    assert len(d.train) + len(d.test) == 41
    # a removed file disappears; a different transform rebuilds everything
    (tmp_path / "ds" / "class1" / "new.png").unlink()
    assert len(load_folder(tmp_path / "ds", T, progress=False).train) + len(d.test) <= 41
    calls.clear()
    load_folder(tmp_path / "ds", Transform((14, 14), 0, "white", 0.1), progress=False)
    assert len(calls) == 40


def test_corrupt_image_names_the_file_or_is_skipped(tmp_path):
    write_class_folder(tmp_path / "ds", 30)
    (tmp_path / "ds" / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="broken.png: cannot read this image.*--skip-bad-images"):
        load_folder(tmp_path / "ds", T, progress=False)
    d = load_folder(tmp_path / "ds", T, skip_bad=True, progress=False)
    assert len(d.train) + len(d.test) == 30
    assert len(d.skipped) == 1 and d.skipped[0].startswith("class1/broken.png")


def test_truncated_image_fails_in_decoding_and_is_skipped(tmp_path):
    write_class_folder(tmp_path / "ds", 30)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(good, "PNG")
    (tmp_path / "ds" / "class1" / "cut.png").write_bytes(good.getvalue()[:200])  # header fine, data cut
    with pytest.raises(DataError, match="cut.png"):
        load_folder(tmp_path / "ds", T, progress=False)
    d = load_folder(tmp_path / "ds", T, skip_bad=True, progress=False)
    assert [s.split(":")[0] for s in d.skipped] == ["class1/cut.png"]
    rows = np.concatenate([s.images.read(np.arange(len(s))) for s in (d.train, d.test)])
    assert len(rows) == 30 and rows.max() > 0  # the bad row was dropped, not left as zeros


def test_parallel_decoding_matches_serial(tmp_path):
    write_class_folder(tmp_path / "ds", 300)  # above the in-process threshold: a process pool
    d = load_folder(tmp_path / "ds", T, progress=False)
    x, _ = digits(300)
    rows = d.train.images.read(np.arange(len(d.train)))
    assert len(d.train) + len(d.test) == 300
    assert {r.tobytes() for r in rows} <= {img.tobytes() for img in x}


# ----------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw", "float"])
def test_array_layouts(tmp_path, layout):
    x, y = digits(50)
    arr = {"nhw": x, "nhwc": x[..., None].repeat(3, -1), "nchw": x[:, None].repeat(3, 1),
           "float": x.astype(np.float32) / 255}[layout]
    np.savez(tmp_path / "a.npz", images=arr, labels=y)
    d = load_array(tmp_path / "a.npz", T, progress=False)
    c = 3 if layout in ("nhwc", "nchw") else 1
    assert d.image_shape == (c, 28, 28) and len(d.train) + len(d.test) == 50
    assert d.classes == tuple(str(i) for i in range(int(y.max()) + 1))
    first = d.train.images.read(np.array([0]))[0, 0]
    assert any(np.array_equal(first, img) for img in x)


def test_array_splits_masks_and_npy(tmp_path):
    x, y = digits(20)
    np.savez(tmp_path / "s.npz", train=x[:15], test=x[15:], train_labels=y[:15], test_labels=y[15:])
    d = load_array(tmp_path / "s.npz", T, progress=False)
    assert (len(d.train), len(d.test)) == (15, 5) and torch.equal(d.test.labels, torch.from_numpy(y[15:]))
    mask = np.zeros(20, bool)
    mask[:4] = True
    np.savez(tmp_path / "m.npz", images=x, train=~mask, test=mask)
    assert len(load_array(tmp_path / "m.npz", T, progress=False).test) == 4
    np.save(tmp_path / "x.npy", x)
    d = load_array(tmp_path / "x.npy", Transform(None, 0, "white", 0.3), progress=False)
    assert not d.labelled and len(d.test) > 0


def test_bad_arrays_get_one_line_errors(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.full((4, 8, 8), 2.0, np.float32))
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        load_array(tmp_path / "f.npz", T, progress=False)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}] * 3, dtype=object))
    with pytest.raises(DataError, match="cannot read this array file"):
        load_array(tmp_path / "o.npy", T, progress=False)  # allow_pickle=False: no code runs
    np.savez(tmp_path / "k.npz", pictures=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DataError, match="expected an array 'images'"):
        load_array(tmp_path / "k.npz", T, progress=False)
    np.savez(tmp_path / "s.npz", images=np.zeros((4, 5), np.uint8))
    with pytest.raises(DataError, match="N x H x W"):
        load_array(tmp_path / "s.npz", T, progress=False)


def test_load_configured_dispatches_and_explains_unknown_names(tmp_path):
    write_class_folder(tmp_path / "ds", 20)
    assert load_configured(DataConfig(dataset=str(tmp_path / "ds")), progress=False).image_shape == (1, 28, 28)
    with pytest.raises(DataError, match="not a named dataset"):
        load_configured(DataConfig(dataset="imagenet"))
    with pytest.raises(DataError, match="does not exist"):
        load_configured(DataConfig(dataset=str(tmp_path / "nope")))


# ----------------------------------------------------------------------------- batches


def _splitmix_reference(counter: int, key: int) -> float:
    m = (1 << 64) - 1
    x = (counter + (key + 1) * 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    x ^= x >> 31
    return (x >> 40) / 2**24


def test_counter_uniform_is_splitmix_and_uniform():
    idx = torch.tensor([0, 5, 123456])
    u = counter_uniform(idx, 7, key=3)
    for b, i in enumerate(idx.tolist()):
        for p in range(7):
            assert u[b, p].item() == _splitmix_reference(i * 7 + p, 3)
    big = counter_uniform(torch.arange(1000), 100, key=0)
    assert abs(big.mean().item() - 0.5) < 0.005 and abs(big.var().item() - 1 / 12) < 0.002
    assert not torch.equal(counter_uniform(idx, 7, key=4), u)


@pytest.mark.parametrize("binarization,dequantize", [("dynamic", False), ("fixed", False), ("none", True),
                                                     ("none", False)])
def test_streamed_and_resident_give_the_same_batches(tmp_path, binarization, dequantize):
    x = torch.randint(0, 256, (103, 3, 4, 6), dtype=torch.uint8)
    path = tmp_path / "x.u8"
    path.write_bytes(x.numpy().tobytes())
    labels = torch.arange(103)
    on_disk = Split(ImageFile(path, (103, 3, 4, 6)), labels)
    feed = Feed(binarization, dequantize)
    resident = Batches(Split(x, labels), 16, feed, "cpu", loading=Loading(seed=7, resident=True))
    streamed = Batches(on_disk, 16, feed, "cpu", loading=Loading(seed=7, resident=False))
    assert resident.resident and not streamed.resident and len(resident) == 7
    for _ in range(2):  # two epochs: the generators advance alike
        for (a, ya, *_), (b, yb, *_) in zip(resident, streamed, strict=True):
            assert torch.equal(ya, yb) and torch.equal(a, b)
    assert Batches(on_disk, 16, Feed("none"), "cpu", loading=Loading(budget=10)).resident is False
    assert Batches(on_disk, 16, Feed("none"), "cpu", loading=Loading(budget=10**6)).resident is True


def test_streaming_stops_cleanly_when_the_loop_breaks(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (500, 1, 2, 2), dtype=np.uint8)
    (tmp_path / "x.u8").write_bytes(x.tobytes())
    b = Batches(Split(ImageFile(tmp_path / "x.u8", (500, 1, 2, 2)), np.zeros(500, np.int64)), 10, Feed("none"), "cpu",
                loading=Loading(resident=False, prefetch=2))
    for i, _ in enumerate(b):
        if i == 3:
            break  # the prefetch thread must not hang the process
    assert sum(1 for _ in b) == 50


def test_image_file_reads_any_order():
    import tempfile

    x = np.arange(40 * 3, dtype=np.uint8).reshape(40, 3, 1, 1)
    with tempfile.NamedTemporaryFile() as fh:
        fh.write(x.tobytes())
        fh.flush()
        f = ImageFile(Path(fh.name), (40, 3, 1, 1))
        idx = np.array([5, 3, 4, 39, 0, 4])
        assert np.array_equal(f.read(idx), x[idx])
        assert np.array_equal(f.head(7).load().numpy(), x[:7])


def test_test_inputs_do_not_depend_on_chunking():
    x = torch.randint(0, 256, (50, 1, 3, 3), dtype=torch.uint8)
    s = SplitInputs(Split(x, torch.zeros(50, dtype=torch.int64)), Feed("dynamic"), 0, "cpu")
    whole = s.rows(0, 50)[0]
    assert torch.equal(torch.cat([c for c, _, _ in s.chunks(7)]), whole)
    assert set(whole.unique().tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_archive(path: Path, n: int = 10, seed: int = 0, corrupt: str | None = None) -> None:
    """A CIFAR-10 archive in the official binary format with n records per batch."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            labels = rng.integers(0, 10, n, dtype=np.uint8)
            if corrupt == "label" and name == "test_batch.bin":
                labels[0] = 12
            pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            raw = np.concatenate([labels[:, None], pixels], 1).tobytes()
            if corrupt == "truncate" and name == "data_batch_3.bin":
                raw = raw[:-100]
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        meta = "\n".join(vd.DATASETS["cifar10"].classes).encode()
        info = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))


def test_cifar10_from_official_archive_and_extracted_folder(tmp_path):
    cifar_archive(tmp_path / vd.CIFAR_ARCHIVE)
    d = vd.load_dataset("cifar10", tmp_path)
    assert d.image_shape == (3, 32, 32) and (len(d.train), len(d.test)) == (50, 10)
    assert d.classes[0] == "airplane" and d.labelled
    with tarfile.open(tmp_path / vd.CIFAR_ARCHIVE) as tar:
        raw = tar.extractfile("cifar-10-batches-bin/data_batch_1.bin").read()
        tar.extractall(tmp_path / "x", filter="data")
    first = np.frombuffer(raw[:3073], np.uint8)
    assert int(d.train.labels[0]) == first[0]
    assert np.array_equal(d.train.images[0].numpy().reshape(-1), first[1:])  # R plane, G, B, row-major
    e = vd.load_dataset("cifar10", tmp_path / "x")  # extracted batches
    assert torch.equal(e.train.images, d.train.images)


def test_cifar10_trains_with_the_eight_bit_recipe(tmp_path, capsys):
    from vaelab.cli import main

    cifar_archive(tmp_path / vd.CIFAR_ARCHIVE, n=40)
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 0
    assert "8-bit colour training images of 3x32x32" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["data"]["binarization"], cfg["model"]["net"], cfg["model"]["hidden"]) == ("none", "resnet",
                                                                                          [32, 64, 128])
    assert main(["evaluate", str(tmp_path / "run"), "--n", "10", "--k", "2", "--quiet"]) == 0
    said = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("binarization"))
    assert "8-bit values as stored" in said and "discretized" in said and "grey" not in said


@pytest.mark.parametrize("corrupt,message", [("truncate", "not a whole number of 3073-byte"),
                                             ("label", "label 12 outside 0..9")])
def test_cifar10_damaged_files_are_named(tmp_path, corrupt, message):
    cifar_archive(tmp_path / vd.CIFAR_ARCHIVE, corrupt=corrupt)
    with pytest.raises(DataError, match=message):
        vd.load_dataset("cifar10", tmp_path)


def test_cifar10_download_checks_md5_and_writes_atomically(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    cifar_archive(mirror / vd.CIFAR_ARCHIVE)
    md5 = hashlib.md5((mirror / vd.CIFAR_ARCHIVE).read_bytes()).hexdigest()
    info = vd.DATASETS["cifar10"]
    fake = vd.DatasetInfo(**{**info.__dict__, "md5": {vd.CIFAR_ARCHIVE: md5}, "mirrors": (mirror.as_uri() + "/",)})
    monkeypatch.setitem(vd.DATASETS, "cifar10", fake)
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    d = vd.load_dataset("cifar10")
    assert len(d.test) == 10
    assert (tmp_path / "cache" / "vaelab" / "cifar10" / vd.CIFAR_ARCHIVE).is_file()
    bad = vd.DatasetInfo(**{**info.__dict__, "md5": {vd.CIFAR_ARCHIVE: "0" * 32}, "mirrors": (mirror.as_uri() + "/",)})
    monkeypatch.setitem(vd.DATASETS, "cifar10", bad)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    with pytest.raises(DataError, match="MD5 mismatch"):
        vd.load_dataset("cifar10")
    assert not any((tmp_path / "cache2" / "vaelab" / "cifar10").iterdir())  # nothing half-written left


# ----------------------------------------------------------------------------- the shared image cache


def _colour_folder(root: Path, n: int = 30) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")


def test_each_size_has_its_own_cache_and_a_reader_keeps_its_version(tmp_path):
    root = tmp_path / "pics"
    _colour_folder(root)
    t16, t8 = Transform((16, 16), 0, "white", 0.2), Transform((8, 8), 0, "white", 0.2)
    first = load_folder(root, t16, progress=False)
    before = first.train.images.read(np.arange(3))
    load_folder(root, t8, progress=False)  # another size: its own folder, the 16x16 cache untouched
    assert vc.cache_folder(root.resolve(), t16) != vc.cache_folder(root.resolve(), t8)
    index = vc.cache_folder(root.resolve(), t16) / "index.json"
    stamp = index.read_bytes()
    load_folder(root, t16, progress=False)
    assert index.read_bytes() == stamp  # reused, not rebuilt
    # the folder changes and another run rebuilds the 16x16 cache under the first reader
    _colour_folder(root, 40)  # ten more images
    second = load_folder(root, t16, progress=False)
    assert len(second.train) + len(second.test) == 40
    np.testing.assert_array_equal(first.train.images.read(np.arange(3)), before)  # its own version


def test_half_built_caches_of_dead_builders_are_removed(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "pics"
    _colour_folder(root)
    t = Transform((8, 8), 0, "white", 0.2)
    folder = vc.cache_folder(root.resolve(), t)
    folder.parent.mkdir(parents=True)
    dead = folder.parent / f".{folder.name}-999999999-x1"  # no such process
    alive = folder.parent / f".{folder.name}-{os.getpid()}-x2"
    dead.mkdir()
    alive.mkdir()
    load_folder(root, t, progress=False)
    assert not dead.exists() and alive.exists()


def test_decoding_workers_end_with_their_parent_and_take_sigterm_plainly():
    import multiprocessing
    import signal

    def child(queue):
        signal.signal(signal.SIGTERM, lambda *a: None)  # as the training process's handler
        vi._worker_init()
        queue.put(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=child, args=(queue,))
    p.start()
    assert queue.get(timeout=60) is True
    p.join()


@pytest.mark.parametrize("n_labels", [5, 15])
def test_an_npz_whose_labels_do_not_match_its_images_is_named(tmp_path, n_labels):
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.arange(n_labels) % 3)
    with pytest.raises(DataError, match="'labels' must hold one integer per image \\(10\\)"):
        load_array(tmp_path / "a.npz", Transform(None, 0, "white", 0.3), progress=False)


@pytest.mark.parametrize("labels, shown", [
    (np.array([0, 1, 2, 0, 1, 2, -1, 0, 1, 2]), "'labels' must be integers >= 0; row 6 is -1"),
    (np.array([0, 1, 2, 0, np.nan, 2, 1, 0, 1, 2]), "'labels' must be integers >= 0, got float64; row 4 is nan"),
    (np.array([0, 1, 2, 0, 1, 2, 1, 0.5, 1, 2]), "'labels' must be integers >= 0, got float64; row 7 is 0.5"),
])
def test_bad_labels_of_an_npz_are_named_by_row(tmp_path, labels, shown):
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=labels)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'a.npz'}: {shown}")):
        load_array(tmp_path / "a.npz", Transform(None, 0, "white", 0.3), progress=False)


def test_bad_labels_of_a_split_name_the_split_and_row(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", train=images, test=images[:3], train_labels=np.arange(6) % 2,
             test_labels=np.array([0, -3, 1]))
    with pytest.raises(DataError, match="labels of the test split must be integers >= 0; row 1 is -3"):
        load_array(tmp_path / "a.npz", Transform(None, 0, "white", 0.3), progress=False)
