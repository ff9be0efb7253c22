"""Latency of the explorer page's requests, as a browser sees them.

    python benchmarks/serve.py [--run RUN_DIR] [--requests 400] [--clients 1,4,16] [--out benchmarks/results]

Without --run, trains the default MNIST recipe (`vaelab train --dataset mnist`, the
784-512-512-50 MLP VAE) for one epoch into a temporary folder: decode latency does not
depend on how long a model trained. Then starts `python -m vaelab serve RUN --port 0` in
its own process, as a user would, and times requests over keep-alive HTTP connections
from this process:

- ``decode``: one code per request (what hovering over the map or moving a slider sends),
  from C clients at once, each sending its next request when the last one returned;
- ``encode``: a test image by index (its posterior, reconstruction and a sample);
- ``noise``: the noise-removal experiment on a test image.

Reports p50, p95 and max milliseconds per request type and client count, and the requests
per second the server sustained, to benchmarks/results/serve-DATE.json.

    python benchmarks/serve.py --fuzz 5000 [--run RUN_DIR]

sends that many hostile requests instead (seeded mutations of the page's own requests:
keys dropped, added and retyped, numbers of hundreds of digits, NaN, nesting thousands
deep, long arrays, invalid JSON, odd map dimensions) to 127.0.0.1 only, and reports the
answers by status class and the server's resident memory every 500 requests, to
benchmarks/results/serve-fuzz-DATE.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from datetime import date
from pathlib import Path

import torch

from common import vaelab
from vaelab.runtime import cpu_name


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def timed_requests(port: int, path: str, bodies: list[dict]) -> list[float]:
    """Send the bodies one after another on one connection; milliseconds per request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for body in bodies:
        data = json.dumps(body).encode()
        start = time.perf_counter()
        conn.request("POST", path, data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        out.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise SystemExit(f"{path} answered {response.status}: {payload[:200]!r}")
    conn.close()
    return out


def load(port: int, path: str, make_body, requests: int, clients: int) -> dict:
    per_client = max(1, requests // clients)
    results: list[list[float]] = [[] for _ in range(clients)]

    def client(i: int) -> None:
        rng = random.Random(i)
        results[i] = timed_requests(port, path, [make_body(rng) for _ in range(per_client)])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = [v for r in results for v in r]
    return {"path": path, "clients": clients, "requests": len(ms), "p50_ms": round(percentile(ms, 50), 2),
            "p95_ms": round(percentile(ms, 95), 2), "max_ms": round(max(ms), 2),
            "mean_ms": round(statistics.mean(ms), 2), "requests_per_s": round(len(ms) / wall, 1)}


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _mutate(rng: random.Random, body: dict) -> bytes:
    """A hostile variant of a valid request body."""
    body = dict(body)
    kind = rng.randrange(9)
    if kind == 0 and body:
        body.pop(rng.choice(list(body)))
    elif kind == 1:
        body[rng.choice(["z", "c", "t", "index", "kind", "level", "seed", "n", "x" * 50])] = rng.choice(
            [None, True, "text", [], {}, -1, 10**6, [[1, 2], [3]], "\u0000" * 100])
    elif kind == 2 and body:
        key = rng.choice(list(body))
        body[key] = rng.choice([str(body[key]), [body[key]], {"v": body[key]}, None])
    elif kind == 3:
        return json.dumps(body).replace("0", "9" * rng.randrange(50, 500), 1).encode()
    elif kind == 4:
        return json.dumps(body).replace("1", "NaN", 1).replace("2", "1e999", 1).encode()
    elif kind == 5:
        depth = rng.randrange(100, 20000)
        return b"[" * depth + b"]" * depth
    elif kind == 6:
        body["z"] = [rng.gauss(0, 1) for _ in range(rng.randrange(0, 5000))]
    elif kind == 7:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    else:
        return json.dumps(body)[: rng.randrange(0, 40)].encode()
    return json.dumps(body).encode()


def fuzz(port: int, pid: int, info: dict, n: int) -> dict:
    """n hostile requests over every endpoint, one connection; status classes and the
    server's resident memory every 500 requests."""
    rng = random.Random(0)
    d, n_test = info["latent_dim"], info["n_test"]
    valid = {"/api/decode": lambda: {"z": [rng.gauss(0, 1) for _ in range(d)]},
             "/api/encode": lambda: {"index": rng.randrange(n_test), "seed": 0},
             "/api/interpolate": lambda: {"a": [0.0] * d, "b": [1.0] * d, "t": 0.5},
             "/api/noise": lambda: {"index": rng.randrange(n_test), "kind": "uniform", "level": 0.3},
             "/api/prior": lambda: {"n": 4, "seed": 1},
             "/api/classes": lambda: {"z": [0.0] * d}}
    counts: dict[str, int] = {}
    memory = [{"requests": 0, "rss_mib": round(_rss_mib(pid), 1)}]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(1, n + 1):
        if rng.random() < 0.15:
            dims = ",".join(rng.choice(["0", "00", "+1", " 2", "-1", "99", "x", "1e3", "0x1"]) for _ in range(2))
            conn.request("GET", "/api/map?" + urllib.parse.urlencode({"dims": dims}))
        else:
            path = rng.choice(list(valid))
            conn.request("POST", path, _mutate(rng, valid[path]()), {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        key = f"{response.status // 100}xx"
        counts[key] = counts.get(key, 0) + 1
        if i % 500 == 0:
            memory.append({"requests": i, "rss_mib": round(_rss_mib(pid), 1)})
    conn.close()
    return {"requests": n, "status_classes": counts, "server_rss": memory}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a trained run folder (default: train the MNIST recipe for one epoch)")
    p.add_argument("--requests", type=int, default=400, help="requests per measurement (default 400)")
    p.add_argument("--clients", default="1,4,16", help="concurrent clients to try (default 1,4,16)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--date", default=date.today().isoformat())
    p.add_argument("--fuzz", type=int, default=0, metavar="N", help="send N hostile requests instead of timing")
    args = p.parse_args()
    env = {"VAELAB_DATA": os.environ.get("VAELAB_DATA", "/work/shared/data"), "PYTHONUNBUFFERED": "1"}
    tmp = tempfile.TemporaryDirectory()
    run = args.run
    if run is None:
        run = str(Path(tmp.name) / "mnist")
        print("training the default MNIST recipe for one epoch ...", flush=True)
        # quiet=False: stdout shows, as before; --quiet is given explicitly, as before
        vaelab("train", "--dataset", "mnist", "--epochs", "1", "--out", run, "--quiet", quiet=False, env=env)
    # the server keeps running while it is measured: Popen, not common.vaelab
    server = subprocess.Popen([sys.executable, "-m", "vaelab", "serve", run, "--port", "0"],
                              env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if "http://" not in line:
            raise SystemExit(f"the server did not start: {line}")
        port = int(line.split("http://127.0.0.1:", 1)[1].split("/")[0])
        info = json.loads(_get(port, "/api/info"))
        d = info["latent_dim"]
        if args.fuzz:
            result = fuzz(port, server.pid, info, args.fuzz)
            result.update(date=args.date, cpu=cpu_name(), torch=torch.__version__, run=args.run or "MNIST, 1 epoch",
                          command="python benchmarks/serve.py " + " ".join(sys.argv[1:]))
            out = Path(args.out) / f"serve-fuzz-{args.date}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n")
            print(json.dumps(result), f"\nwrote {out}")
            return

        def code(rng: random.Random) -> dict:
            return {"z": [rng.gauss(0, 1) for _ in range(d)]}

        load(port, "/api/decode", code, 50, 1)  # warm-up
        rows = []
        for clients in (int(c) for c in args.clients.split(",")):
            rows.append(load(port, "/api/decode", code, args.requests, clients))
            print(json.dumps(rows[-1]), flush=True)
        for path, body in (("/api/encode", lambda rng: {"index": rng.randrange(info["n_test"]), "seed": 0}),
                           ("/api/noise", lambda rng: {"index": rng.randrange(info["n_test"]),
                                                        "kind": "salt-pepper", "level": 0.2})):
            rows.append(load(port, path, body, args.requests // 4, 1))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        tmp.cleanup()
    result = {"date": args.date, "cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
              "torch": torch.__version__, "run": args.run or "default MNIST recipe, 1 epoch",
              "model": {k: info[k] for k in ("model", "net", "likelihood", "latent_dim", "image_shape")},
              "command": "python benchmarks/serve.py " + " ".join(sys.argv[1:]), "rows": rows}
    out = Path(args.out) / f"serve-{args.date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def _get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    return conn.getresponse().read().decode()


if __name__ == "__main__":
    main()
