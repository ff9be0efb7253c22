"""Colour images on a CPU: the 8-bit recipe's speed, quality and evaluation time, on real
colour artwork that Debian ships.

    python benchmarks/colour.py build [--root DIR]
    python benchmarks/colour.py speed [--sizes 32,64] [--precisions fp32,bf16] [--epochs 4]
    python benchmarks/colour.py pythae [--sizes 32,64]    (in an environment with pythae 0.1.2)
    python benchmarks/colour.py quality [--data icons] [--size 32] [--minutes 10] [--seeds 0,1,2]
    python benchmarks/colour.py evaluate [--k 100] [--n 1000]
    python benchmarks/colour.py cifar10        (when CIFAR-10's files are present)

`build` makes the benchmark folders from Debian packages (apt-get install oxygen-icon-theme
gnome-icon-theme tango-icon-theme faenza-icon-theme nexuiz-textures), under DIR (default
~/.cache/vaelab/colour-benchmark):

- icons/: one file per icon of four themes (oxygen, gnome, Tango, Faenza), the largest
  raster size of at least 32 px, exact duplicates dropped: 2,573 RGBA images, transparent
  pixels on white. textures/: the colour textures of the game Nexuiz (its normal, gloss,
  glow and bump maps left out): 2,377 photographs of surfaces. Both split once into
  train/ and test/, 15% test, by a BLAKE2b hash of each file's name, so the split never
  changes. vaelab resizes them (--image-size 32 or 64: shorter side fitted, centre crop).
- eval1000/: icons again, the first 1,000 (by name) as test/ and the rest as train/, to time
  `vaelab evaluate` on 1,000 test images.

`speed` times `vaelab train` (the default recipe, chosen from the data) against a plain
PyTorch loop that trains the same network with the same likelihood on the same images,
held as one uint8 tensor, at the same batch size: each epoch the plain loop takes a random
permutation, scales each batch to [0, 1], draws z = mu + sigma * eps with torch.randn,
takes Adam's fused step on -ELBO, and ends with the test ELBO, as vaelab's epoch does.
Both report epoch images/s (training steps and the test pass; vaelab's also counts its
active units): the median over epochs 2.. . The two run alternately, A B A B.

`quality` trains the default recipe for at most --minutes on each seed, evaluates it
(`vaelab evaluate --k 100`: IS-NLL and bits/dim, reconstruction PSNR, active units) and
does the same for a plain conv VAE of the same widths and latent size (the strided conv
encoder and sub-pixel decoder of `--net conv`, with the discretized logistic and a
learned per-pixel scale, at the same learning rate and batch) for the same time. Pictures
of seed 0 go to docs/images/colour/.

Results: benchmarks/results/colour-<what>-<date>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import date
from pathlib import Path

from common import Run, machine, pythae_epoch_clock, vaelab

ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vaelab" / "colour-benchmark"
RESULTS = Path(__file__).resolve().parent / "results"
PICTURES = Path(__file__).resolve().parent.parent / "docs" / "images" / "colour"
THEMES = {"oxygen": "/usr/share/icons/oxygen/base", "gnome": "/usr/share/icons/gnome",
          "tango": "/usr/share/icons/Tango", "faenza": "/usr/share/icons/Faenza"}
TEXTURES = Path("/usr/share/games/nexuiz/data/textures.pk3")
TEXTURE_MAPS = ("_norm", "_gloss", "_glow", "_bump", "_pants", "_shirt")  # not pictures of a surface
TEST_FRACTION = 0.15
PACKAGES = "oxygen-icon-theme gnome-icon-theme tango-icon-theme faenza-icon-theme nexuiz-textures"


# ----------------------------------------------------------------------------- data


def _size(part: str) -> int | None:
    m = re.fullmatch(r"(\d+)x\1", part) or re.fullmatch(r"(\d+)", part)
    return int(m.group(1)) if m else None


def _icons(theme: str, root: Path) -> dict[str, Path]:
    """name -> the largest raster (>= 32 px) of each icon of a theme; symbolic links skipped."""
    best: dict[tuple[str, ...], tuple[int, Path]] = {}
    for p in sorted(root.rglob("*.png")):
        if p.is_symlink():
            continue
        parts = p.relative_to(root).parts
        sizes = [s for s in map(_size, parts) if s]
        key = tuple(x for x in parts if _size(x) is None)
        if sizes and sizes[0] >= 32 and (key not in best or sizes[0] > best[key][0]):
            best[key] = (sizes[0], p)
    return {f"{theme}-{'-'.join(k)}": p for k, (_, p) in best.items()}


def _split(key: str) -> str:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return "test" if h / 2.0**64 < TEST_FRACTION else "train"


def _unique(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files whose bytes no file earlier by name has."""
    seen: set[str] = set()
    out = {}
    for key in sorted(files):
        digest = hashlib.sha1(files[key]).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out[key] = files[key]
    return out


