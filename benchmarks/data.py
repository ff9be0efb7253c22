"""Data-path benchmarks on real images (Debian's oxygen-icon-theme): cache build speed,
warm start on 50k files, streamed vs resident training, a conv VAE on 32x32 colour icons.

    python benchmarks/data.py [--what cache,warm,stream,conv] [--quick] [--work DIR] [--out benchmarks/results]

Sections (each selectable with --what; results are merged into
OUT/data-<date>.json, so sections can be run one at a time):

cache   N (default 2000) 256x256 JPEGs (quality 90) made from the 256x256 icons
        composited on white, with extra distinct images derived by flips, 90-degree
        rotations and small crops resized back (deterministic, exact duplicates
        skipped), in one class folder per icon category. A fresh process calls
        vaelab.images.load_folder(DIR, Transform((64, 64), 0, "white", 0.1)) on an empty
        cache (cold build: images/s and images/s per core), then a second fresh process
        loads the unchanged folder again. Target: >= 400 images/s per core.
warm    50,000 16x16 PNGs derived the same way from the 16..48 px icons; the cache is
        built once (timed), then fresh processes run `import vaelab.training` and
        load_configured(DataConfig(dataset=DIR, image_size=(16, 16))): the wall time
        from process start to having the Dataset. Target: under 2 s.
stream  60,000 MNIST training digits as a uint8 .npy (full MNIST via $VAELAB_DATA,
        else the shipped mnist-sample tiled): `vaelab train` of the 784-512-512-50 ReLU
        MLP VAE, resident (default budget) and streamed (--memory-budget 11MB, the cache
        >= 4x the budget), epoch-2 images/s and peak RSS (/usr/bin/time -v). Then the
        same for 60,000 x 3 x 64 x 64 icon images (~737 MB) with a 180 MB budget and a
        small conv VAE for one epoch (a 20,000-image subset when a probe predicts an
        epoch over --big-max-epoch-s). Targets: streamed/resident >= 0.8; streamed peak
        RSS <= budget + model training state + 500 MB.
conv    the 32x32 icons (exact duplicates removed) as a class-folder dataset, a conv VAE
        with a 5-component discretized logistic mixture trained for E epochs (E chosen
        by a 1-epoch calibration run to take about --conv-budget-s seconds, or given with
        --conv-epochs: epochs slow down as training goes on, so the calibrated E
        overshoots), then `vaelab evaluate RUN --k 100`: test bits/dim over seeds (a
        seed whose training stops, e.g. on a NaN loss, is recorded and left out).

Every measurement runs vaelab in a fresh subprocess with XDG_CACHE_HOME pointing into
the scratch folder (--work, under /tmp), so the user's cache is never touched, and
records os.getloadavg() when it starts: the machine may be shared, timings are noisy.
The images are in the page cache when timed (they were just written): "cold" means the
vaelab cache is empty, not the disk cache. PyTorch runs one thread per core by default;
when another job keeps a core busy, those threads wait on each other and training runs
an order of magnitude slower (measured 17x for an MLP step). `--threads N` sets
OMP_NUM_THREADS for the vaelab processes and stores the results as SECTION-threadsN,
next to the default-thread ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path

import numpy as np

from common import Run
from vaelab.runtime import cpu_name

ICONS = Path("/usr/share/icons/oxygen/base")
SECTIONS = ("cache", "warm", "stream", "conv")
GEN_VERSION = 1  # bump when the derived images change, so old scratch data are rebuilt
CORES = os.cpu_count() or 1

# ----------------------------------------------------------------------------- real images


def icon_paths(size: int) -> list[tuple[str, Path]]:
    """(category, path) of the oxygen icons of one size, sorted, exact duplicates removed
    (the theme links one picture under several names: keeping both would put copies of
    an image on both sides of the train/test split)."""
    folder = ICONS / f"{size}x{size}"
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} not found. These benchmarks use real colour images from Debian's "
                         f"oxygen icon theme: run `apt-get install oxygen-icon-theme` (as root) and try again.")
    seen, out = set(), []
    for path in sorted(folder.glob("*/*.png")):
        digest = hashlib.sha1(path.read_bytes()).digest()
        if digest not in seen:
            seen.add(digest)
            out.append((path.parent.name, path))
    if not out:
        raise SystemExit(f"error: no PNG icons under {folder}; reinstall with `apt-get install --reinstall "
                         "oxygen-icon-theme`")
    return out


def open_rgba(path: Path, max_side: int | None = None):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGBA")
    if max_side and max(im.size) > max_side:
        im = im.resize((max_side, max_side), Image.LANCZOS)
    return im


def on_white(im):
    from PIL import Image

    canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, im).convert("RGB")


def variant(im, v: int, size: int):
    """Deterministic variant `v` of a square image at size x size: v % 8 picks one of the 8
    flips/90-degree rotations; v // 8 = c > 0 first crops a margin of 4% * ceil(c / 5)
    at one of 5 anchors (centre, 4 corners), then resizes back."""
    from PIL import Image

    c = v // 8
    if c:
        w, h = im.size
        m = max(1, round(0.04 * ((c - 1) // 5 + 1) * w))
        anchor = (c - 1) % 5
        left, top = {0: (m // 2, m // 2), 1: (0, 0), 2: (m, 0), 3: (0, m), 4: (m, m)}[anchor]
        im = im.crop((left, top, left + w - m, top + h - m))
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC, reducing_gap=3.0)
    d = v % 8
    if d & 1:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    rot = d >> 1
    if rot:
        im = im.transpose((Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)[rot - 1])
    return im


def derived(sources: list, n: int, size: int):
    """Yield (source index, variant, image) for n distinct images: every source once
    (variant 0), then variant 1 of every source, and so on; exact duplicates skipped."""
    seen: set[bytes] = set()
    made = 0
    for v in range(10_000):
        for i, src in enumerate(sources):
            im = variant(src, v, size)
            key = hashlib.blake2b(im.tobytes(), digest_size=16).digest()
            if key in seen:
                continue
            seen.add(key)
            yield i, v, im
            made += 1
            if made == n:
                return
    raise RuntimeError(f"could not derive {n} distinct images from {len(sources)} sources")


def _marker_ok(marker: Path, spec: dict) -> bool:
    try:
        return json.loads(marker.read_text()) == spec
    except (OSError, ValueError):
        return False


def make_jpeg_folder(root: Path, n: int) -> dict:
    """n 256x256 JPEGs (quality 90) in class folders, from the 256x256 icons on white."""
    spec = {"kind": "jpeg256", "n": n, "version": GEN_VERSION}
    marker = root.with_name(root.name + ".json")
    icons = icon_paths(256)
    if not _marker_ok(marker, spec):
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        sources = [on_white(open_rgba(p)) for _, p in icons]
        for i, v, im in derived(sources, n, 256):
            cat, path = icons[i]
            (root / cat).mkdir(parents=True, exist_ok=True)
            im.save(root / cat / f"{path.stem}-v{v}.jpg", quality=90)
        marker.write_text(json.dumps(spec))
        spec["generate_s"] = round(time.perf_counter() - t, 1)
    files = sorted(root.rglob("*.jpg"))
    return {**spec, "source_icons": len(icons), "files": len(files),
            "bytes": sum(f.stat().st_size for f in files), "classes": len({f.parent.name for f in files})}


def make_png_folder(root: Path, n: int, size: int) -> dict:
    """n size x size RGBA PNGs derived from the 16, 22, 32 and 48 px icons, by category."""
    spec = {"kind": f"png{size}", "n": n, "version": GEN_VERSION}
    marker = root.with_name(root.name + ".json")
    icons = [(cat, p) for s in (16, 22, 32, 48) for cat, p in icon_paths(s)]
    if not _marker_ok(marker, spec):
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        sources = [open_rgba(p) for _, p in icons]
        for cat in {c for c, _ in icons}:
            (root / cat).mkdir(parents=True, exist_ok=True)
        k = 0
        for i, v, im in derived(sources, n, size):
            cat, path = icons[i]
            im.save(root / cat / f"{k:06d}-{path.stem}-v{v}.png", compress_level=1)
            k += 1
        marker.write_text(json.dumps(spec))
        spec["generate_s"] = round(time.perf_counter() - t, 1)
    return {**spec, "source_icons": len(icons)}


def make_icon_array(path: Path, n: int, size: int) -> dict:
    """n x 3 x size x size uint8 .npy of icons (64, 128, 256 px) on white, derived as above."""
    spec = {"kind": f"icons{size}", "n": n, "version": GEN_VERSION}
    marker = path.with_name(path.name + ".json")
    icons = [(cat, p) for s in (64, 128, 256) for cat, p in icon_paths(s)]
    if not _marker_ok(marker, spec) or not path.is_file():
        t = time.perf_counter()
        sources = [on_white(open_rgba(p, max_side=2 * size)) for _, p in icons]
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        for k, (_, _, im) in enumerate(derived(sources, n, size)):
            out[k] = np.asarray(im).transpose(2, 0, 1)
        out.flush()
        del out
        marker.write_text(json.dumps(spec))
        spec["generate_s"] = round(time.perf_counter() - t, 1)
    return {**spec, "source_icons": len(icons), "bytes": path.stat().st_size}


def make_mnist_array(path: Path, n: int) -> dict:
    """n MNIST training digits (N x 28 x 28 uint8) as an .npy: full MNIST if vaelab finds it
    (e.g. $VAELAB_DATA/mnist), else the shipped 2,500-digit sample tiled to n."""
    from vaelab.data import DataError, load_dataset

    try:
        data = load_dataset("mnist", download=False)
        images = data.train.images.numpy()[:, 0]
        source = f"mnist train split from {data.source}"
    except DataError:
        data = load_dataset("mnist-sample")
        pool = np.concatenate([data.train.images.numpy(), data.test.images.numpy()])[:, 0]
        images = np.resize(pool, (max(n, len(pool)), 28, 28))
        source = f"mnist-sample ({len(pool)} digits) tiled: full MNIST not found"
    images = np.ascontiguousarray(images[:n])
    spec = {"kind": "mnist", "n": len(images), "source": source, "version": GEN_VERSION}
    marker = path.with_name(path.name + ".json")
    if not _marker_ok(marker, spec) or not path.is_file():
        np.save(path, images)
        marker.write_text(json.dumps(spec))
    return {**spec, "bytes": path.stat().st_size}


def subset_array(src: Path, dst: Path, n: int) -> None:
    spec = {"kind": "subset", "of": str(src), "n": n, "src_mtime": src.stat().st_mtime_ns}
    marker = dst.with_name(dst.name + ".json")
    if not _marker_ok(marker, spec) or not dst.is_file():
        np.save(dst, np.load(src, mmap_mode="r")[:n])
        marker.write_text(json.dumps(spec))


def make_icon_folder(root: Path, size: int) -> dict:
    """The size x size icons themselves (exact duplicates and files of another size left
    out), one folder per category."""
    from PIL import Image

    spec = {"kind": f"icons{size}-folder", "version": GEN_VERSION, "only": f"{size}x{size}"}
    marker = root.with_name(root.name + ".json")
    icons, odd = [], []
    for cat, p in icon_paths(size):
        with Image.open(p) as im:  # a few files in the theme's 32x32 folder are 22x22 or a 32x480 strip
            (icons if im.size == (size, size) else odd).append((cat, p))
    if not _marker_ok(marker, spec):
        shutil.rmtree(root, ignore_errors=True)
        for cat, p in icons:
            (root / cat).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, root / cat / p.name)
        marker.write_text(json.dumps(spec))
    per_class: dict[str, int] = {}
    for cat, _ in icons:
        per_class[cat] = per_class.get(cat, 0) + 1
    total = len(list((ICONS / f"{size}x{size}").glob("*/*.png")))
    return {**spec, "files": len(icons), "files_before_dedup": total, "left_out_not_square_size": len(odd),
            "per_class": per_class}


# ----------------------------------------------------------------------------- measuring


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


class Env:
    """Environment for the subprocesses: XDG_CACHE_HOME in the scratch folder."""

    def __init__(self, work: Path, threads: int = 0) -> None:
        self.work, self.threads = work, threads

    def fresh_cache(self, name: str) -> dict[str, str]:
        xdg = self.work / "xdg" / name
        shutil.rmtree(xdg, ignore_errors=True)
        xdg.mkdir(parents=True)
        return self.cache(name)

    def cache(self, name: str) -> dict[str, str]:
        xdg = self.work / "xdg" / name
        xdg.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "XDG_CACHE_HOME": str(xdg), "PYTHONUNBUFFERED": "1"}
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        return env


def run_python(code: str, args: list[str], env: dict[str, str]) -> dict:
    """Run `python -c code args` in a fresh process; its last stdout line is JSON. Adds the
    wall time from spawn to exit, the CPU seconds of it and its children, and the load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = loadavg()
    t = time.perf_counter()
    spawned = time.time()
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise RuntimeError(f"subprocess failed ({p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
    if "dataset_at" in out:  # the child's wall clock when it had the Dataset: spawn -> Dataset, exit excluded
        out["spawn_to_dataset_s"] = round(out.pop("dataset_at") - spawned, 3)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**out, "process_wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "loadavg": load}


def run_vaelab(args: list[str], env: dict[str, str], log: Path, check: bool = True) -> dict:
    """`vaelab ARGS` (as python -m vaelab, the command common.vaelab runs) under /usr/bin/time -v: wall,
    peak RSS, load. Not common.vaelab: the peak RSS needs a wrapper process and the output goes to `log`."""
    cmd = [sys.executable, "-m", "vaelab", *args]
    timefile = log.with_suffix(".time")
    if Path("/usr/bin/time").exists():
        full = ["/usr/bin/time", "-v", "-o", str(timefile), *cmd]
    else:  # a wrapper that reports the peak RSS of its child
        wrapper = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[2:]).returncode; "
                   "open(sys.argv[1], 'w').write('Maximum resident set size (kbytes): %d\\n' % "
                   "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
        full = [sys.executable, "-c", wrapper, str(timefile), *cmd]
    load = loadavg()
    t = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.run(full, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    if p.returncode and check:
        raise RuntimeError(f"vaelab {' '.join(args)} failed ({p.returncode}); see {log}:\n"
                           + log.read_text()[-3000:])
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timefile.read_text())
    rss = int(m.group(1)) * 1024 if m else None
    failed = {"returncode": p.returncode, "error": log.read_text().strip()[-1000:]} if p.returncode else {}
    return {**failed, "command": "vaelab " + " ".join(args), "process_wall_s": round(wall, 2),
            "peak_rss_mib": None if rss is None else round(rss / 2**20, 1), "loadavg": load}


