"""The explorer's server: every endpoint against the model it serves, bad requests, batching, the CLI,
the ranking of test images by their scores."""

import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")  # the serve extra; the test extra installs it, and httpx2 for the client

from starlette.testclient import TestClient  # noqa: E402

from vaelab.cli import main  # noqa: E402
from vaelab.serve import DecodeBatcher, Session, is_local, make_app, png_data_url  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    common = ["--dataset", "mnist-sample", "--epochs", "1", "--batch-size", "250", "--hidden", "32", "--quiet"]
    for name, extra in {"vae5": ["--latent-dim", "5"], "vae2": ["--latent-dim", "2"],
                        "vae1": ["--latent-dim", "1"], "ae": ["--latent-dim", "3", "--model", "ae"],
                        "cvae": ["--latent-dim", "3", "--model", "cvae"],
                        "flows": ["--latent-dim", "3", "--flows", "2"],
                        "hvae": ["--latent-dim", "4", "--model", "hvae", "--lower-latents", "8,6",
                                 "--latent-hidden", "16"]}.items():
        assert main(["train", *common, *extra, "--out", str(base / name)]) == 0
    return base


@pytest.fixture(scope="module")
def sessions(runs):
    names = ("vae5", "vae2", "vae1", "ae", "cvae", "flows", "hvae")
    return {name: Session.from_run(runs / name, n=300) for name in names}


@pytest.fixture(scope="module")
def client(sessions):
    with TestClient(make_app(sessions["vae5"])) as c:
        yield c


def pixels(url: str) -> np.ndarray:
    from PIL import Image

    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "vaelab explorer" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert "http" not in client.get("/static/app.js").text.replace("HTTP ", "")  # no CDN: nothing fetched from outside


def test_map_is_a_plane_of_codes(sessions):
    for s in sessions.values():
        m = s.map()
        assert len(m["points"]) == len(m["labels"]) == len(s.codes)
        origin, axes = torch.tensor(m["origin"]), torch.tensor(m["axes"])
        xy = torch.tensor(m["points"])
        torch.testing.assert_close(xy, (s.codes - origin) @ axes.T, atol=1e-4, rtol=0)
        x0, x1, y0, y1 = m["extent"]
        assert x0 < x1 and y0 < y1
        if s.dim == 2:  # the map is the latent space itself
            assert m["axis_names"] == ["z[0]", "z[1]"] and torch.equal(axes, torch.eye(2)) and not origin.any()
    chosen = sessions["vae5"].map("3,1")
    assert chosen["axis_names"] == ["z[3]", "z[1]"]
    torch.testing.assert_close(torch.tensor(chosen["points"])[:, 0], sessions["vae5"].codes[:, 3], atol=1e-4, rtol=0)


