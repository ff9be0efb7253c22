"""Sharing the CPUs: trainings side by side, beside `vaelab serve`, and threads against processes.

    python benchmarks/sharing.py [--quick] [--epochs 4] [--recipes mnist,colour] [--behaviours old,new]
                                 [--parts pair,serve,processes]

Run it on an otherwise idle machine: every figure is a rate that other work would lower.
Each training is `vaelab train` with the default recipe, in a process of its own, from an
environment without OMP_NUM_THREADS or MKL_NUM_THREADS (an exported count would be taken
as asked):

- ``mnist``: `--dataset mnist` (the binary MLP recipe); ``--quick``: the shipped `mnist-sample`;
- ``colour``: the oxygen icon theme (the largest raster of at least 32 px of each icon, a flat
  folder that vaelab splits by a hash of the names) at `--image-size 32` (the 8-bit conv recipe);
  ``--quick``: its first 240 icons.

Two behaviours are measured in the same run:

- ``old``: `--threads P` on every process, P being the threads torch takes by itself in a fresh
  process (one per core): what every vaelab process did before it counted the others;
- ``new``: no `--threads`: each process takes its share of the CPUs it may use beside the
  other vaelab processes running, and follows it as they start and end.

Parts (each per recipe and behaviour, images/s = the median of epochs 2.. of
`metrics.jsonl`'s `examples_per_s`, epoch 1 paying one-time costs):

- ``pair``: the training alone, then two started together; the ratio of each to alone. The
  target is >= 0.4x each on 2 cores.
- ``serve``: the MNIST training beside `vaelab serve` of a trained MNIST run while this script
  sends decode requests to it on 127.0.0.1, one after another, until the training ends (at most
  --requests); the training's images/s against alone, and the requests' p50/p95 latency.
- ``processes``: alone, 1 process x P threads against `torchrun --nproc_per_node P` x 1 thread
  (the same global batch: torchrun splits it). Run once, whatever --behaviours says.

Results: benchmarks/results/sharing-DATE.json (sharing-quick-DATE.json with --quick, whose tiny
data measure nothing), and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

from common import Run, machine

RESULTS = Path(__file__).resolve().parent / "results"
OXYGEN = Path("/usr/share/icons/oxygen/base")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vaelab" / "sharing-benchmark"


def clean_env() -> dict[str, str]:
    """This environment without thread counts, so that vaelab chooses (or is told by --threads)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def torch_default_threads() -> int:
    """The intra-op threads torch takes by itself in a fresh process (what vaelab used before)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=clean_env(),
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def colour_folder(limit: int | None) -> Path:
    """A flat folder of the oxygen icons (largest raster >= 32 px each), made once."""
    from colour import _icons

    if not OXYGEN.is_dir():
        sys.exit(f"{OXYGEN} is missing: apt-get install oxygen-icon-theme")
    folder = CACHE / (f"oxygen-{limit}" if limit else "oxygen")
    if not folder.is_dir():
        icons = sorted(_icons("oxygen", OXYGEN).items())[:limit]
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, path in icons:
            shutil.copyfile(path, tmp / f"{name}.png")
        tmp.rename(folder)
    return folder


def recipes(names: list[str], quick: bool) -> dict[str, list[str]]:
    flags = {}
    for name in names:
        if name == "mnist":
            flags[name] = ["--dataset", "mnist-sample" if quick else "mnist"]
        elif name == "colour":
            flags[name] = ["--dataset", str(colour_folder(240 if quick else None)), "--image-size", "32"]
        else:
            sys.exit(f"unknown recipe {name}; choose from mnist, colour")
    return flags


def start_training(recipe: list[str], out: Path, epochs: int, threads: int | None,
                   launcher: list[str] | None = None) -> subprocess.Popen:
    cmd = [*(launcher or [sys.executable, "-m"]), "vaelab", "train", *recipe, "--epochs", str(epochs),
           "--out", str(out), "--quiet", "--overwrite"]
    if threads:
        cmd += ["--threads", str(threads)]
    return subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, out: Path) -> dict:
    """Wait for a training; its images/s (median of epochs 2..) and each epoch's threads."""
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"training into {out} failed ({proc.returncode}): {err.strip()[-800:]}")
    records = Run(out).records()
    speeds = [r["examples_per_s"] for r in records]
    return {"images_per_s": round(statistics.median(speeds[1:] or speeds), 1), "epochs_images_per_s": speeds,
            "threads_per_epoch": [r.get("threads") for r in records]}


def solo_and_pair(recipe: list[str], work: Path, epochs: int, threads: int | None) -> dict:
    solo = finish(start_training(recipe, work / "solo", epochs, threads), work / "solo")
    procs = [start_training(recipe, work / f"pair{i}", epochs, threads) for i in (1, 2)]
    pair = [finish(p, work / f"pair{i}") for i, p in zip((1, 2), procs)]
    return {"solo": solo, "pair": pair, "pair_ratio": [round(p["images_per_s"] / solo["images_per_s"], 3)
                                                       for p in pair]}


def _serve(run: Path, threads: int | None) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "vaelab", "serve", str(run), "--port", "0"]
    if threads:
        cmd += ["--threads", str(threads)]
    server = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    if "http://127.0.0.1:" not in line:
        server.kill()
        raise SystemExit(f"vaelab serve did not start: {line!r}")
    return server, int(line.split("http://127.0.0.1:", 1)[1].split("/")[0])