def training_state_mib(run: Path) -> dict:
    """Parameters of a run's model and the bytes of params + grads + Adam's two moments."""
    import torch

    from vaelab.checkpoint import load_run

    _, model = load_run(run, torch.device("cpu"))
    n = sum(p.numel() for p in model.parameters())
    return {"params": n, "param_mib": round(n * 4 / 2**20, 1), "train_state_mib": round(4 * n * 4 / 2**20, 1)}


def median(xs):
    return statistics.median(xs) if xs else None


# ----------------------------------------------------------------------------- 1. cache build

def _load_script(imports: str, call: str, extra: str = "") -> str:
    """A child script that times `imports`, then `d = call` (wall and CPU time, the decoding
    workers included), and prints the times, split sizes and image shape (+ `extra` fields) as JSON."""
    return f"""
import json, resource, sys, time
t0 = time.perf_counter()
def cpu():  # CPU seconds of this process and its waited-for children (the decoding workers)
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
{imports}
t1 = time.perf_counter()
c1 = cpu()
d = {call}
t2 = time.perf_counter()
print(json.dumps({{"import_s": round(t1 - t0, 3), "load_s": round(t2 - t1, 3), "load_cpu_s": round(cpu() - c1, 3),
                  "train": len(d.train), "test": len(d.test), "shape": list(d.image_shape){extra}}}))
"""