def test_decode_is_the_decoder_mean(sessions, client):
    s = sessions["vae5"]
    z = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    r = client.post("/api/decode", json={"z": z.tolist()})
    assert r.status_code == 200
    images = r.json()["images"]
    with torch.no_grad():
        expect = (s.model.decode(z).mean.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    for got, want in zip(images, expect):
        assert np.array_equal(pixels(got), want[0].numpy())
    one = client.post("/api/decode", json={"z": z[0].tolist()}).json()["images"]
    assert one == images[:1]


def test_encode_a_test_image_or_the_same_image_uploaded(sessions, client):
    s = sessions["vae5"]
    by_index = client.post("/api/encode", json={"index": 7, "seed": 3}).json()
    torch.testing.assert_close(torch.tensor(by_index["mean"]), s.codes[7], atol=1e-5, rtol=0)
    assert all(v > 0 for v in by_index["std"]) and by_index["index"] == 7
    upload = client.post("/api/encode", json={"image": png_data_url(s.ex.x[7]), "seed": 3}).json()
    torch.testing.assert_close(torch.tensor(upload["mean"]), s.codes[7], atol=1e-5, rtol=0)
    assert upload["sample"] == by_index["sample"]  # same image, same seed, same posterior sample
    other = client.post("/api/encode", json={"index": 7, "seed": 4}).json()
    assert other["sample_z"] != by_index["sample_z"]  # resampling draws a new z
    m = s.map()
    xy = (torch.tensor(by_index["mean"]) - torch.tensor(m["origin"])) @ torch.tensor(m["axes"]).T
    torch.testing.assert_close(torch.tensor(by_index["xy"]), xy, atol=1e-5, rtol=0)


def test_encode_any_size_and_format(client):
    from PIL import Image

    for size, mode in [((100, 60), "RGB"), ((28, 28), "L"), ((13, 40), "RGBA")]:
        buf = io.BytesIO()
        Image.new(mode, size, "white").save(buf, format="JPEG" if mode == "RGB" else "PNG")
        url = "data:image/x;base64," + base64.b64encode(buf.getvalue()).decode()
        r = client.post("/api/encode", json={"image": url})
        assert r.status_code == 200, r.text
        assert pixels(r.json()["input"]).shape == (28, 28)


def test_encode_models_without_a_gaussian_posterior(sessions):
    ae = sessions["ae"].encode({"index": 0})
    assert ae["std"] == [0.0] * 3 and ae["spread_xy"] == [0.0, 0.0] and ae["sample"] == ae["recon"]
    flows = sessions["flows"].encode({"index": 0})
    assert all(v > 0 for v in flows["std"]) and len(flows["mean"]) == 3


def test_interpolation_ends_at_the_codes(sessions):
    s = sessions["vae5"]
    a, b = s.codes[0].tolist(), s.codes[1].tolist()
    for mode in ("linear", "spherical"):
        r = s.interpolate({"a": a, "b": b, "t": [0, 0.5, 1], "mode": mode})
        torch.testing.assert_close(torch.tensor(r["z"])[[0, 2]], torch.tensor([a, b]), atol=1e-4, rtol=0)
        ends = s.decode({"z": [a, b]})["images"]
        assert [r["images"][0], r["images"][2]] == ends


def test_noise_experiment(sessions):
    s = sessions["vae5"]
    clean = s.noise({"index": 2, "kind": "gaussian", "level": 0})
    assert clean["noisy"] == clean["clean"] and clean["psnr_noisy"] > 100
    rows = [s.noise({"index": 2, "kind": kind, "level": 0.3, "seed": 1}) for kind in ("uniform", "salt-pepper")]
    for r in rows:
        assert r["noisy"] != r["clean"] and 0 < r["psnr_noisy"] < 30 and r["psnr_recon"] > 0
    assert s.noise({"index": 2, "kind": "uniform", "level": 0.3, "seed": 1}) == rows[0]  # seeded


def test_conditional_models_decode_under_each_class(sessions, client):
    c = sessions["cvae"]
    assert c.info()["class_selector"]
    z = c.codes[0].tolist()
    r = c.classes({"z": z})
    assert len(r["images"]) == len(r["classes"]) == 10 and len(set(r["images"])) > 1
    assert c.decode({"z": z, "class": 4})["images"][0] == r["images"][4]
    assert c.encode({"index": 0, "class": 3})["mean"] != c.encode({"index": 0, "class": 5})["mean"] or \
        c.model.encode_condition is False
    bad = client.post("/api/classes", json={"z": [0.0] * 5})
    assert bad.status_code == 400 and "not conditioned" in bad.json()["error"]


def test_prior_samples_are_seeded(client):
    a = client.post("/api/prior", json={"n": 4, "seed": 1}).json()
    b = client.post("/api/prior", json={"n": 4, "seed": 1}).json()
    c = client.post("/api/prior", json={"n": 4, "seed": 2}).json()
    assert a == b and a["images"] != c["images"] and len(a["images"]) == 4


def test_prior_samples_at_a_temperature(sessions, client):
    post = lambda body: client.post("/api/prior", json={"n": 4, "seed": 3, **body}).json()  # noqa: E731
    warm, cool, cold = post({}), post({"temperature": 0.5}), post({"temperature": 0})
    torch.testing.assert_close(torch.tensor(cool["z"]), 0.5 * torch.tensor(warm["z"]))  # the same noise, scaled
    assert not torch.tensor(cold["z"]).any() and len(set(cold["images"])) == 1  # T = 0: the prior's mean
    assert post({"temperature": 1}) == warm  # the default
    takes = {name: s.info()["prior_temperature"] for name, s in sessions.items()}
    assert takes == {"vae5": True, "vae2": True, "vae1": True, "ae": False, "cvae": True, "flows": True,
                     "hvae": False}
    for name, message in [("ae", "an AE has no prior to take a temperature: leave out temperature"),
                          ("hvae", "this run's prior is a layered prior (--model hvae): leave out temperature")]:
        with TestClient(make_app(sessions[name])) as other:
            assert other.post("/api/prior", json={"n": 2, "temperature": 1}).status_code == 200
            bad = other.post("/api/prior", json={"n": 2, "temperature": 0.5})
            assert bad.status_code == 400 and bad.json()["error"].endswith(message)
    for value, message in [(5, "temperature must be in [0, 2], got 5"), (-0.1, "temperature must be in [0, 2]"),
                           ("hot", "temperature must be a finite number"), (True, "must be a finite number")]:
        bad = client.post("/api/prior", json={"n": 2, "temperature": value})
        assert bad.status_code == 400 and message in bad.json()["error"]


def test_one_dimensional_latent_has_a_line_map(sessions):
    s = sessions["vae1"]
    m = s.map()
    assert m["axis_names"][0] == "z[0]" and all(p[1] == 0 for p in m["points"])
    assert len(s.decode({"z": [0.5]})["images"]) == 1


BAD = [
    ("post", "/api/decode", b"not json", 400),
    ("post", "/api/decode", b"[1, 2]", 400),
    ("post", "/api/decode", {"z": [0.0] * 4}, 400),
    ("post", "/api/decode", {"z": [[0.0] * 5, [0.0] * 4]}, 400),
    ("post", "/api/decode", {"z": ["a"] * 5}, 400),
    ("post", "/api/decode", {"z": [1e300] * 5}, 400),
    ("post", "/api/decode", {"z": [True] * 5}, 400),
    ("post", "/api/decode", {"z": []}, 400),
    ("post", "/api/decode", {"z": [[0.0] * 5] * 5000}, 400),
    ("post", "/api/decode", {}, 400),
    ("post", "/api/encode", {}, 400),
    ("post", "/api/encode", {"index": 10**9}, 400),
    ("post", "/api/encode", {"index": -1}, 400),
    ("post", "/api/encode", {"index": "3"}, 400),
    ("post", "/api/encode", {"image": "data:image/png;base64,!!!"}, 400),
    ("post", "/api/encode", {"image": "data:image/png;base64," + base64.b64encode(b"hello").decode()}, 400),
    ("post", "/api/encode", {"image": 12}, 400),
    ("post", "/api/encode", {"index": 0, "seed": -5}, 400),
    ("post", "/api/encode", {"index": 0, "dims": "9,9"}, 400),
    ("post", "/api/interpolate", {"a": [0.0] * 5, "b": [0.0] * 5, "t": 1.5}, 400),
    ("post", "/api/interpolate", {"a": [0.0] * 5, "b": [0.0] * 5, "t": [], "mode": "linear"}, 400),
    ("post", "/api/interpolate", {"a": [0.0] * 5, "b": [0.0] * 5, "mode": "curvy"}, 400),
    ("post", "/api/interpolate", {"a": [0.0] * 5}, 400),
    ("post", "/api/noise", {"index": 0, "kind": "fog"}, 400),
    ("post", "/api/noise", {"index": 0, "level": 2}, 400),
    ("post", "/api/noise", {"index": 0, "level": "nan"}, 400),
    ("post", "/api/prior", {"n": 0}, 400),
    ("post", "/api/prior", {"n": 100000}, 400),
    ("get", "/api/map?dims=7,8", None, 400),
    ("get", "/api/map?dims=1,1", None, 400),
    ("get", "/api/map?dims=x", None, 400),
    ("get", "/api/ranking?score=nope", None, 400),
    ("get", "/api/ranking?score=llr_1", None, 400),
    ("get", "/api/ranking?n=0", None, 400),
    ("get", "/api/ranking?n=65", None, 400),
    ("get", "/api/ranking?n=twelve", None, 400),
    ("get", "/api/ranking?n=1.5", None, 400),
    ("post", "/api/score", {}, 400),
    ("post", "/api/score", {"index": 0, "score": "nope"}, 400),
    ("post", "/api/score", {"index": 0, "score": 3}, 400),
    ("post", "/api/score", {"index": 300}, 400),
    ("post", "/api/ranking", {}, 405),
    ("get", "/api/decode", None, 405),
    ("get", "/api/nothing", None, 404),
    ("post", "/api/decode", b"x" * (9 << 20), 413),
]


@pytest.mark.parametrize("method,path,body,status", BAD, ids=[f"{m}{p}-{i}" for i, (m, p, _, _) in enumerate(BAD)])
def test_bad_requests_get_4xx_with_a_message(client, method, path, body, status):
    if method == "get":
        r = client.get(path)
    elif isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    if path.startswith("/api/") and status == 400:
        message = r.json()["error"]
        assert message and "\n" not in message and "Traceback" not in message


def test_conditional_model_bad_class(sessions):
    with TestClient(make_app(sessions["cvae"])) as c:
        r = c.post("/api/decode", json={"z": [0.0] * 3, "class": 10})
        assert r.status_code == 400 and "class" in r.json()["error"]
        r = c.post("/api/encode", json={"image": png_data_url(torch.zeros(1, 28, 28))})
        assert r.status_code == 400 and "class" in r.json()["error"]


def test_concurrent_decodes_are_batched(sessions):
    s = sessions["vae5"]
    batcher = DecodeBatcher(s)
    z = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))

    async def all_at_once():
        return await asyncio.gather(*(batcher(z[i : i + 1], None) for i in range(40)))

    results = asyncio.run(all_at_once())
    assert [r[0] for r in results] == s.decode({"z": z.tolist()})["images"]
    assert batcher.batches < 40  # requests waiting together ran together


