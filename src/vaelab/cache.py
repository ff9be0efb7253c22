"""The uint8 cache on disk that the user's folders and array files are read through.

One folder per source and transform, ``$XDG_CACHE_HOME/vaelab/images/<hash of the path and
the transform>/``, holds a raw uint8 file per split, ``train.u8`` and ``test.u8`` (N, C, H, W),
``manifest.json`` (files with sizes and mtimes, the transform, labels) and ``index.json`` (the
same without the file lists: what a reuse reads). A cache is built in a temporary folder beside
its place and swapped in whole; it is reused while its source is unchanged, and a refresh copies
the rows of unchanged files instead of decoding them again. ``vaelab.images`` (folders) and
``vaelab.arrays`` (array files) fill it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.data import DataError, Dataset, Factors, ImageFile, Split, cache_dir
from vaelab.files import FileError, describe, dir_mode, swap_in, write_json

CACHE_VERSION = 1


def cache_folder(source: Path, transform: Any) -> Path:
    """The cache of `source` under `transform` (a ``vaelab.images.Transform``): one folder per
    (path, whole transform), so runs at different sizes never rebuild, or pull files from under,
    each other's cache."""
    key = json.dumps([str(source), transform.to_json()], sort_keys=True)
    return cache_dir() / "images" / hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=10).hexdigest()


def identity(listed: list, spec: dict[str, Any], skip_bad: bool) -> tuple[str, str]:
    """(fingerprint of the data: the file list with sizes and times, and the transform;
    stamp of the cache: the same plus the skip-bad-images choice), from one hash."""
    digest = hashlib.sha256(json.dumps([listed, spec], separators=(",", ":")).encode()).hexdigest()
    return digest[:16], f"{digest}:{int(skip_bad)}"


def read_manifest(folder: Path, name: str = "manifest.json") -> dict[str, Any] | None:
    """The cache's manifest (or index), or None when it is missing, damaged or of another version."""
    try:
        m = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("version") == CACHE_VERSION else None


def cached(folder: Path, stamp: str) -> Dataset | None:
    """The cached dataset if its index carries `stamp`: the fast path reads only index.json
    (shape, classes, labels), not the manifest with every file name."""
    index = read_manifest(folder, "index.json")
    if index is None or index.get("stamp") != stamp or "factors" not in index:  # built before factors: rebuild
        return None
    return _dataset_from_cache(folder, index)


def _remove_dead_builds(folder: Path) -> None:
    """Remove the half-built caches of `folder` that processes killed during a build left
    (their folder names carry the builder's pid; a live builder's folder is left alone)."""
    for tmp in folder.parent.glob(f".{folder.name}-*-*"):
        pid = tmp.name[len(folder.name) + 2 :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _new_build(folder: Path) -> Path:
    """A temporary folder beside cache `folder` to build into (swapped in by finish)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_builds(folder)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-{os.getpid()}-"))
        os.chmod(tmp, dir_mode())
        return tmp
    except OSError as e:
        raise FileError(describe(e, "cannot create the image cache") + "; or set XDG_CACHE_HOME to a "
                        "writable folder") from None


@contextmanager
def building(folder: Path) -> Iterator[Path]:
    """A temporary folder to build cache `folder` in; removed afterwards whatever happens,
    and OS errors (a full disk) become one-line FileErrors."""
    tmp = _new_build(folder)
    try:
        yield tmp
    except OSError as e:
        raise FileError(describe(e, "cannot build the image cache") + "; or set XDG_CACHE_HOME to another "
                        "folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def new_raw(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A raw uint8 file of `shape` with its blocks reserved up front: a full disk is an
    ENOSPC error here, not a SIGBUS when a memory-mapped page is written later."""
    with open(path, "wb") as fh:
        n = int(np.prod(shape))
        if n:
            os.posix_fallocate(fh.fileno(), 0, n)
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)


def compact(path: Path, shape: tuple[int, ...], kept: list[int]) -> None:
    """Rewrite raw file `path` (shape) keeping rows `kept`, in chunks."""
    src = ImageFile(path, shape)
    tmp = path.with_suffix(".compact")
    with open(tmp, "wb") as out:
        for i in range(0, len(kept), 1024):
            out.write(src.read(np.asarray(kept[i : i + 1024])).tobytes())
    os.replace(tmp, path)