LOAD_FOLDER = _load_script("from vaelab.images import Transform, load_folder",
                           'load_folder(sys.argv[1], Transform((64, 64), 0, "white", 0.1), progress=False)',
                           ', "classes": len(d.classes)')


def bench_cache(a, env: Env) -> dict:
    folder = a.work / f"jpeg256-{a.cache_n}"
    data = make_jpeg_folder(folder, a.cache_n)
    cold, second = [], []
    for r in range(a.repeats):
        e = env.fresh_cache(f"cache-{r}")
        cold.append(run_python(LOAD_FOLDER, [str(folder)], e))
        second.append(run_python(LOAD_FOLDER, [str(folder)], e))
    n = cold[0]["train"] + cold[0]["test"]
    for c in cold:
        c["images_per_s"] = round(n / c["load_s"], 1)
        c["images_per_s_per_core"] = round(n / c["load_s"] / CORES, 1)
        c["cpu_utilisation"] = round(c["cpu_s"] / c["process_wall_s"], 2)
        c["images_per_cpu_s"] = round(n / c["load_cpu_s"], 1)  # per busy core, whatever else runs
    best = max(c["images_per_s"] for c in cold)
    med = median([c["images_per_s"] for c in cold])
    return {
        "data": data, "images": n, "cores": CORES,
        "transform": "Transform((64, 64), 0, 'white', 0.1)",
        "cold_build": cold, "second_load": second,
        "cold_images_per_s_median": round(med, 1), "cold_images_per_s_best": round(best, 1),
        "cold_images_per_s_per_core_median": round(med / CORES, 1),
        "cold_images_per_cpu_s_median": median([c["images_per_cpu_s"] for c in cold]),
        "second_load_s_median": median([s["load_s"] for s in second]),
        "second_process_wall_s_median": median([s["process_wall_s"] for s in second]),
        "target": ">= 400 images/s per core (cold build, load_folder time)",
        "target_met": med / CORES >= 400,
    }