def test_listening_socket_is_tcp():
    # asyncio disables Nagle only on sockets whose proto is TCP; with proto 0 every answer
    # waited ~40 ms for the client's delayed ACK (measured: 44 ms vs 1.6 ms per decode)
    from vaelab.serve import listen

    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_is_local():
    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1") and is_local("127.0.0.5")
    assert not is_local("0.0.0.0") and not is_local("192.168.1.10") and not is_local("example.org")


def _cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vaelab", "serve", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_cli_serves_until_interrupted(runs):
    proc = _cli(runs / "vae2", "--port", "0", "--n-map", "100")
    try:
        line = proc.stdout.readline()
        assert "open http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("open ", 1)[1].split()[0]
        for _ in range(50):
            try:
                info = json.loads(urllib.request.urlopen(url + "api/info", timeout=5).read())
                break
            except OSError:
                time.sleep(0.1)
        assert info["latent_dim"] == 2 and info["n_test"] == 100
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_cli_errors_are_one_line(runs, tmp_path):
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        proc = _cli(runs / "vae2", "--host", "0.0.0.0", "--port", port)
        out, err = proc.communicate(timeout=60)
    finally:
        taken.close()
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("warning: serving on 0.0.0.0") and f"port {port}" in lines[-1]
    assert len(lines) == 2 and "--port" in lines[-1]
    proc = _cli(tmp_path, "--port", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "not a vaelab run folder" in err and len(err.strip().splitlines()) == 1


def test_a_lost_torchrun_peer_while_serving_exits_1_in_one_line(runs, monkeypatch, capsys):
    import vaelab.serve

    def lost(*args, **kwargs):
        raise RuntimeError("[../third_party/gloo/transport/tcp/pair.cc:534] Connection closed by peer")

    monkeypatch.setattr(vaelab.serve, "serve", lost)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["serve", str(runs / "vae2"), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lost rank 1 of this torchrun job" in err[0], err


# ----------------------------------------------------------------------------- hostile requests

POST_ENDPOINTS = ["/api/decode", "/api/encode", "/api/interpolate", "/api/noise", "/api/classes", "/api/prior",
                  "/api/score", "/api/resample"]


def test_hostile_json_is_a_400_never_a_500(client):
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (deep, b'{"z": [' + b"9" * 400 + b"]}", b'{"z": [NaN]}', b'{"z": [1e999]}'):
        for path in POST_ENDPOINTS:
            r = client.post(path, content=body, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (path, body[:40], r.status_code)
            assert "error" in r.json()
    assert client.get("/favicon.ico").status_code == 204
    from vaelab.serve import _json_depth

    assert _json_depth(b'{"a": "\\"[[[[", "b": [[1]]}') == 3  # brackets inside strings do not count


def test_many_spellings_of_a_map_share_one_cache_entry_and_the_cache_is_bounded(sessions, client):
    from vaelab.serve import MAX_MAPS

    s = sessions["vae5"]
    for spelling in ("0,1", "00,1", "0,01", " 0, 1", "+0,1"):
        assert client.get("/api/map", params={"dims": spelling}).status_code == 200
    assert sum(key == "0,1" for key in s.maps) == 1
    for i in range(5):
        for j in range(5):
            if i != j:
                client.get("/api/map", params={"dims": f"{i},{j}"})
    assert len(s.maps) <= MAX_MAPS


def _random_json(rng, depth=0):
    kind = rng.integers(8 if depth < 4 else 5)
    if kind == 0:
        return int(rng.integers(-10**6, 10**6)) * (10 ** int(rng.integers(0, 40)))
    if kind == 1:
        return float(rng.normal()) * 10.0 ** int(rng.integers(-5, 300))
    if kind == 2:
        return "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, int(rng.integers(0, 12))))
    if kind == 3:
        return [None, True, False][int(rng.integers(3))]
    if kind == 4:
        return []
    if kind in (5, 6):
        return [_random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 6)))]
    keys = ["z", "c", "t", "a", "b", "index", "image", "kind", "level", "seed", "n", "mode", "cls", "class"]
    return {keys[int(k)]: _random_json(rng, depth + 1) for k in rng.integers(0, len(keys), int(rng.integers(0, 5)))}


