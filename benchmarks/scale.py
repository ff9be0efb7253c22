"""Data-parallel scaling on CPU: one process vs two (torchrun, gloo), same global batch.

    python benchmarks/scale.py [--epochs 3] [--batch 128] [--out benchmarks/results] [--date YYYY-MM-DD]

Trains the 784-512-512-50 ReLU MLP VAE on full MNIST ($VAELAB_DATA, default
/work/shared/data) three ways, each as a user launches it, in a fresh process:

- ``1proc``:        python -m vaelab train ...  (PyTorch's default threads: one per core)
- ``1proc-omp1``:   the same with OMP_NUM_THREADS=1 (what torchrun gives each process)
- ``2proc``:        python -m torch.distributed.run --standalone --nproc_per_node 2 -m vaelab train ...
                    (the `torchrun` entry point; OMP_NUM_THREADS=1 per process, its default)

`--batch-size` is the global batch: each of the two processes takes its half. An epoch's
cost is the median `seconds` of epochs 2.. in metrics.jsonl (the training steps, the
test ELBO on 10k images, the PNG grids and the checkpoint); images/s = 60,000 / that
(the training images of an epoch).
The 2-process job draws the same data order, binarisation and noise as one process, so
its per-epoch test ELBO differs from the 1-process run's only by float rounding; Adam
amplifies rounding over many steps, so after a few hundred steps the runs drift apart
(as 1proc and 1proc-omp1 do: the thread count alone changes the rounding). The script
reports the largest per-epoch difference of each pair.

Before each run the script waits (up to --max-wait s) until the machine is idle (all
cores < 15% busy over 3 s); during the run it samples the CPU time of processes that
are not its own and lists any that used more than 20% of a core, and records the CPU
time the machine spent outside the run (/proc/stat busy time less the run's rusage:
short-lived processes included) as other_cpu_s and its share of the machine;
os.getloadavg() is recorded before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import torch

from common import Run, vaelab
from vaelab.runtime import cpu_name

NET = ["--hidden", "512,512", "--decoder-hidden", "512,512", "--activation", "relu",
       "--latent-dim", "50", "--lr", "1e-3"]
TICK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- machine state


def _cpu_busy(seconds: float = 3.0) -> float:
    """Fraction of all cores busy over `seconds` (from /proc/stat)."""

    def read() -> tuple[int, int]:
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v) - idle, sum(v)

    b0, t0 = read()
    time.sleep(seconds)
    b1, t1 = read()
    return (b1 - b0) / max(1, t1 - t0)


def _busy_ticks() -> int:
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v) - v[3] - v[4]


def _our_cpu() -> float:
    """CPU seconds of this process and its waited-for descendants (torchrun waits for its workers)."""
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def _procs() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, cpu ticks, command) of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
            rest = stat[stat.rindex(")") + 2 :].split()
            cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        out[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]), cmd[:160])
    return out


def _ours(procs: dict[int, tuple[int, int, str]]) -> set[int]:
    """This process and its descendants."""
    mine, me = set(), os.getpid()
    for pid in procs:
        p, seen = pid, 0
        while p and p in procs and seen < 64:
            if p == me:
                mine.add(pid)
                break
            p, seen = procs[p][0], seen + 1
    return mine


def wait_idle(max_wait: float) -> dict:
    """Wait until the cores are < 15% busy (or `max_wait` s passed); say how it went."""
    t = time.perf_counter()
    while True:
        busy = _cpu_busy()
        waited = time.perf_counter() - t
        if busy < 0.15 or waited > max_wait:
            break
        print(f"  machine {busy:.0%} busy; waiting ({waited:.0f} s)", file=sys.stderr, flush=True)
        time.sleep(10)
    return {"busy_before": round(busy, 3), "waited_s": round(waited, 1), "idle": busy < 0.15,
            "loadavg_before": [round(v, 2) for v in os.getloadavg()]}


class Intruders:
    """Samples, every 2 s while a run goes on, the CPU use of processes that are not ours."""

    def __init__(self) -> None:
        self.seen: dict[int, list] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True)

    def _work(self) -> None:
        prev = _procs()
        while not self._stop.wait(2.0):
            now = _procs()
            mine = _ours(now)
            for pid, (_, ticks, cmd) in now.items():
                if pid in mine or pid not in prev:
                    continue
                share = (ticks - prev[pid][1]) / TICK / 2.0
                if share > 0.2:
                    rec = self.seen.setdefault(pid, [cmd, 0.0, 0])
                    rec[1] += ticks - prev[pid][1]
                    rec[2] += 1
            prev = now

    def __enter__(self) -> Intruders:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> list[dict]:
        return [{"pid": pid, "command": cmd, "cpu_s": round(ticks / TICK, 1), "samples_over_20pct": n}
                for pid, (cmd, ticks, n) in self.seen.items()]


# ----------------------------------------------------------------------------- runs


PLAIN = [sys.executable, "-m", "vaelab"]  # what common.vaelab runs
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vaelab"]


def run(name: str, launcher: list[str], extra_env: dict[str, str], args, work: Path) -> dict:
    out = work / name
    train = ["train", "--dataset", args.dataset, *NET, "--batch-size", str(args.batch),
             "--epochs", str(args.epochs), "--out", str(out), "--quiet"]
    cmd = [*launcher, *train]
    env = {"VAELAB_DATA": os.environ.get("VAELAB_DATA", "/work/shared/data"), **extra_env}
    state = wait_idle(args.max_wait)
    print(f"{name}: {' '.join(f'{k}={v}' for k, v in extra_env.items())} {' '.join(cmd)}", file=sys.stderr, flush=True)
    with Intruders() as intr:
        b0, c0, t = _busy_ticks(), _our_cpu(), time.perf_counter()
        if launcher == PLAIN:  # capture: stderr for the message below (stdout is piped too, unread)
            p = vaelab(*train, env=env, check=False, capture=True)
        else:  # torchrun: its own launcher, not common.vaelab's
            p = subprocess.run(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
        wall = time.perf_counter() - t
        b1, c1 = _busy_ticks(), _our_cpu()
    # CPU the machine spent on anything but this run (short-lived processes included)
    other = max(0.0, (b1 - b0) / TICK - (c1 - c0))
    if p.returncode:
        raise SystemExit(f"{name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rows = Run(out).records()
    prov = json.loads((out / "run.json").read_text())
    sec = statistics.median(r["seconds"] for r in rows[1:])
    n = args.train_images  # the record's examples_per_s is n / seconds
    return {"name": name, "command": cmd, "env": extra_env, "processes": prov.get("processes"),
            "threads_per_process": prov.get("threads"), "epoch_seconds_all": [r["seconds"] for r in rows],
            "epoch_seconds": sec, "images_per_s": n / sec, "train_images": n, "process_wall_s": round(wall, 1),
            "test_elbo": [r["test_elbo"] for r in rows], "train_loss": [r["train_loss"] for r in rows],
            **state, "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "other_cpu_s": round(other, 1), "other_cpu_share": round(other / (wall * (os.cpu_count() or 1)), 3),
            "other_busy_processes": intr.report(), "git_commit": prov.get("git_commit"), "run": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128, help="global batch size")
    ap.add_argument("--max-wait", type=float, default=300, help="seconds to wait for an idle machine per run")
    ap.add_argument("--dataset", default="mnist", help="(mnist-sample for a quick check of the script)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--date", default=str(date.today()))
    args = ap.parse_args()

    os.environ.setdefault("VAELAB_DATA", "/work/shared/data")
    from vaelab.data import load_dataset

    args.train_images = len(load_dataset(args.dataset).train)
    work = Path(tempfile.mkdtemp(prefix="vaelab-scale-"))
    res: dict = {"date": args.date, "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                 "python": platform.python_version(), "dataset": args.dataset, "batch_global": args.batch,
                 "epochs": args.epochs,
                 "vaelab_data": os.environ.get("VAELAB_DATA", "/work/shared/data"),
                 "note": "epoch_seconds = median of epochs 2.. of metrics.jsonl `seconds` (training steps + "
                         "test ELBO on 10k + PNGs + checkpoint); images_per_s = training images / epoch_seconds"}
    runs = [run("1proc", PLAIN, {}, args, work),
            run("1proc-omp1", PLAIN, {"OMP_NUM_THREADS": "1"}, args, work),
            run("2proc", TORCHRUN, {}, args, work)]
    res["runs"] = {r["name"]: r for r in runs}
    one, one1, two = runs
    res["ratio_2proc_over_1proc"] = two["images_per_s"] / one["images_per_s"]
    res["ratio_2proc_over_1proc_omp1"] = two["images_per_s"] / one1["images_per_s"]
    res["ratio_1proc_omp1_over_1proc"] = one1["images_per_s"] / one["images_per_s"]

    def maxdiff(a: dict, b: dict, key: str) -> float:
        return max(abs(x - y) for x, y in zip(a[key], b[key]))

    res["max_abs_diff_test_elbo_2proc_vs_1proc"] = maxdiff(two, one, "test_elbo")
    res["max_abs_diff_test_elbo_2proc_vs_1proc_omp1"] = maxdiff(two, one1, "test_elbo")
    res["max_abs_diff_test_elbo_1proc_omp1_vs_1proc"] = maxdiff(one1, one, "test_elbo")
    res["max_abs_diff_train_loss_2proc_vs_1proc"] = maxdiff(two, one, "train_loss")
    res["max_abs_diff_train_loss_2proc_vs_1proc_omp1"] = maxdiff(two, one1, "train_loss")

    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"scale-{args.date}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"{res['cpu']}, {res['cores']} cores, torch {res['torch']}, batch {args.batch} (global), "
             f"{args.epochs} epochs", "",
             "| run | processes x threads | epoch s (median 2..) | images/s | loadavg before | other CPU share | "
             "test ELBO per epoch |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['name']} | {r['processes']} x {r['threads_per_process']} | {r['epoch_seconds']:.2f} | "
                     f"{r['images_per_s']:.0f} | {r['loadavg_before']} | {r['other_cpu_share']:.1%} | "
                     f"{', '.join(f'{v:.4f}' for v in r['test_elbo'])} |")
    lines += ["", f"2proc / 1proc images/s: {res['ratio_2proc_over_1proc']:.3f}; "
              f"2proc / 1proc-omp1: {res['ratio_2proc_over_1proc_omp1']:.3f}",
              f"max |test ELBO diff| 2proc vs 1proc: {res['max_abs_diff_test_elbo_2proc_vs_1proc']:.2e}; "
              f"vs 1proc-omp1: {res['max_abs_diff_test_elbo_2proc_vs_1proc_omp1']:.2e}; "
              f"1proc-omp1 vs 1proc: {res['max_abs_diff_test_elbo_1proc_omp1_vs_1proc']:.2e}",
              f"\nwritten to {path}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