# ----------------------------------------------------------------------------- 2. warm start

LOAD_CONFIGURED = _load_script(
    "import vaelab.training\nfrom vaelab.sources import load_configured\nfrom vaelab.config import DataConfig",
    "load_configured(DataConfig(dataset=sys.argv[1], image_size=(16, 16)), progress=False)",
    ', "dataset_at": time.time()')
IMPORT_ONLY = """
import json, time
t0 = time.perf_counter()
import vaelab.training
print(json.dumps({"import_s": round(time.perf_counter() - t0, 3)}))
"""
NOTHING = "pass"


def bench_warm(a, env: Env) -> dict:
    folder = a.work / f"png16-{a.warm_n}"
    data = make_png_folder(folder, a.warm_n, 16)
    e = env.fresh_cache("warm")
    build = run_python(LOAD_CONFIGURED, [str(folder)], e)
    n = build["train"] + build["test"]
    build["images_per_s"] = round(n / build["load_s"], 1)
    build["images_per_s_per_core"] = round(n / build["load_s"] / CORES, 1)
    build["images_per_cpu_s"] = round(n / build["load_cpu_s"], 1)
    warm, imports, bare = [], [], []
    for _ in range(a.repeats + 2):
        warm.append(run_python(LOAD_CONFIGURED, [str(folder)], e))
        imports.append(run_python(IMPORT_ONLY, [], e))
        bare.append(run_python(NOTHING, [], e))
    start = median([w["spawn_to_dataset_s"] for w in warm])
    manifest = next((env.work / "xdg" / "warm" / "vaelab" / "images").glob("*/manifest.json"))
    return {
        "data": data, "images": n, "cache_build": build, "warm_runs": warm,
        "import_vaelab_train_runs": imports,
        "manifest_mib": round(manifest.stat().st_size / 2**20, 2),
        "process_start_to_dataset_s_median": start,
        "process_start_to_exit_s_median": median([w["process_wall_s"] for w in warm]),
        "in_process_load_s_median": median([w["load_s"] for w in warm]),
        "in_process_import_s_median": median([w["import_s"] for w in warm]),
        "import_vaelab_train_process_s_median": median([i["process_wall_s"] for i in imports]),
        "python_startup_s_median": median([b["process_wall_s"] for b in bare]),
        "what": "fresh process: import vaelab.training + load_configured(DataConfig(dataset=DIR, image_size=(16,16))) "
                "on a built cache; wall time from spawn until the child holds the Dataset (time.time() in both "
                "processes; interpreter exit not counted, it is in process_start_to_exit_s)",
        "target": "< 2 s from process start to the Dataset (50k images)",
        "target_met": start < 2.0,
    }


# ----------------------------------------------------------------------------- 3. streaming

LOAD_ARRAY = _load_script("from vaelab.arrays import load_array\nfrom vaelab.images import Transform",
                          'load_array(sys.argv[1], Transform(None, 0, "white", 0.1), progress=False)',
                          ', "train_mib": d.train.nbytes / 2**20, "test_mib": d.test.nbytes / 2**20')
MLP_FLAGS = ["--hidden", "512,512", "--decoder-hidden", "512,512", "--activation", "relu", "--latent-dim", "50",
             "--batch-size", "128"]
CONV_FLAGS = ["--net", "conv", "--hidden", "32,64", "--binarization", "none", "--likelihood", "gaussian",
              "--latent-dim", "32", "--batch-size", "128"]