def test_a_json_fuzz_of_every_endpoint_gives_no_5xx(client, sessions):
    """Seeded random bodies (numbers of any size, strings, nesting, wrong types and keys),
    a fixed count per endpoint: every answer is a 2xx or a 4xx with a message."""
    rng = np.random.default_rng(0)
    statuses = []
    for path in POST_ENDPOINTS:
        for _ in range(150):
            r = client.post(path, json=_random_json(rng))
            statuses.append(r.status_code)
            assert r.status_code < 500, (path, r.text[:200])
    for _ in range(100):
        dims = ",".join(str(int(v)) for v in rng.integers(-3, 8, int(rng.integers(1, 4))))
        assert client.get("/api/map", params={"dims": dims}).status_code < 500
    assert len(sessions["vae5"].maps) <= 16
    assert any(s == 400 for s in statuses)


# ----------------------------------------------------------------------------- typical and unusual images


def _more_typical(column, values, value):
    """How many test images are more typical than `value` under `column`."""
    from vaelab.scores import anomaly

    return int((anomaly(column, values) < anomaly(column, np.float64(value))).sum())


def test_ranking_is_sorted_by_the_scores_direction(sessions, client):
    s = sessions["vae5"]
    info = client.get("/api/info").json()
    assert info["default_score"] == "log_px" and info["score_k"] == 8
    assert {"elbo", "log_px", "bits_per_dim", "kl", "mse"} <= set(info["scores"])
    r = client.get("/api/ranking", params={"n": 5})
    assert r.status_code == 200, r.text
    r = r.json()
    assert r["score"] == "log_px" and r["k"] == 8 and r["typical_high"] and r["names"] == info["scores"]
    assert len(r["typical"]) == len(r["unusual"]) == 5
    values = s.test_scores()["log_px"]
    assert len(values) == 300 and np.isfinite(values).all()
    typical, unusual = [row["value"] for row in r["typical"]], [row["value"] for row in r["unusual"]]
    assert typical == sorted(typical, reverse=True) and typical[0] == values.max()  # log p(x): higher is typical
    assert unusual == sorted(unusual) and unusual[0] == values.min()
    for row in r["typical"] + r["unusual"]:
        assert row["value"] == values[row["index"]]
        assert row["image"] == png_data_url(s.ex.x[row["index"]])
    mse = client.get("/api/ranking", params={"score": "mse", "n": 12}).json()
    assert not mse["typical_high"] and len(mse["typical"]) == 12
    low = [row["value"] for row in mse["typical"]]
    assert low == sorted(low) and low[0] == s.test_scores()["mse"].min()  # an error: lower is typical
    scores = s.test_scores()
    assert client.get("/api/ranking", params={"score": "elbo"}).status_code == 200
    assert s.test_scores()["log_px"] is scores["log_px"]  # computed once, then kept