def _write(files: dict[str, bytes], folder: Path, split=_split) -> int:
    if folder.exists():
        shutil.rmtree(folder)
    for key, data in files.items():
        target = folder / split(key) / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return len(files)


def build(root: Path) -> dict[str, int]:
    missing = [name for name, path in THEMES.items() if not Path(path).is_dir()]
    if missing or not TEXTURES.is_file():
        sys.exit(f"missing Debian packages ({', '.join(missing) or 'nexuiz-textures'}): "
                 f"apt-get install {PACKAGES}")
    icons = _unique({key: p.read_bytes() for theme, path in THEMES.items()
                     for key, p in _icons(theme, Path(path)).items()})
    counts = {"icons": _write(icons, root / "icons")}
    first = set(sorted(icons)[:1000])
    counts["eval1000"] = _write(icons, root / "eval1000", split=lambda k: "test" if k in first else "train")
    with zipfile.ZipFile(TEXTURES) as z:
        textures = _unique({name.replace("/", "-"): z.read(name) for name in z.namelist()
                            if name.lower().endswith((".jpg", ".tga", ".png"))
                            and not name.rsplit("/", 1)[-1].rsplit(".", 1)[0].endswith(TEXTURE_MAPS)})
    counts["textures"] = _write(textures, root / "textures")
    for name in list(counts):
        counts[f"{name}_test"] = sum(1 for _ in (root / name / "test").iterdir())
    return counts


# ----------------------------------------------------------------------------- helpers