def _pair(a, env: Env, name: str, npy: Path, flags: list[str], epochs: int, budget_mb: int, repeats: int) -> dict:
    """Build the cache of `npy` once, then train resident and streamed (alternating, `repeats` times)."""
    e = env.fresh_cache(f"stream-{name}")
    build = run_python(LOAD_ARRAY, [str(npy)], e)
    runs: dict[str, list[dict]] = {"resident": [], "streamed": []}
    for r in range(repeats):
        for mode in ("resident", "streamed"):
            run = a.work / "runs" / f"{name}-{mode}-{r}"
            shutil.rmtree(run, ignore_errors=True)
            args = ["train", "--dataset", str(npy), *flags, "--epochs", str(epochs), "--out", str(run), "--quiet"]
            if mode == "streamed":
                args += ["--memory-budget", f"{budget_mb}MB"]
            res = run_vaelab(args, e, a.work / "runs" / f"{name}-{mode}-{r}.log")
            rows = Run(run).records()
            res["epoch_examples_per_s"] = [row["examples_per_s"] for row in rows]
            res["epoch_seconds"] = [row["seconds"] for row in rows]
            res["examples_per_s"] = rows[-1]["examples_per_s"]  # the last epoch (epoch 2 when 2 are run)
            res["run"] = str(run)
            runs[mode].append(res)
    state = training_state_mib(Path(runs["resident"][0]["run"]))
    res_ips = median([r["examples_per_s"] for r in runs["resident"]])
    str_ips = median([r["examples_per_s"] for r in runs["streamed"]])
    str_rss = max(r["peak_rss_mib"] for r in runs["streamed"])
    limit = budget_mb + state["train_state_mib"] + 500
    cache_mib = build["train_mib"] + build["test_mib"]
    return {
        "array": str(npy), "cache_build": build, "cache_mib": round(cache_mib, 1),
        "train_split_mib": round(build["train_mib"], 1), "budget_mib": budget_mb,
        "cache_over_budget": round(cache_mib / budget_mb, 2),
        "train_split_over_budget": round(build["train_mib"] / budget_mb, 2),
        "epochs": epochs, "rate_epoch": epochs, "model": state, "runs": runs,
        "resident_examples_per_s": res_ips, "streamed_examples_per_s": str_ips,
        "streamed_over_resident": round(str_ips / res_ips, 3),
        "resident_peak_rss_mib": max(r["peak_rss_mib"] for r in runs["resident"]),
        "streamed_peak_rss_mib": str_rss,
        "rss_limit_mib": round(limit, 1), "rss_limit": "budget + model training state (params, grads, Adam) + 500 MiB",
        "targets_met": {"streamed_over_resident >= 0.8": str_ips / res_ips >= 0.8,
                        "streamed peak RSS <= limit": str_rss <= limit},
    }


def bench_stream(a, env: Env) -> dict:
    out: dict = {}
    if "mnist" in a.stream_parts:
        mnist = a.work / f"mnist-{a.mnist_n}.npy"
        out["mnist_data"] = make_mnist_array(mnist, a.mnist_n)
        out["mnist"] = _pair(a, env, "mnist", mnist, MLP_FLAGS, 2, a.mnist_budget_mb, a.stream_repeats)
        out["mnist"]["flags"] = " ".join(MLP_FLAGS) + " --epochs 2"
    if "big" not in a.stream_parts:
        return out

    big = a.work / f"icons64-{a.big_n}.npy"
    out["big_data"] = make_icon_array(big, a.big_n, 64)
    # probe: one epoch on a small slice predicts the time of one epoch on the whole array
    probe_n = min(a.big_n, 2560)
    probe_npy = a.work / f"icons64-probe-{probe_n}.npy"
    subset_array(big, probe_npy, probe_n)
    e = env.fresh_cache("stream-probe")
    probe_run = a.work / "runs" / "big-probe"
    shutil.rmtree(probe_run, ignore_errors=True)
    probe = run_vaelab(["train", "--dataset", str(probe_npy), *CONV_FLAGS, "--epochs", "1", "--out", str(probe_run),
                        "--quiet"], e, a.work / "runs" / "big-probe.log")
    row = Run(probe_run).records()[0]
    per_image = row["seconds"] / probe_n  # train + test ELBO time per image of the array
    predicted = per_image * a.big_n
    probe.update(images=probe_n, epoch_seconds=row["seconds"], examples_per_s=row["examples_per_s"],
                 predicted_full_epoch_s=round(predicted, 1))
    npy, n_used, note = big, a.big_n, "full array"
    if predicted > a.big_max_epoch_s and a.big_n > a.big_subset:
        n_used = a.big_subset
        npy = a.work / f"icons64-{a.big_n}-first{n_used}.npy"
        subset_array(big, npy, n_used)
        note = (f"one epoch on all {a.big_n} images was predicted at {predicted:.0f} s > {a.big_max_epoch_s:.0f} s: "
                f"trained on the first {n_used} images (a {n_used / a.big_n:.0%} subset); the budget is kept at "
                f"{a.big_budget_mb} MB, so the cache is only {n_used * 3 * 64 * 64 / 2**20 / a.big_budget_mb:.2f}x it")
    out["big"] = _pair(a, env, "big", npy, CONV_FLAGS, 1, a.big_budget_mb, 1)
    out["big"].update(flags=" ".join(CONV_FLAGS) + " --epochs 1", probe=probe, images_used=n_used,
                      images_in_array=a.big_n, subset_note=note)
    return out


# ----------------------------------------------------------------------------- 4. conv VAE on colour icons

CONV_MIX = ["--net", "conv", "--hidden", "32,64", "--res-blocks", "1", "--binarization", "none",
            "--likelihood", "logistic-mixture", "--mixture", "5", "--latent-dim", "32"]