def test_the_default_score_of_each_kind_of_model(sessions):
    hvae, ae = sessions["hvae"], sessions["ae"]
    assert hvae.default_score == "llr_1" and {"llr_1", "llr_2", "kl_1", "kl_3"} <= set(hvae.score_columns)
    r = hvae.ranking({"score": "llr_2", "n": "3"})
    assert r["score"] == "llr_2" and not r["typical_high"] and len(r["unusual"]) == 3
    assert r["unusual"][0]["value"] == hvae.test_scores()["llr_2"].max()  # a large ratio is unusual
    assert ae.default_score == "mse" and ae.score_columns == ["recon", "mse"]
    assert len(ae.ranking({})["typical"]) == 12
    cvae = sessions["cvae"].ranking({"n": "2"})
    assert cvae["score"] == "log_px" and len(cvae["typical"]) == 2


def test_the_page_scores_are_those_of_the_score_command(runs, sessions):
    """Each score is computed by the same registry entry, with the same noise, as vaelab score
    with k = 8 does: the page's numbers are the table's, the complexity-corrected score included."""
    from vaelab.scores import score

    hvae = sessions["hvae"]
    table = score(runs / "hvae", n=300, k=8, progress=False)
    for column in ("log_px", "kl_2", "llr_1", "mse", "complexity_corrected"):
        assert np.array_equal(hvae.test_scores(column)[column], table[column]), column