def reusable_rows(old: dict[str, Any] | None, spec: dict[str, Any], shape: tuple[int, ...], listed: list,
                   root: Path, folder: Path) -> dict[str, tuple[Path, int]]:
    """Rows of unchanged files (same name, size and time) in an old cache with the same shape
    and transform: copied, not decoded again. path -> (raw file, row)."""
    reuse: dict[str, tuple[Path, int]] = {}
    if not (old and old["kind"] == "folder" and old["transform"] == spec and old["shape"] == list(shape)):
        return reuse
    then = {f[0]: f[1:] for f in old["files"]}
    now = {f[0]: f[1:] for f in listed}
    for split in ("train", "test"):
        for row, rel in enumerate(old["splits"][split]["files"]):
            if rel in now and then.get(rel) == now[rel]:
                reuse[str(root / rel)] = (folder / f"{split}.u8", row)
    return reuse


def copy_unchanged(target: Path, shape: tuple[int, ...], paths: list[str],
               reuse: dict[str, tuple[Path, int]]) -> list[tuple[int, str]]:
    """Create raw uint8 file `target` (N, C, H, W) for the images of `paths` and copy into it
    the rows of unchanged files from an old cache (`reuse`: path -> (raw file, row)). Returns
    the (row, path) pairs still to decode."""
    out = new_raw(target, shape)
    todo, copies = [], {}  # copies: old raw file -> [(new row, old row)]
    for row, p in enumerate(paths):
        if p in reuse:
            raw, old_row = reuse[p]
            copies.setdefault(raw, []).append((row, old_row))
        else:
            todo.append((row, p))
    for raw, pairs in copies.items():  # one sorted read per chunk, not a file open per image
        old = ImageFile(raw, (-1, *shape[1:]))
        for i in range(0, len(pairs), 4096):
            new_rows, old_rows = zip(*pairs[i : i + 4096])
            out[list(new_rows)] = old.read(np.array(old_rows))
    out.flush()
    del out
    return todo


def finish(tmp: Path, folder: Path, manifest: dict[str, Any], stamp: str) -> Dataset:
    """Write the manifest and the index of a built cache, swap it in, return its Dataset."""
    index = {k: v for k, v in manifest.items() if k not in ("files", "splits")}
    index.update(stamp=stamp, labels={s: manifest["splits"][s]["labels"] for s in ("train", "test")},
                 factors={s: manifest["splits"][s].get("factors") for s in ("train", "test")})
    write_json(tmp / "manifest.json", manifest, indent=None)
    write_json(tmp / "index.json", index, indent=None)
    swap_in(tmp, folder)
    return _dataset_from_cache(folder, index)


def _dataset_from_cache(folder: Path, m: dict[str, Any]) -> Dataset:
    shape = tuple(m["shape"])
    classes = tuple(m["classes"])
    splits = {}
    for split in ("train", "test"):
        listed = m["labels"][split]
        rows = len(listed)
        images = ImageFile(folder / f"{split}.u8", (rows, *shape)).open()  # this version, whatever comes later
        if images.file_size() != images.nbytes:
            raise DataError(f"{images.path}: cache file has the wrong size; delete {folder} to rebuild it")
        labels = np.asarray([-1 if v is None else v for v in listed], dtype=np.int64)
        codes = (m.get("factors") or {}).get(split)
        splits[split] = Split(images, labels, factors=None if codes is None else np.asarray(codes, np.int64))
    skipped = tuple(f"{rel}: {why}" for rel, why in m.get("bad", []))
    factors = None
    if splits["train"].factors is not None:
        top = np.maximum(splits["train"].factors.numpy().max(0), splits["test"].factors.numpy().max(0))
        factors = Factors(tuple(m["factor_names"]), tuple(np.arange(t + 1) for t in top.tolist()), None)
    return Dataset(Path(m["source"]).name, splits["train"], splits["test"], classes, m["source"],
                   fingerprint=m["fingerprint"], skipped=skipped, cache=str(folder), factors=factors)