def bench_conv(a, env: Env) -> dict:
    folder = a.work / "icons32"
    data = make_icon_folder(folder, 32)
    e = env.fresh_cache("conv")
    out: dict = {"data": data, "flags": " ".join(CONV_MIX), "k": a.k, "budget_s": a.conv_budget_s}
    epochs = a.conv_epochs
    if not epochs:  # calibrate: one epoch, then enough epochs for the wall budget
        run = a.work / "runs" / "conv-calibrate"
        shutil.rmtree(run, ignore_errors=True)
        cal = run_vaelab(["train", "--dataset", str(folder), *CONV_MIX, "--epochs", "1", "--seed", "0",
                          "--out", str(run), "--quiet"], e, a.work / "runs" / "conv-calibrate.log")
        cal["epoch_seconds"] = Run(run).records()[0]["seconds"]
        out["calibration"] = cal
        epochs = max(1, round(a.conv_budget_s / cal["epoch_seconds"]))
    out["epochs"] = epochs
    out["epochs_source"] = "--conv-epochs" if a.conv_epochs else "calibrated from one epoch (later epochs run slower)"
    seeds = []
    for seed in a.seeds:
        run = a.work / "runs" / f"conv-seed{seed}"
        shutil.rmtree(run, ignore_errors=True)
        t = time.perf_counter()
        tr = run_vaelab(["train", "--dataset", str(folder), *CONV_MIX, "--epochs", str(epochs), "--seed", str(seed),
                         "--out", str(run), "--quiet"], e, a.work / "runs" / f"conv-seed{seed}.log", check=False)
        rows = Run(run).records()
        if tr.get("returncode"):  # e.g. the loss became NaN: recorded, not evaluated, the next seed runs
            seeds.append({"seed": seed, "train": tr, "diverged": tr["returncode"] == 1, "epochs_completed": len(rows),
                          "epoch_examples_per_s": [x["examples_per_s"] for x in rows], "run": str(run)})
            continue
        ev = run_vaelab(["evaluate", str(run), "--k", str(a.k), "--quiet"], e, a.work / "runs" / f"conv-eval{seed}.log")
        r = Run(run).evaluation(k=a.k)
        total = time.perf_counter() - t
        seeds.append({"seed": seed, "train": tr, "evaluate": ev,
                      "train_seconds": round(sum(x["seconds"] for x in rows), 1),
                      "examples_per_s_median": median([x["examples_per_s"] for x in rows]),
                      "last_test_loss": rows[-1].get("test_loss"), "bits_per_dim": r.get("bits_per_dim"),
                      "nll": r.get("nll"), "nll_stderr": r.get("nll_stderr"), "elbo": r.get("elbo"),
                      "n_test": r["n"], "k": r["k"], "dims": r.get("dims"), "eval_seconds": r["seconds"],
                      "total_s": round(total, 1), "run": str(run)})
        if seed == a.seeds[0] and total > a.conv_max_seed_s and len(a.seeds) > 1:
            out["note"] = (f"one seed took {total:.0f} s > {a.conv_max_seed_s:.0f} s in total: only seed "
                           f"{seed} was run")
            break
    from vaelab.training import effective_batch_size

    out["seeds"] = seeds
    failed = [s["seed"] for s in seeds if "bits_per_dim" not in s]
    if failed:
        out["failed_seeds"] = failed
        out["note"] = (out.get("note", "") + f" seed(s) {failed} stopped (see seeds[].train.error) and are left out "
                       "of the mean").strip()
    seeds_ok = [s for s in seeds if "bits_per_dim" in s]
    bpd = [s["bits_per_dim"] for s in seeds_ok if s["bits_per_dim"] is not None]
    out["bits_per_dim_mean"] = statistics.fmean(bpd) if bpd else None
    out["bits_per_dim_std"] = statistics.stdev(bpd) if len(bpd) > 1 else None
    out["examples_per_s_median"] = median([s["examples_per_s_median"] for s in seeds_ok])
    out["n_test"] = seeds_ok[0]["n_test"] if seeds_ok else None
    batch_size = Run(seeds[0]["run"]).config.train.batch_size
    train_n = _split_sizes(env, "conv")
    out["n_train"] = train_n[0]
    out["batch_size"] = effective_batch_size(batch_size, train_n[0])
    return out


def _split_sizes(env: Env, name: str) -> tuple[int, int]:
    manifest = next((env.work / "xdg" / name / "vaelab" / "images").glob("*/manifest.json"))
    m = json.loads(manifest.read_text())
    return len(m["splits"]["train"]["labels"]), len(m["splits"]["test"]["labels"])


# ----------------------------------------------------------------------------- report