def test_unknown_score_is_a_one_line_400(client):
    r = client.get("/api/ranking", params={"score": "llr_1"})
    assert r.status_code == 400
    message = r.json()["error"]
    assert "unknown score 'llr_1'" in message and "log_px" in message and "\n" not in message


def test_percentile_of_an_image_agrees_with_its_rank(sessions, client):
    s = sessions["vae5"]
    for column in ("log_px", "mse"):
        values = s.test_scores()[column]
        order = np.argsort(-values if column == "log_px" else values, kind="stable")  # most typical first
        for rank in (0, 7, 150, 299):
            i = int(order[rank])
            r = client.post("/api/score", json={"index": i, "score": column}).json()
            assert r["index"] == i and r["value"] == values[i]
            assert r["percentile"] == pytest.approx(100 * rank / 300)  # no ties among these scores
            word = "lower" if column == "log_px" else "higher"
            assert ("as typical as the most typical" if rank == 0 else f"{word} than") in r["text"]
            assert "of the 300 test images" in r["text"]
    # the same test image uploaded: scored as the model sees test images, among them where its rank says
    values = s.test_scores()["mse"]
    order = np.argsort(values, kind="stable")
    for rank in (3, 200):
        i = int(order[rank])
        up = client.post("/api/score", json={"image": png_data_url(s.ex.x[i]), "score": "mse"}).json()
        assert up["index"] is None and up["value"] == pytest.approx(values[i], rel=1e-4)
        assert abs(up["percentile"] - 100 * rank / 300) <= 100 / 300
        assert up["percentile"] == pytest.approx(100 * _more_typical("mse", values, up["value"]) / 300)
    drawn = {"image": png_data_url(torch.zeros(1, 28, 28)), "score": "log_px"}
    first, again = client.post("/api/score", json=drawn).json(), client.post("/api/score", json=drawn).json()
    assert first == again and first["text"].startswith("log p(x) = ")  # seeded: the same image, the same score
    values = s.test_scores()["log_px"]
    assert first["percentile"] == pytest.approx(100 * _more_typical("log_px", values, first["value"]) / 300)