def save(what: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"colour-{what}-{date.today()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------- speed


def plain_loop(data: Path, size: int, precision: str, epochs: int, seed: int = 0) -> list[float]:
    """Epoch images/s of a plain PyTorch loop over vaelab's recipe network and likelihood."""
    import torch

    from vaelab.config import Config, resolve
    from vaelab.images import Transform, load_folder
    from vaelab.models import build_model
    from vaelab.runtime import tune_malloc

    tune_malloc()
    torch.manual_seed(seed)
    ds = load_folder(data, Transform((size, size), 0, "white", 0.1), progress=False)
    cfg, _ = resolve(Config(), ds.facts())
    train = ds.train.images.load() if not ds.train.in_memory else ds.train.images
    test = ds.test.images.load() if not ds.test.in_memory else ds.test.images
    model = build_model(cfg.model, ds.image_shape)
    if precision == "bf16":
        model.set_precision(torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)
    batch, speeds = cfg.train.batch_size, []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        perm = torch.randperm(len(train))
        for i in range(0, len(train), batch):
            x = train[perm[i : i + batch]].float() / 255
            q = model.encode(x)
            z = q.mean + q.std * torch.randn_like(q.mean)
            loss = (q.kl_standard_normal() - model.decode(z).log_prob(x)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, len(test), 1000):
                x = test[i : i + 1000].float() / 255
                q = model.encode(x)
                z = q.mean + q.std * torch.randn_like(q.mean)
                (model.decode(z).log_prob(x) - q.kl_standard_normal()).sum()
        speeds.append(len(train) / (time.perf_counter() - start))
    return speeds


def speed(args) -> dict:
    rows = []
    for size in args.sizes:
        for precision in args.precisions:
            vaelab_runs, plain_runs = [], []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    vaelab("train", "--dataset", str(args.root / "icons"), "--image-size", str(size),
                           "--epochs", str(args.epochs), "--precision", precision, "--out", tmp)
                    vaelab_runs.append(statistics.median(r["examples_per_s"] for r in Run(tmp).records()[1:]))
                out = subprocess.run([sys.executable, __file__, "plain", "--root", str(args.root), "--size", str(size),
                                      "--precision", precision, "--epochs", str(args.epochs)],
                                     check=True, capture_output=True, text=True).stdout
                plain_runs.append(statistics.median(json.loads(out)[1:]))
            row = {"size": size, "precision": precision, "vaelab_images_per_s": vaelab_runs,
                   "plain_images_per_s": plain_runs,
                   "ratio": [round(a / b, 3) for a, b in zip(vaelab_runs, plain_runs)]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"date": str(date.today()), "machine": machine(), "epochs": args.epochs, "rows": rows}


def pythae_speed(args) -> dict:
    """pythae 0.1.2 (where importable) training vaelab's recipe networks as its own VAE: the same
    encoder and decoder (the decoder's head giving 3 channels, the mean), pythae's MSE
    reconstruction loss (it has no discretized logistic), its trainer, Adam, the same batch;
    images/s from its epoch boundaries (its training steps plus its per-epoch evaluation)."""
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig

    from vaelab.config import Config, resolve
    from vaelab.images import Transform, load_folder
    from vaelab.nets import ResNetDecoder, ResNetEncoder

    class Encoder(BaseEncoder):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            mu, log_var = self.net(x).chunk(2, -1)
            return ModelOutput(embedding=mu, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    rows = []
    for size in args.sizes:
        ds = load_folder(args.root / "icons", Transform((size, size), 0, "white", 0.1), progress=False)
        cfg, _ = resolve(Config(), ds.facts())
        m, d = cfg.model, cfg.model.latent_dim
        encoder = Encoder(ResNetEncoder(ds.image_shape, m.hidden, 2 * d, m.activation, res_blocks=m.res_blocks))
        decoder = Decoder(ResNetDecoder(d, m.hidden, ds.image_shape, m.activation, res_blocks=m.res_blocks))
        train = (ds.train.images.load() if not ds.train.in_memory else ds.train.images).float().numpy() / 255
        test = (ds.test.images.load() if not ds.test.in_memory else ds.test.images).float().numpy() / 255
        model = VAE(VAEConfig(input_dim=ds.image_shape, latent_dim=d, reconstruction_loss="mse"),
                    encoder=encoder, decoder=decoder)
        with tempfile.TemporaryDirectory() as tmp:
            tc = BaseTrainerConfig(output_dir=tmp, num_epochs=args.epochs, learning_rate=cfg.train.lr,
                                   per_device_train_batch_size=cfg.train.batch_size,
                                   per_device_eval_batch_size=cfg.train.batch_size, optimizer_cls="Adam", no_cuda=True)
            clock = pythae_epoch_clock()
            TrainingPipeline(training_config=tc, model=model)(train_data=train, eval_data=test, callbacks=[clock])
        secs = [b - a for a, b in zip(clock.starts[:-1], clock.starts[1:])]
        rows.append({"size": size, "pythae_images_per_s": len(train) / statistics.median(secs[1:])})
        print(json.dumps(rows[-1]), flush=True)
    return {"date": str(date.today()), "machine": machine(), "epochs": args.epochs, "rows": rows}


# ----------------------------------------------------------------------------- quality


BASELINE = ["--net", "conv", "--likelihood", "logistic", "--scale", "pixel"]


def measure(run: Path, k: int) -> dict:
    vaelab("evaluate", str(run), "--k", str(k), "--no-progress")
    ev = Run(run).evaluation(k=k)
    rows = Run(run).records()
    last = rows[-1]
    return {"epochs": last["epoch"], "train_s": round(sum(r["seconds"] for r in rows), 1),
            "test_kl": last.get("test_kl"), "active_units": ev.get("active_units"),
            "latent_dim": Run(run).config.model.latent_dim,
            "psnr_db": ev.get("recon_psnr"), "bits_per_dim": ev["bits_per_dim"], "nll": ev["nll"],
            "nll_stderr": ev["nll_stderr"], "elbo": ev["elbo"], "k": ev["k"], "n": ev["n"],
            "eval_s": ev["seconds"]}


def summary(runs: list[dict]) -> dict:
    out = {}
    for key in ("psnr_db", "test_kl", "active_units", "bits_per_dim", "epochs"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = [round(statistics.mean(values), 3), round(statistics.stdev(values), 3) if len(values) > 1 else 0]
    return out


def quality(args) -> dict:
    data = args.root / args.data
    work = Path(tempfile.mkdtemp(prefix="vaelab-colour-"))
    result = {"date": str(date.today()), "machine": machine(), "data": args.data, "size": args.size,
              "minutes": args.minutes, "extra_flags": args.extra, "recipe": [], "baseline": []}
    for seed in args.seeds:
        run = work / f"recipe-{seed}"
        vaelab("train", "--dataset", str(data), "--image-size", str(args.size), "--minutes", str(args.minutes),
               "--seed", str(seed), "--out", str(run), *args.extra.split())
        cfg = Run(run).config.to_dict()  # config.json as it reads
        result["recipe"].append({"seed": seed, **measure(run, args.k)})
        print(json.dumps(result["recipe"][-1]), flush=True)
        if seed == args.seeds[0] and not args.extra:
            PICTURES.mkdir(parents=True, exist_ok=True)
            vaelab("plot", str(run), "--what", "recon,samples,interpolate", "--out", str(work / "plots"))
            for name in ("recon", "samples", "interpolate"):
                shutil.copy(work / "plots" / f"{name}.png", PICTURES / f"{args.data}{args.size}-{name}.png")
            result["recipe_config"] = cfg
        if args.baseline:
            base = work / f"baseline-{seed}"
            m, t = cfg["model"], cfg["train"]
            # the same training time as the recipe's run (which stops at its epoch count)
            minutes = result["recipe"][-1]["train_s"] / 60
            vaelab("train", "--dataset", str(data), "--image-size", str(args.size), *BASELINE,
                   "--hidden", ",".join(map(str, m["hidden"])), "--latent-dim", str(m["latent_dim"]),
                   "--lr", str(t["lr"]), "--batch-size", str(t["batch_size"]), "--epochs", "100000",
                   "--schedule", "constant", "--minutes", f"{minutes:.3f}", "--seed", str(seed), "--out", str(base))
            result["baseline"].append({"seed": seed, **measure(base, args.k)})
            print("baseline", json.dumps(result["baseline"][-1]), flush=True)
    result["recipe_summary"] = summary(result["recipe"])
    result["baseline_summary"] = summary(result["baseline"])
    result["baseline_flags"] = BASELINE
    return result


# ----------------------------------------------------------------------------- evaluation time


def evaluation(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        vaelab("train", "--dataset", str(args.root / "eval1000"), "--image-size", "32", "--epochs", str(args.epochs),
               "--out", tmp)
        start = time.perf_counter()
        vaelab("evaluate", tmp, "--k", str(args.k), "--n", str(args.n), "--no-progress")
        wall = time.perf_counter() - start
        ev = Run(tmp).evaluation(k=args.k, n=args.n)
    return {"date": str(date.today()), "machine": machine(), "k": ev["k"], "n": ev["n"],
            "evaluate_seconds": ev["seconds"], "command_wall_seconds": round(wall, 1),
            "bits_per_dim": ev["bits_per_dim"], "nll_stderr": ev["nll_stderr"]}


def cifar10(args) -> dict:
    from vaelab.data import DataError, locate

    try:
        locate("cifar10", allow_download=False)
    except DataError as e:
        sys.exit(f"CIFAR-10 is not here ({e})")
    work = Path(tempfile.mkdtemp(prefix="vaelab-cifar-"))
    vaelab("train", "--dataset", "cifar10", "--minutes", str(args.minutes), "--out", str(work / "run"))
    return {"date": str(date.today()), "machine": machine(), **measure(work / "run", args.k)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["build", "speed", "pythae", "quality", "evaluate", "cifar10", "plain"])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[32, 64])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "bf16"])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", default="icons")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--no-baseline", dest="baseline", action="store_false")
    ap.add_argument("--extra", default="", help='quality: more `vaelab train` flags, e.g. --extra="--precision fp32"')
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    if args.what == "build":
        print(json.dumps(build(args.root)))
        return
    if args.what == "plain":
        print(json.dumps(plain_loop(args.root / "icons", args.size, args.precision, args.epochs)))
        return
    if args.what != "cifar10" and not (args.root / "icons").is_dir():
        build(args.root)
    result = {"speed": speed, "pythae": pythae_speed, "quality": quality, "evaluate": evaluation,
              "cifar10": cifar10}[args.what](args)
    tag = args.what
    if args.what == "quality":
        tag += f"-{args.data}{args.size}" + "".join(args.extra.replace("--", "-").split())
    print(f"-> {save(tag, result)}")


if __name__ == "__main__":
    main()