def report(sections: dict) -> str:
    lines = []
    if "cache" in sections:
        c = sections["cache"]
        lines += ["## cache build (256x256 JPEG -> 64x64 RGB)", "",
                  "| run | load_folder s | images/s | per core | per CPU-second | CPU use | process s | "
                  "second load s | loadavg |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i, (x, y) in enumerate(zip(c["cold_build"], c["second_load"])):
            lines.append(f"| {i} | {x['load_s']:.2f} | {x['images_per_s']:.0f} | {x['images_per_s_per_core']:.0f} | "
                         f"{x['images_per_cpu_s']:.0f} | {x['cpu_utilisation']:.2f} | {x['process_wall_s']:.2f} | "
                         f"{y['load_s']:.3f} | "
                         f"{x['loadavg'][0]} |")
        lines += ["", f"{c['images']} images, {c['cores']} cores: median {c['cold_images_per_s_median']:.0f} "
                  f"images/s = {c['cold_images_per_s_per_core_median']:.0f} per core, "
                  f"{c['cold_images_per_cpu_s_median']:.0f} per CPU-second "
                  f"(target >= 400 per core: "
                  f"{'met' if c['target_met'] else 'NOT met'}); second load {c['second_load_s_median']:.3f} s "
                  f"in process, {c['second_process_wall_s_median']:.2f} s as a process", ""]
    if "warm" in sections:
        w = sections["warm"]
        b = w["cache_build"]
        lines += ["## warm start (50k 16x16 PNGs)", "",
                  f"cache build: {b['load_s']:.1f} s ({b['images_per_s']:.0f} images/s, "
                  f"{b['images_per_s_per_core']:.0f} per core, {b['images_per_cpu_s']:.0f} per CPU-second); "
                  f"manifest {w['manifest_mib']} MiB",
                  f"process start -> Dataset: {w['process_start_to_dataset_s_median']:.2f} s median "
                  f"(to exit {w['process_start_to_exit_s_median']:.2f} s) "
                  f"(import {w['in_process_import_s_median']:.2f} s + load {w['in_process_load_s_median']:.2f} s); "
                  f"`import vaelab.training` alone {w['import_vaelab_train_process_s_median']:.2f} s; bare python "
                  f"{w['python_startup_s_median']:.2f} s; target < 2 s: {'met' if w['target_met'] else 'NOT met'}", ""]
    if "stream" in sections:
        s = sections["stream"]
        lines += ["## streamed vs resident training", "",
                  "| data | mode | budget MiB | images/s (last epoch) | peak RSS MiB | loadavg |",
                  "|---|---|---|---|---|---|"]
        for key in ("mnist", "big"):
            if key not in s:
                continue
            p = s[key]
            for mode in ("resident", "streamed"):
                for r in p["runs"][mode]:
                    lines.append(f"| {key} ({p['train_split_mib']:.0f} MiB train) | {mode} | "
                                 f"{p['budget_mib'] if mode == 'streamed' else 'default'} | "
                                 f"{r['examples_per_s']:.0f} | "
                                 f"{r['peak_rss_mib']:.0f} | {r['loadavg'][0]} |")
        for key in ("mnist", "big"):
            if key in s:
                p = s[key]
                lines.append(f"\n{key}: streamed/resident = {p['streamed_over_resident']:.3f} (target >= 0.8); "
                             f"streamed peak RSS {p['streamed_peak_rss_mib']:.0f} MiB vs limit "
                             f"{p['rss_limit_mib']:.0f} "
                             f"MiB; cache {p['cache_over_budget']:.2f}x the budget")
        if "big" in s:
            lines.append(f"big: {s['big']['subset_note']}")
        lines.append("")
    if "conv" in sections:
        c = sections["conv"]
        lines += ["## conv VAE, logistic mixture (5), 32x32 colour icons", "",
                  "| seed | epochs | train s | images/s (median) | bits/dim | n test | k |",
                  "|---|---|---|---|---|---|---|"]
        for s in c["seeds"]:
            if "bits_per_dim" not in s:
                lines.append(f"| {s['seed']} | {c['epochs']} | stopped after {s['epochs_completed']} epochs: "
                             f"{s['train']['error'].splitlines()[-1][:90]} | | | | |")
                continue
            lines.append(f"| {s['seed']} | {c['epochs']} | {s['train_seconds']:.0f} | "
                         f"{s['examples_per_s_median']:.0f} | "
                         f"{s['bits_per_dim']:.4f} | {s['n_test']} | {s['k']} |")
        std = f" +- {c['bits_per_dim_std']:.4f}" if c["bits_per_dim_std"] is not None else ""
        mean = f"{c['bits_per_dim_mean']:.4f}" if c["bits_per_dim_mean"] is not None else "-"
        lines += ["", f"bits/dim {mean}{std} over {len(c['seeds']) - len(c.get('failed_seeds', []))} seed(s); "
                  f"{c['n_train']} train images (batch {c['batch_size']})"
                  + (f"; {c['note']}" if c.get("note") else ""), ""]
    return "\n".join(lines)


def summarise(sections: dict) -> dict:
    """The headline figure and target of every section in the results file."""
    out: dict = {}
    for key, sec in sections.items():
        name = key.split("-")[0]
        tag = {"threads": sec.get("omp_threads"), "loadavg_at_start": sec.get("loadavg_at_start")}
        if name == "cache":
            out[key] = {**tag, "images_per_s": sec["cold_images_per_s_median"],
                        "images_per_s_per_core": sec["cold_images_per_s_per_core_median"],
                        "images_per_cpu_s": sec.get("cold_images_per_cpu_s_median"),
                        "second_load_s": sec["second_load_s_median"], "target_>=400_per_core_met": sec["target_met"]}
        elif name == "warm":
            out[key] = {**tag, "process_start_to_dataset_s": sec["process_start_to_dataset_s_median"],
                        "import_s": sec["in_process_import_s_median"], "load_s": sec["in_process_load_s_median"],
                        "cache_build_images_per_s": sec["cache_build"]["images_per_s"],
                        "target_<2s_met": sec["target_met"]}
        elif name == "stream":
            out[key] = {**tag, **{part: {"resident_images_per_s": sec[part]["resident_examples_per_s"],
                                         "streamed_images_per_s": sec[part]["streamed_examples_per_s"],
                                         "streamed_over_resident": sec[part]["streamed_over_resident"],
                                         "streamed_peak_rss_mib": sec[part]["streamed_peak_rss_mib"],
                                         "resident_peak_rss_mib": sec[part]["resident_peak_rss_mib"],
                                         "rss_limit_mib": sec[part]["rss_limit_mib"],
                                         "targets_met": sec[part]["targets_met"]}
                                  for part in ("mnist", "big") if part in sec}}
        elif name == "conv":
            out[key] = {**tag, "epochs": sec["epochs"], "images_per_s_median": sec["examples_per_s_median"],
                        "bits_per_dim_mean": sec["bits_per_dim_mean"], "bits_per_dim_std": sec["bits_per_dim_std"],
                        "seeds_done": [x["seed"] for x in sec["seeds"] if "bits_per_dim" in x],
                        "seeds_failed": sec.get("failed_seeds", []), "n_test": sec["n_test"], "k": sec["k"]}
    return out


def _src_digest() -> str:
    """SHA-256 (16 hex) of the vaelab sources as imported: the tree may hold uncommitted edits."""
    import vaelab

    h = hashlib.sha256()
    for f in sorted(Path(vaelab.__file__).parent.rglob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.splitlines()[:2]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[4:]))
    ap.add_argument("--what", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="a small smoke check of every path; results go to the work folder unless --out is given")
    ap.add_argument("--work", type=Path, default=Path("/tmp/vaelab-data-bench"),
                    help="scratch folder for images, caches (XDG_CACHE_HOME) and runs (default %(default)s)")
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results; --quick: the work folder)")
    ap.add_argument("--date", default=str(date.today()), help="date in the results file name (default today)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of the cache builds and loads")
    ap.add_argument("--cache-n", type=int, default=2000, help="cache: number of 256x256 JPEGs")
    ap.add_argument("--warm-n", type=int, default=50_000, help="warm: number of 16x16 PNGs")
    ap.add_argument("--mnist-n", type=int, default=60_000, help="stream: MNIST digits in the .npy")
    ap.add_argument("--mnist-budget-mb", type=int, default=11, help="stream: --memory-budget of the MNIST run")
    ap.add_argument("--stream-repeats", type=int, default=2, help="stream: resident/streamed MNIST run pairs")
    ap.add_argument("--stream-parts", default="mnist,big", help="stream: which datasets (default %(default)s)")
    ap.add_argument("--big-n", type=int, default=60_000, help="stream: 3x64x64 icon images in the large .npy")
    ap.add_argument("--big-budget-mb", type=int, default=180, help="stream: --memory-budget of the large run")
    ap.add_argument("--big-max-epoch-s", type=float, default=240.0,
                    help="stream: use --big-subset images when one epoch is predicted to take longer")
    ap.add_argument("--big-subset", type=int, default=20_000)
    ap.add_argument("--conv-epochs", type=int, default=0, help="conv: epochs (default 0: calibrate to --conv-budget-s)")
    ap.add_argument("--conv-budget-s", type=float, default=180.0, help="conv: training wall time to aim at")
    ap.add_argument("--conv-max-seed-s", type=float, default=360.0,
                    help="conv: run one seed only when the first takes longer than this (train + evaluate)")
    ap.add_argument("--seeds", default="0,1,2", help="conv: seeds")
    ap.add_argument("--k", type=int, default=100, help="conv: importance samples for evaluate")
    ap.add_argument("--summary-only", action="store_true", help="only recompute the summary of the results file")
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP_NUM_THREADS for the vaelab processes (default 0: torch's own default); results "
                         "are stored under SECTION-threadsN")
    a = ap.parse_args()
    what = [w.strip() for w in a.what.split(",") if w.strip()]
    bad = [w for w in what if w not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    a.seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    a.stream_parts = {p.strip() for p in a.stream_parts.split(",") if p.strip()}
    if a.quick:
        a.repeats, a.cache_n, a.warm_n, a.mnist_n, a.stream_repeats = 1, 300, 3000, 6000, 1
        a.mnist_budget_mb, a.big_n, a.big_subset, a.big_budget_mb = 1, 3000, 1000, 10
        a.conv_epochs, a.seeds, a.k = 1, a.seeds[:1], 10
        a.work = a.work.with_name(a.work.name + "-quick")
    out_dir = a.out or (a.work if a.quick else Path(__file__).resolve().parent / "results")
    icon_paths(32)  # fail early, with the install hint, when the icons are missing
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    (a.work / "runs").mkdir(exist_ok=True)
    # nothing of this process (MNIST look-ups, loading runs) may touch the user's cache either
    os.environ["XDG_CACHE_HOME"] = str(a.work / "xdg" / "main")
    os.environ.setdefault("VAELAB_DATA", "/work/shared/data")
    env = Env(a.work, a.threads)

    path = out_dir / f"data-{a.date}{'-quick' if a.quick else ''}.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    if a.summary_only:
        res["summary"] = summarise(res.get("sections", {}))
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res["summary"], indent=2))
        return
    res.update(date=a.date, machine=platform.machine(), cpu=cpu_name(), cpu_count=CORES,
               python=platform.python_version(), commit=_commit(),
               commit_note="HEAD when the file was last written; other engineers were editing and committing src/ "
                           "while these ran: later sections record their own commit and the digest of the vaelab "
                           "sources they ran (vaelab_src_sha256)")
    import torch

    import vaelab

    res.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), vaelab=vaelab.__version__,
               notes="timings on a machine shared with other jobs: see loadavg (1, 5, 15 min) per measurement; "
                     "images are in the page cache when timed")
    res.setdefault("sections", {})
    benches = {"cache": bench_cache, "warm": bench_warm, "stream": bench_stream, "conv": bench_conv}
    for name in what:
        t = time.perf_counter()
        started = datetime.now().isoformat(timespec="seconds")
        load, src = loadavg(), _src_digest()
        print(f"[{started}] {name} ...", file=sys.stderr, flush=True)
        section = benches[name](a, env)
        section.update(command="python " + " ".join([os.path.relpath(__file__), *sys.argv[1:]]), started=started,
                       loadavg_at_start=load, section_wall_s=round(time.perf_counter() - t, 1))
        section["omp_threads"] = a.threads or "torch default"
        section["vaelab_src_sha256"] = src  # the sources when the section started
        section["commit"] = _commit()
        res["sections"][name + (f"-threads{a.threads}" if a.threads else "")] = section
        out_dir.mkdir(parents=True, exist_ok=True)
        res["summary"] = summarise(res["sections"])
        path.write_text(json.dumps(res, indent=2) + "\n")  # after every section: a crash keeps the rest
        print(report({name: section}), flush=True)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