def test_score_of_a_conditional_models_upload_needs_its_class(sessions):
    c = sessions["cvae"]
    image = png_data_url(c.ex.x[0])
    with TestClient(make_app(c)) as client:
        r = client.post("/api/score", json={"image": image})
        assert r.status_code == 400 and "class" in r.json()["error"]
        label = int(c.ex.labels[0])
        r = client.post("/api/score", json={"image": image, "class": label, "score": "mse"})
        assert r.status_code == 200 and r.json()["value"] == pytest.approx(c.test_scores()["mse"][0], rel=1e-4)


# ----------------------------------------------------------------------------- a ladder model's levels


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    run = tmp_path_factory.mktemp("serve-ladder") / "ladder"
    assert main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--batch-size", "250", "--quiet", "--model",
                 "ladder", "--levels", "2x7x7,3", "--hidden", "8", "--res-blocks", "0", "--out", str(run)]) == 0
    return Session.from_run(run, n=100)


def test_resample_redraws_the_chosen_levels_of_a_ladder_model(ladder):
    from vaelab.explore import resample_levels

    assert ladder.info()["levels"] == [[2, 7, 7], [3]]
    with TestClient(make_app(ladder)) as client:
        post = lambda body: client.post("/api/resample", json={"index": 4, **body}).json()  # noqa: E731
        nothing = post({"k": 0, "n": 3})  # levels 1..0 redrawn: every draw is the reconstruction
        assert nothing["kept"] == [1, 2] and nothing["redrawn"] == []
        recon = pixels(nothing["recon"]).astype(int)
        assert all(np.abs(pixels(im).astype(int) - recon).max() <= 1 for im in nothing["images"])
        everything = post({"k": 2, "n": 3, "seed": 1})
        assert everything["kept"] == [] and everything["redrawn"] == [1, 2]
        assert not np.array_equal(pixels(everything["images"][0]), pixels(everything["images"][1]))
        assert client.post("/api/resample", json={"index": 7, "k": 2, "n": 3, "seed": 1}).json()["images"] \
            == everything["images"]  # nothing kept: the image plays no part
        cold = post({"k": 2, "n": 3, "temperature": 0})
        assert len(set(cold["images"])) == 1  # at temperature 0 every level is its prior mean
        detail = post({"k": 1, "n": 2, "seed": 2})  # the default: redraw level 1, keep level 2
        assert detail["kept"] == [2] and detail["redrawn"] == [1] and detail["redraw"] == "below"
        expected = resample_levels(ladder.model, ladder.ex.x[4:5], (2,), 2, torch.Generator().manual_seed(2))
        np.testing.assert_allclose(pixels(detail["images"][1]) / 255, expected[1, 0, 0].numpy(), atol=1 / 255)
        above = post({"k": 1, "redraw": "above", "n": 2})
        assert above["kept"] == [1] and above["redrawn"] == [2]
        for body, message in [({"k": 3}, "k must be in [0, 2]"), ({"redraw": "middle"}, "redraw must be one of"),
                              ({"temperature": 5}, "temperature must be in [0, 2]"), ({"n": 0}, "n must be in")]:
            bad = client.post("/api/resample", json={"index": 4, **body})
            assert bad.status_code == 400 and message in bad.json()["error"]


def test_prior_samples_of_a_ladder_model_at_a_temperature(ladder):
    from vaelab.explore import prior_codes

    assert ladder.info()["prior_temperature"]
    with TestClient(make_app(ladder)) as client:
        post = lambda body: client.post("/api/prior", json={"n": 3, "seed": 4, **body}).json()  # noqa: E731
        assert len(set(post({"temperature": 0})["images"])) == 1  # every level at its conditional prior mean
        cool = post({"temperature": 0.6})
        expected = prior_codes(ladder.model, 3, 0.6, torch.Generator().manual_seed(4))
        torch.testing.assert_close(torch.tensor(cool["z"]), expected)
        assert cool["images"] != post({})["images"]
        decoded = ladder.model.decode(expected).mean[1, 0].detach()
        np.testing.assert_allclose(pixels(cool["images"][1]) / 255, decoded.numpy(), atol=1 / 255)


def test_resample_needs_a_ladder_model(sessions, client):
    assert sessions["vae5"].info()["levels"] is None
    r = client.post("/api/resample", json={"index": 0, "k": 1})
    assert r.status_code == 400 and "--model ladder" in r.json()["error"]