def beside_serve(recipe: list[str], model_run: Path, work: Path, epochs: int, threads: int | None,
                 solo: float, max_requests: int) -> dict:
    """A training while decode requests go to `vaelab serve`, one after another."""
    server, port = _serve(model_run, threads)
    latencies: list[float] = []
    done = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        info = json.loads((conn.request("GET", "/api/info"), conn.getresponse().read())[1])
        body = json.dumps({"z": [0.5] * info["latent_dim"]})
        while not done.is_set() and len(latencies) < max_requests:
            start = time.perf_counter()
            conn.request("POST", "/api/decode", body, {"Content-Type": "application/json"})
            conn.getresponse().read()
            latencies.append((time.perf_counter() - start) * 1000)
        conn.close()

    try:
        asker = threading.Thread(target=client, daemon=True)
        asker.start()
        result = finish(start_training(recipe, work / "beside-serve", epochs, threads), work / "beside-serve")
        done.set()
        asker.join(timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = sorted(latencies)
    return {**result, "ratio_to_solo": round(result["images_per_s"] / solo, 3), "requests": len(ms),
            "p50_ms": round(ms[len(ms) // 2], 1) if ms else None,
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1) if ms else None}


def threads_or_processes(recipe: list[str], work: Path, epochs: int, cpus: int) -> dict:
    """Alone: 1 process x `cpus` threads against torchrun `cpus` processes x 1 thread."""
    one = finish(start_training(recipe, work / "1proc", epochs, cpus), work / "1proc")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cpus), "-m"]
    many = finish(start_training(recipe, work / "torchrun", epochs, 1, launcher), work / "torchrun")
    return {"threads": {"processes": 1, "threads": cpus, **one},
            "processes": {"processes": cpus, "threads": 1, **many},
            "processes_over_threads": round(many["images_per_s"] / one["images_per_s"], 3)}


def markdown(res: dict) -> str:
    lines = [f"{res['machine']['cpu']}, {res['usable_cpus']} usable CPUs, torch {res['machine']['torch']}, "
             f"{res['date']}{' (--quick: tiny data, not a measurement)' if res['quick'] else ''}; images/s: median "
             f"of epochs 2..{res['epochs']}; old = --threads {res['old_threads']} on every process", ""]
    pairs = [(r, b, v) for r, per in res["pair"].items() for b, v in per.items()]
    if pairs:
        lines += ["| recipe | threads | alone images/s | two together, each | each / alone |", "|---|---|---|---|---|"]
        for r, b, v in pairs:
            each = " and ".join(f"{p['images_per_s']:,.0f}" for p in v["pair"])
            ratio = " and ".join(f"{x:.2f}x" for x in v["pair_ratio"])
            lines.append(f"| {r} | {b} | {v['solo']['images_per_s']:,.0f} | {each} | {ratio} |")
        lines.append("")
    if res["serve"]:
        lines += ["| recipe | threads | training beside serve, images/s | / alone | requests | p50 ms | p95 ms |",
                  "|---|---|---|---|---|---|---|"]
        for b, v in res["serve"].items():
            lines.append(f"| mnist | {b} | {v['images_per_s']:,.0f} | {v['ratio_to_solo']:.2f}x | {v['requests']} | "
                         f"{v['p50_ms']} | {v['p95_ms']} |")
        lines.append("")
    if res["processes"]:
        cpus = res["usable_cpus"]
        lines += [f"| recipe | 1 process x {cpus} threads | torchrun {cpus} processes x 1 thread | processes / threads |",
                  "|---|---|---|---|"]
        for r, v in res["processes"].items():
            lines.append(f"| {r} | {v['threads']['images_per_s']:,.0f} | {v['processes']['images_per_s']:,.0f} | "
                         f"{v['processes_over_threads']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data and 2 epochs: proves the script runs")
    ap.add_argument("--epochs", type=int, help="epochs per training (default 4; 2 with --quick)")
    ap.add_argument("--recipes", default="mnist,colour")
    ap.add_argument("--behaviours", default="old,new")
    ap.add_argument("--parts", default="pair,serve,processes")
    ap.add_argument("--requests", type=int, default=5000, help="at most this many serve requests (default 5000)")
    ap.add_argument("--date", default=date.today().isoformat())
    args = ap.parse_args()
    from vaelab.runtime import usable_cpus

    epochs = args.epochs or (2 if args.quick else 4)
    parts, behaviours = args.parts.split(","), args.behaviours.split(",")
    flags = recipes(args.recipes.split(","), args.quick)
    cpus, old = usable_cpus(), torch_default_threads()
    threads = {"old": old, "new": None}
    res = {"date": args.date, "quick": args.quick, "epochs": epochs, "machine": machine(), "usable_cpus": cpus,
           "old_threads": old, "command": "python benchmarks/sharing.py " + " ".join(sys.argv[1:]),
           "pair": {}, "serve": {}, "processes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, recipe in flags.items():
            for b in behaviours:
                if "pair" in parts or ("serve" in parts and name == "mnist"):
                    print(f"{name}, {b}: alone, then two together", flush=True)
                    res["pair"].setdefault(name, {})[b] = solo_and_pair(recipe, work / name / b, epochs, threads[b])
            if "serve" in parts and name == "mnist":
                for b in behaviours:
                    print(f"{name}, {b}: beside vaelab serve", flush=True)
                    solo = res["pair"][name][b]["solo"]["images_per_s"]
                    res["serve"][b] = beside_serve(recipe, work / name / behaviours[-1] / "solo", work / name / b,
                                                   epochs, threads[b], solo, args.requests)
            if "processes" in parts and cpus > 1:
                print(f"{name}: 1 process x {cpus} threads, then torchrun {cpus} x 1", flush=True)
                res["processes"][name] = threads_or_processes(recipe, work / name / "processes", epochs, cpus)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"sharing-{'quick-' if args.quick else ''}{args.date}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res), end="")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
