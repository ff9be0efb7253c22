"""A web page to explore a trained model: ``vaelab serve RUN_DIR``.

Two layers. `Session` holds the model and its test images and answers questions
in plain Python (decode these codes, encode this image, add this noise, ...), validating
every input and raising `BadRequest` with a message for anything wrong.
`make_app` puts it behind a small Starlette app: JSON in, JSON out (images as PNG
data URLs), the page itself from ``vaelab/_web`` (plain HTML/JS/CSS, no CDN). Decode
requests that arrive together are run as one batch (`DecodeBatcher`), so moving
the mouse over the map stays responsive while other requests are served.

The test images' scores (``vaelab.scores``: log p(x), ELBO, KL, LLR>k, reconstruction
error, ...) are computed once, on the first request that needs them, in chunks that let
other requests in between; they rank the images from most typical to most unusual and
place any other image among them (a percentile).
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import math
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.batches import TEST_KEY, Feed, as_input, binarization_key
from vaelab.config import NOISE_KINDS, background_rgb
from vaelab.evaluate import decode_rows
from vaelab.explore import (
    Explorer,
    add_noise,
    principal_axes,
    prior_codes,
    psnr,
    resample_levels,
    slerp,
    temperature_refusal,
)
from vaelab.images import from_pil
from vaelab.runtime import rebalance_threads
from vaelab.scores import (
    ScoreContext,
    anomaly,
    chosen,
    column_names,
    default_rank,
    density_shift,
    direction,
    label,
    ranked,
    score_batch,
    score_of,
)

__all__ = ["serve", "make_app", "Session", "BadRequest"]

WEB = Path(__file__).parent / "_web"
MAX_BODY = 8 << 20  # bytes of one request: an uploaded photo fits, a flood does not
MAX_CODES = 1024  # codes decoded by one request
SCORE_K = 8  # importance samples per image behind the ranking's scores (a quick, noisier log p(x))
MAX_RANK = 64  # most typical / most unusual images shown by one ranking request


class BadRequest(ValueError):
    """A request the session cannot answer; the message says why.

    Every [Session][vaelab.serve.Session] method raises it for input it cannot use (a code of
    the wrong length, an unknown score, a number out of range, an unreadable image); the app
    of [make_app][vaelab.serve.make_app] answers it as JSON ``{"error": message}``.

    Attributes:
        status: the HTTP status the app answers with (400).

    Examples:
        >>> from vaelab.serve import BadRequest, Session
        >>> session = Session.from_run(run.path, n=100)
        >>> try:
        ...     session.prior({"n": 0})
        ... except BadRequest as e:
        ...     print(e.status, e)
        400 n must be in [1, 256], got 0
    """

    status = 400


class TooLarge(BadRequest):
    """A request body over MAX_BODY bytes (HTTP 413)."""

    status = 413


# ----------------------------------------------------------------------------- request values


def _number(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, got {value!r:.40}")
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be in [{lo:g}, {hi:g}], got {value:g}")
    return float(value)


def _integer(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer, got {value!r:.40}")
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise BadRequest(f"{name} must be one of {', '.join(options)}, got {value!r:.40}")
    return value


def _query_int(value: Any, name: str, lo: int, hi: int, default: int) -> int:
    """An integer from a query string ('12'), or `default` when it is left out."""
    if value is None or value == "":
        return default
    if isinstance(value, str) and len(value) <= 12 and value.strip().lstrip("+-").isdigit():
        value = int(value)
    return _integer(value, name, lo, hi)


def _json_float(value: Any) -> float | None:
    """A score as JSON can carry it: None for a value that is not finite."""
    value = float(value)
    return value if math.isfinite(value) else None


def _codes(value: Any, dim: int, name: str = "z") -> torch.Tensor:
    """A code [D floats] or a list of codes -> (N, D) float tensor."""
    rows = value if isinstance(value, list) and value and isinstance(value[0], list) else [value]
    if not isinstance(value, list) or not value or len(rows) > MAX_CODES:
        raise BadRequest(f"{name} must be a list of {dim} numbers or a list of up to {MAX_CODES} such lists")
    for row in rows:
        if not isinstance(row, list) or len(row) != dim:
            raise BadRequest(f"{name} must hold codes of {dim} numbers (the latent size), got "
                             f"{len(row) if isinstance(row, list) else type(row).__name__}")
        for v in row:
            _number(v, f"every entry of {name}", -1e4, 1e4)
    return torch.tensor(rows, dtype=torch.float32)


def png_data_url(image: torch.Tensor) -> str:
    """(C, H, W) values in [0, 1] -> 'data:image/png;base64,...'."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    pil = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def read_data_url(value: Any, size: tuple[int, int], channels: int, background: tuple[int, int, int]) -> np.ndarray:
    """An image sent by the page (a data URL or bare base64 of any Pillow format) -> uint8 (C, H, W)."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, str) or not value:
        raise BadRequest("image must be a data URL such as data:image/png;base64,...")
    payload = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        raw = base64.b64decode(payload, validate=True)
    except ValueError:
        raise BadRequest("image is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return from_pil(im, size, channels, background)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadRequest(f"image could not be read ({str(e).splitlines()[0][:80] or type(e).__name__})") from None


# ----------------------------------------------------------------------------- the model side


class Session:
    """A trained model with its test images, answering the explorer page's questions.

    The page's whole logic in plain Python, without a web server: the request methods
    (``info``, ``decode``, ``encode``, ``prior``, ...) take JSON-like values (a dict, as
    parsed from a request) and return a JSON-able dict, with images as PNG data URLs
    (``"data:image/png;base64,..."``) and codes as lists of D numbers. Invalid input raises
    [BadRequest][vaelab.serve.BadRequest]. Model calls hold a lock, one at a time, so
    concurrent requests never oversubscribe the CPU.

    Args:
        ex: the run's [Explorer][vaelab.explore.Explorer] (its model, test images, config).
        n_gallery: how many test images the gallery shows.

    Examples:
        >>> from vaelab.serve import Session
        >>> session = Session.from_run(run.path, n=100)
        >>> info = session.info()
        >>> info["latent_dim"], info["n_test"], info["image_shape"]
        (2, 100, [1, 28, 28])
        >>> images = session.decode({"z": [[0.0, 0.0], [1.0, -1.0]]})["images"]
        >>> len(images), images[0][:22]
        (2, 'data:image/png;base64,')
        >>> code = session.encode({"index": 3})
        >>> len(code["mean"]), len(code["std"]), code["recon"][:22]
        (2, 2, 'data:image/png;base64,')
        >>> session.decode({"z": [0.5]})
        Traceback (most recent call last):
        ...
        vaelab.serve.BadRequest: z must hold codes of 2 numbers (the latent size), got 1
    """

    def __init__(self, ex: Explorer, n_gallery: int = 24) -> None:
        self.ex, self.model = ex, ex.model
        self.lock = threading.Lock()
        self.dim = self.model.latent_dim
        self.shape = tuple(ex.x.shape[1:])
        self.n_classes = len(ex.classes)
        self.conditional = bool(self.model.conditional)
        self.labelled_conditions = self.conditional and not ex.cfg.data.conditions and self.n_classes > 0
        self.n_gallery = min(n_gallery, len(ex.x))
        with torch.no_grad():
            self.codes = ex.codes(ex.x)
        self.maps: dict[str, dict[str, Any]] = {}
        # the scores of the test images: which exist now, their values on first use
        model = self.model
        names, self.skip = chosen(model)
        columns = column_names(model, names, self.skip)
        self.score_columns = ranked(columns)
        self.default_score = default_rank(self.score_columns)
        self.shift = density_shift(model)
        self.dequantized = ex.cfg.data.binarization == "none" and not model.likelihood.discrete
        self.score_lock = threading.Lock()  # one computation of the test scores, however many ask
        self._scores: dict[str, np.ndarray] = {}
        self.no_temperature = temperature_refusal(model)  # None: prior samples take a temperature

    @classmethod
    def from_run(cls, run_dir: str | Path, n: int = 2000, device: str = "cpu") -> Session:
        """The session of a run folder, with its first `n` test images, the model on `device`."""
        return cls(Explorer.from_run(run_dir, n=n, device=device))

    # -- conditions ---------------------------------------------------------

    def _conditions(self, value: Any, n: int) -> torch.Tensor | None:
        """The decoder's condition for n codes: class `value` (an index) for labelled
        conditional models; unconditional models ignore it."""
        if not self.conditional:
            return None
        if value is None:
            return self.ex.cond_like(n)
        if not self.labelled_conditions:
            raise BadRequest("this model is conditioned on custom data, not on class labels: leave out 'class'")
        k = _integer(value, "class", 0, self.n_classes - 1)
        return torch.nn.functional.one_hot(torch.full((n,), k), self.n_classes).float().to(self.ex.x.device)

    # -- what the page shows --------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the page needs to know first: the run, model, image shape, latent size, classes,
        whether it is conditional, the noise kinds, the scores it can rank by, and whether its
        prior samples take a temperature."""
        cfg = self.ex.cfg
        return {"run": self.ex.run_dir.name if self.ex.run_dir else "", "model": cfg.model.model,
                "net": cfg.model.net, "likelihood": cfg.model.likelihood, "dataset": Path(cfg.data.dataset).name,
                "image_shape": list(self.shape), "latent_dim": self.dim, "classes": list(self.ex.classes),
                "conditional": self.conditional, "class_selector": self.labelled_conditions,
                "has_prior": bool(self.model.has_density), "n_test": len(self.ex.x), "n_gallery": self.n_gallery,
                "noise_kinds": list(NOISE_KINDS), "scores": self.score_columns,
                "score_labels": {c: label(c) for c in self.score_columns}, "default_score": self.default_score,
                "score_k": SCORE_K, "levels": self.levels(), "prior_temperature": self.no_temperature is None}

    def levels(self) -> list[list[int]] | None:
        """The shapes of a ladder model's latent levels, bottom first ([C, H, W] or [D]); None
        for a model without levels."""
        shapes = getattr(self.model, "level_shapes", None) if hasattr(self.model, "top_down") else None
        return None if shapes is None else [list(shape) for shape in shapes]

    def map(self, dims: Any = None) -> dict[str, Any]:
        """The latent map: test codes projected to 2-D, and the plane it spans in code space
        (z = origin + x * axes[0] + y * axes[1]), so any point of the map is a code."""
        d = self.dim
        if dims in (None, "", "auto"):
            dims = "pca" if d > 2 else "0,1" if d == 2 else "0"
        if not isinstance(dims, str):
            raise BadRequest("dims must be 'pca' or two latent dimensions such as '0,1'")
        if dims not in ("pca", "0"):  # one key per map, however its dimensions are spelled
            try:
                dims = ",".join(str(int(v)) for v in dims.split(","))
            except ValueError:
                raise BadRequest(f"dims must be 'pca' or two latent dimensions such as '0,1', got {dims!r:.40}") \
                    from None
        if dims in self.maps:
            self.maps[dims] = self.maps.pop(dims)  # most recently used last
        else:
            if len(self.maps) >= MAX_MAPS:
                self.maps.pop(next(iter(self.maps)))  # the least recently used map goes
            self.maps[dims] = self._map(dims, d)
        return self.maps[dims]

    def _map(self, dims: str, d: int) -> dict[str, Any]:
        codes = self.codes
        if d == 1:  # a line: the map's y axis changes nothing
            if dims != "0":
                raise BadRequest("a 1-D latent has one map: dims '0'")
            origin, axes, name = torch.zeros(1), torch.tensor([[1.0], [0.0]]), ("z[0]", "(none)")
        elif dims == "pca":
            origin, axes, _ = principal_axes(codes)
            name = ("PC 1", "PC 2")
        else:
            try:
                i, j = (int(v) for v in dims.split(","))
            except ValueError:
                raise BadRequest(f"dims must be 'pca' or two latent dimensions such as '0,1', got {dims!r:.40}") \
                    from None
            if not (0 <= i < d and 0 <= j < d and i != j):
                raise BadRequest(f"dims must be two different dimensions in [0, {d - 1}], got {i},{j}")
            origin = codes.mean(0)
            origin[[i, j]] = 0
            axes = torch.zeros(2, d)
            axes[0, i] = axes[1, j] = 1
            name = (f"z[{i}]", f"z[{j}]")
        xy = (codes - origin) @ axes.T
        lo = xy.quantile(0.005, 0)
        span = (xy.quantile(0.995, 0) - lo).clamp_min(1.0)
        pad, hi = span * 0.08, lo + span
        return {"dims": dims, "axis_names": list(name), "origin": origin.tolist(), "axes": axes.tolist(),
                "points": [[round(a, 4), round(b, 4)] for a, b in xy.tolist()],
                "labels": self.ex.labels.tolist(), "extent": [float(lo[0] - pad[0]), float(hi[0] + pad[0]),
                                                               float(lo[1] - pad[1]), float(hi[1] + pad[1])]}

    @torch.no_grad()
    def decode_many(self, requests: list[tuple[torch.Tensor, torch.Tensor | None]]) -> list[list[str]]:
        """Decoder means of several requests' codes in one batch: one list of images per request.

        Each request is ``(z, c)``: codes of shape (N, D) and conditions of shape (N, K), or
        None for an unconditional model; the result holds N PNG data URLs per request."""
        z = torch.cat([r[0] for r in requests]).to(self.ex.x.device)
        c = None if not self.conditional else torch.cat([r[1] for r in requests])
        with self.lock:
            images = self.model.decode(z, c).mean
        urls = [png_data_url(im) for im in images]
        out, start = [], 0
        for zr, _ in requests:
            out.append(urls[start : start + len(zr)])
            start += len(zr)
        return out

    def decode_request(self, body: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The codes of a decode request (``"z"``: one code or a list of codes, ``"class"``
        optional) checked and turned into tensors: codes of shape (N, D) and conditions of
        shape (N, K), or None for an unconditional model."""
        z = _codes(body.get("z"), self.dim)
        return z, self._conditions(body.get("class"), len(z))

    def decode(self, body: dict[str, Any]) -> dict[str, Any]:
        """Decoder means of codes: ``{"z": [...], "class": k}`` -> ``{"images": [data URL, ...]}``."""
        return {"images": self.decode_many([self.decode_request(body)])[0]}

    def _image(self, body: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
        """The image a request names: 'index' of a test image, or an uploaded/drawn 'image'."""
        if "index" in body and body["index"] is not None:
            i = _integer(body["index"], "index", 0, len(self.ex.x) - 1)
            c = None if self.ex.c is None else self.ex.c[i : i + 1]
            if self.labelled_conditions and body.get("class") is not None:
                c = self._conditions(body["class"], 1)
            return self.ex.x[i : i + 1], c, i
        if "image" not in body:
            raise BadRequest("send 'index' (a test image) or 'image' (a data URL)")
        size = (self.shape[1], self.shape[2])
        u8 = read_data_url(body["image"], size, self.shape[0], background_rgb(self.ex.cfg.data.background))
        x = torch.tensor(u8).float().div(255)[None].to(self.ex.x.device)
        if self.conditional and body.get("class") is None and self.labelled_conditions:
            raise BadRequest("this conditional model needs the 'class' of an uploaded image")
        return x, self._conditions(body.get("class"), 1), None

    @torch.no_grad()
    def encode(self, body: dict[str, Any]) -> dict[str, Any]:
        """Posterior mean and spread of an image, its reconstruction, a posterior sample
        (seeded by 'seed') and where they lie on the map."""
        x, c, index = self._image(body)
        seed = _integer(body.get("seed", 0), "seed", 0, 2**31 - 1)
        view = self.map(body.get("dims"))
        origin, axes = torch.tensor(view["origin"]), torch.tensor(view["axes"])
        g = torch.Generator(device=x.device).manual_seed(seed)
        with self.lock:
            q = self.model.encode(x, c)
            mean = q.mean[0]
            draws = q.rsample(64, generator=g)[:, 0]  # (64, D): the spread, also for flows
            z = draws[0]
            decoded = self.model.decode(torch.stack([mean, z]), None if c is None else c.expand(2, -1)).mean
        spread_xy = ((draws - draws.mean(0)) @ axes.T).std(0) if self.model.has_density else torch.zeros(2)
        std = getattr(q, "std", None)
        std = std[0] if std is not None else draws.std(0) if self.model.has_density else torch.zeros(self.dim)
        return {"index": index, "input": png_data_url(x[0]), "mean": mean.tolist(), "std": std.tolist(),
                "xy": ((mean - origin) @ axes.T).tolist(), "spread_xy": spread_xy.tolist(),
                "recon": png_data_url(decoded[0]), "sample": png_data_url(decoded[1]), "sample_z": z.tolist(),
                "sample_xy": ((z - origin) @ axes.T).tolist(), "seed": seed}

    def gallery(self) -> dict[str, Any]:
        """The first test images (as the model sees them) with their labels."""
        n = self.n_gallery
        names = [self.ex.classes[int(k)] if 0 <= int(k) < self.n_classes else "" for k in self.ex.labels[:n]]
        return {"images": [png_data_url(im) for im in self.ex.x[:n]], "labels": names}

    @torch.no_grad()
    def interpolate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Decode the path from code a to code b at fractions t, straight or spherical."""
        a, b = _codes(body.get("a"), self.dim, "a"), _codes(body.get("b"), self.dim, "b")
        if len(a) != 1 or len(b) != 1:
            raise BadRequest("a and b must each be one code")
        ts = body.get("t", 0.5)
        ts = ts if isinstance(ts, list) else [ts]
        if not 1 <= len(ts) <= 64:
            raise BadRequest("t must be a fraction or a list of 1 to 64 fractions")
        t = torch.tensor([_number(v, "t", 0, 1) for v in ts])
        mode = _choice(body.get("mode", "linear"), "mode", ("linear", "spherical"))
        z = a + t[:, None] * (b - a) if mode == "linear" else slerp(a[0], b[0], t)
        return {"images": self.decode_many([(z, self._conditions(body.get("class"), len(z)))])[0],
                "z": z.tolist()}

    @torch.no_grad()
    def noise(self, body: dict[str, Any]) -> dict[str, Any]:
        """The noise-removal experiment: clean | noisy | reconstruction of the noisy image, with PSNRs."""
        x, c, _ = self._image(body)
        kind = _choice(body.get("kind", "salt-pepper"), "kind", NOISE_KINDS)
        level = _number(body.get("level", 0.2), "level", 0, 1)
        seed = _integer(body.get("seed", 0), "seed", 0, 2**31 - 1)
        noisy = add_noise(x, kind, level, torch.Generator(device=x.device).manual_seed(seed))
        with self.lock:
            recon = self.model.decode(self.model.encode(noisy, c).mean, c).mean
        mse = lambda y: (y - x).square().mean()  # noqa: E731
        return {"clean": png_data_url(x[0]), "noisy": png_data_url(noisy[0]), "recon": png_data_url(recon[0]),
                "psnr_noisy": float(psnr(mse(noisy))), "psnr_recon": float(psnr(mse(recon)))}

    def classes(self, body: dict[str, Any]) -> dict[str, Any]:
        """One code decoded under every class (conditional models with class labels)."""
        if not self.labelled_conditions:
            raise BadRequest("this model is not conditioned on class labels")
        z = _codes(body.get("z"), self.dim)
        if len(z) != 1:
            raise BadRequest("z must be one code")
        eye = torch.eye(self.n_classes, device=self.ex.x.device)
        images = self.decode_many([(z.expand(self.n_classes, -1), eye)])[0]
        return {"images": images, "classes": list(self.ex.classes)}

    @torch.no_grad()
    def prior(self, body: dict[str, Any]) -> dict[str, Any]:
        """Decoder means of n codes drawn from the prior (seeded), its standard deviation times
        ``"temperature"`` (0 to 2, default 1: the N(0, I) prior, or every level of a ladder
        model; ``explore.prior_codes``). The same seed draws the same noise at every temperature."""
        n = _integer(body.get("n", 16), "n", 1, 256)
        seed = _integer(body.get("seed", 0), "seed", 0, 2**31 - 1)
        temperature = _number(body.get("temperature", 1.0), "temperature", 0, 2)
        if temperature != 1.0 and self.no_temperature:
            raise BadRequest(f"{self.no_temperature}: leave out temperature")
        g = torch.Generator(device=self.ex.x.device).manual_seed(seed)
        with self.lock:  # a VampPrior runs the encoder on its pseudo-inputs
            z = prior_codes(self.model, n, temperature, g)
        return {"images": self.decode_many([(z, self._conditions(body.get("class"), n))])[0], "z": z.tolist()}

    @torch.no_grad()
    def resample(self, body: dict[str, Any]) -> dict[str, Any]:
        """A ladder model's image with some levels redrawn from the prior: ``"k"`` in 0..L and
        ``"redraw"``: ``"below"`` redraws levels 1..k (the detail next to the data, default) and
        keeps the rest, ``"above"`` keeps levels 1..k and redraws k+1..L. Kept levels are the
        image's posterior means given what was drawn above them (``explore.resample_levels``);
        ``"n"`` draws (default 6), seeded by ``"seed"``, at ``"temperature"`` (default 1)."""
        if self.levels() is None:
            raise BadRequest("this model has one level of latents; resampling levels needs a run trained with "
                             "--model ladder")
        x, _, index = self._image(body)
        depth = len(self.model.sizes)
        k = _integer(body.get("k", 1), "k", 0, depth)
        redraw = _choice(body.get("redraw", "below"), "redraw", ("below", "above"))
        n = _integer(body.get("n", 6), "n", 1, 32)
        seed = _integer(body.get("seed", 0), "seed", 0, 2**31 - 1)
        temperature = _number(body.get("temperature", 1.0), "temperature", 0, 2)
        keep = tuple(range(k + 1, depth + 1)) if redraw == "below" else tuple(range(1, k + 1))
        g = torch.Generator(device=x.device).manual_seed(seed)
        with self.lock:
            recon = resample_levels(self.model, x, tuple(range(1, depth + 1)))[0, 0]
            images = resample_levels(self.model, x, keep, n, g, temperature)[:, 0]
        return {"index": index, "input": png_data_url(x[0]), "recon": png_data_url(recon),
                "images": [png_data_url(im) for im in images], "kept": list(keep),
                "redrawn": [level for level in range(1, depth + 1) if level not in keep], "k": k, "redraw": redraw}

    # -- typical and unusual images -------------------------------------------

    def _score_name(self, value: Any) -> str:
        if value in (None, ""):
            return self.default_score
        if value not in self.score_columns:
            raise BadRequest(f"unknown score {value!r:.40}; this model has {', '.join(self.score_columns)}")
        return value

    def _seen_u8(self, x: torch.Tensor) -> np.ndarray:
        """uint8 images as the model sees them (binarised as 0/255, dequantised to their grey level)."""
        u8 = (x * 256).floor() if self.dequantized else (x * 255).round()
        return u8.clamp(0, 255).to(torch.uint8).cpu().numpy()

    def _picture(self, i: int) -> str:
        """Test image i as a PNG data URL of its grey levels (a dequantised image: before its noise)."""
        if not self.dequantized:
            return png_data_url(self.ex.x[i])
        return png_data_url(torch.from_numpy(self._seen_u8(self.ex.x[i : i + 1]))[0].float() / 255)

    def _score_rows(self, x: torch.Tensor, c: torch.Tensor | None, idx: torch.Tensor,
                    columns: list[str]) -> dict[str, np.ndarray]:
        """Score `columns` of images x (as the model sees them), noise keyed by idx."""
        batch = ScoreContext(self.model, x, idx, c, SCORE_K, 0, self.skip, self.shift, seen=lambda: self._seen_u8(x))
        with self.lock:
            got = score_batch(batch, list(dict.fromkeys(score_of(key) for key in columns)))
        return {key: got[key].double().cpu().numpy() for key in columns}

    def test_scores(self, column: str | None = None) -> dict[str, np.ndarray]:
        """The score columns of the session's test images, computed once (SCORE_K importance
        samples each, noise keyed by the image's index, as `vaelab score` does) in chunks;
        the model lock is let go between chunks, so other requests are answered meanwhile.
        A costly score (the complexity-corrected one compresses every image) waits until asked for."""
        with self.score_lock:
            wanted = [c for c in self.score_columns if not direction(c).costly or column == c]
            missing = [c for c in wanted if c not in self._scores]
            if missing:
                x_all, n = self.ex.x, len(self.ex.x)
                rows = decode_rows(math.prod(self.shape))
                batch = max(1, min(256, rows // min(SCORE_K, rows))) if self.model.has_density else 256
                parts: dict[str, list[np.ndarray]] = {c: [] for c in missing}
                for i in range(0, n, batch):
                    j = min(n, i + batch)
                    c = None if self.ex.c is None else self.ex.c[i:j]
                    got = self._score_rows(x_all[i:j], c, torch.arange(i, j, device=x_all.device), missing)
                    for key, v in got.items():
                        parts[key].append(v)
                self._scores.update({key: np.concatenate(v) if v else np.empty(0) for key, v in parts.items()})
            return self._scores

    def _score_info(self, column: str) -> dict[str, Any]:
        return {"score": column, "label": label(column), "help": direction(column).help,
                "typical_high": direction(column).typical_high, "k": SCORE_K, "n_test": len(self.ex.x)}

    def ranking(self, query: dict[str, Any]) -> dict[str, Any]:
        """The n most typical and n most unusual test images by a score (the model's default:
        LLR>1 for hierarchical models, else log p(x), else the reconstruction error)."""
        column = self._score_name(query.get("score"))
        n = _query_int(query.get("n"), "n", 1, min(MAX_RANK, len(self.ex.x)), 12)
        values = self.test_scores(column)[column]
        order = np.argsort(anomaly(column, values), kind="stable")  # most typical first

        def rows(indices) -> list[dict[str, Any]]:
            return [{"index": int(i), "value": _json_float(values[i]), "image": self._picture(int(i))}
                    for i in indices]

        return {**self._score_info(column), "typical": rows(order[:n]), "unusual": rows(order[::-1][:n]),
                "names": list(self.score_columns)}

    def _as_test_image(self, x: torch.Tensor) -> torch.Tensor:
        """An uploaded image (grey levels in [0, 1]) as the model sees its test images:
        binarised or dequantised with the test set's fixed noise (that of test image 0)."""
        cfg = self.ex.cfg.data
        binarization = "fixed" if cfg.binarization == "dynamic" else cfg.binarization
        u8 = (x * 255).round().to(torch.uint8)
        first = torch.zeros(1, dtype=torch.long, device=x.device)
        return as_input(u8, Feed(binarization, self.dequantized), idx=first, key=binarization_key(cfg.binarization_seed, TEST_KEY))

    def score(self, body: dict[str, Any]) -> dict[str, Any]:
        """An image's score ('score', default as for the ranking) and where it lies among the
        test images: `percentile`, the share of them (%) more typical than it."""
        column = self._score_name(body.get("score"))
        x, c, index = self._image(body)
        values = self.test_scores(column)[column]
        if index is not None and (body.get("class") is None or not self.labelled_conditions):
            value = float(values[index])  # a test image under its own condition: the ranked value
        else:
            if index is None:
                x = self._as_test_image(x)
            idx = torch.zeros(1, dtype=torch.long, device=x.device)
            value = float(self._score_rows(x, c, idx, [column])[column][0])
        info = self._score_info(column)
        if not math.isfinite(value):
            return {**info, "index": index, "value": None, "percentile": None,
                    "text": f"{info['label']} of this image is not a finite number"}
        share = float(np.mean(anomaly(column, values) < anomaly(column, np.float64(value)))) * 100
        shown = f"{share:.1f}" if 0 < share < 1 or 99 < share < 100 else f"{share:.0f}"
        text = (f"{info['label']} = {value:.4g}, {'lower' if info['typical_high'] else 'higher'} than "
                f"{shown}% of the {len(values)} test images")
        if share == 0:
            text = f"{info['label']} = {value:.4g}, as typical as the most typical of the {len(values)} test images"
        return {**info, "index": index, "value": value, "percentile": share, "text": text}


# ----------------------------------------------------------------------------- batching


class DecodeBatcher:
    """Runs the decode requests waiting at the same moment as one batch, in a worker
    thread: while one batch decodes, the next gathers, so no request waits on a timer."""

    def __init__(self, session: Session, max_codes: int = MAX_CODES) -> None:
        self.session, self.max_codes = session, max_codes
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.batches = 0

    async def __call__(self, z: torch.Tensor, c: torch.Tensor | None) -> list[str]:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._run())
        done = asyncio.get_running_loop().create_future()
        await self.queue.put(((z, c), done))
        return await done

    async def _run(self) -> None:
        from starlette.concurrency import run_in_threadpool

        while True:
            items = [await self.queue.get()]
            codes = len(items[0][0][0])
            while not self.queue.empty() and codes < self.max_codes:
                items.append(self.queue.get_nowait())
                codes += len(items[-1][0][0])
            self.batches += 1
            rebalance_threads()  # busy now: counted by other vaelab processes, and its share re-counted
            try:
                results = await run_in_threadpool(self.session.decode_many, [req for req, _ in items])
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                for _, done in items:
                    if not done.done():
                        done.set_exception(e)
                continue
            for (_, done), images in zip(items, results):
                if not done.done():
                    done.set_result(images)


# ----------------------------------------------------------------------------- the web app


MAX_MAPS = 16  # latent maps kept per session (each holds a projection of every test code)
MAX_DEPTH, MAX_DIGITS = 16, 30  # JSON bodies: nesting and digits of an integer


def _json_depth(raw: bytes) -> int:
    """The deepest nesting of [ and { in a JSON text, strings skipped (a linear scan)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 0x5C, byte != 0x22)
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise BadRequest(f"a number with more than {MAX_DIGITS} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"a number out of range: {text[:20]}")
    return value


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, refusing what no page sends: nesting deeper than MAX_DEPTH,
    integers of more than MAX_DIGITS digits, infinite or NaN numbers (each a 400)."""
    if _json_depth(raw) > MAX_DEPTH:
        raise BadRequest(f"the body is nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw, parse_int=_bounded_int, parse_float=_finite_float,
                          parse_constant=lambda name: _finite_float(name))
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"the body is not JSON ({str(e)[:80]})") from None


async def body_of(request) -> dict[str, Any]:
    """A request's JSON body, within MAX_BODY bytes and parse_json's limits (400/413 otherwise)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise TooLarge(f"request body over {MAX_BODY >> 20} MiB")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise TooLarge(f"request body over {MAX_BODY >> 20} MiB")
    body = parse_json(raw or b"{}")
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def make_app(session: Session):
    """The web app of the explorer page for a session: the page and its JSON API.

    A Starlette app (the ``serve`` extra: ``pip install "vaelab[serve]"``) that any ASGI
    server can run; [serve][vaelab.serve.serve] runs it with uvicorn. ``GET /`` is the page;
    the API answers JSON: ``GET /api/info``, ``/api/map?dims=``, ``/api/gallery``,
    ``/api/ranking?score=&n=``, and ``POST /api/decode``, ``/api/encode``,
    ``/api/interpolate``, ``/api/noise``, ``/api/classes``, ``/api/prior``, ``/api/score``,
    ``/api/resample`` (a ladder model's levels redrawn), each the
    [Session][vaelab.serve.Session] method of that name. A bad request is answered
    with status 400 (413 for a body over 8 MiB) and ``{"error": message}``. Decode requests
    that arrive together are decoded as one batch.

    Args:
        session: the session whose model the app serves.

    Returns:
        The Starlette app.

    Examples:
        >>> from starlette.testclient import TestClient
        >>> from vaelab.serve import Session, make_app
        >>> app = make_app(Session.from_run(run.path, n=100))
        >>> with TestClient(app) as client:
        ...     ok = client.post("/api/decode", json={"z": [[0.0, 0.0], [0.5, 0.5]]})
        ...     bad = client.get("/api/map", params={"dims": "0,5"})
        >>> ok.status_code, len(ok.json()["images"])
        (200, 2)
        >>> bad.status_code, bad.json()["error"]
        (400, 'dims must be two different dimensions in [0, 1], got 0,5')
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    batcher = DecodeBatcher(session)

    def endpoint(method):
        async def handle(request: Request):
            rebalance_threads()
            try:
                if request.method == "GET":
                    result = await run_in_threadpool(method, dict(request.query_params))
                else:
                    result = await run_in_threadpool(method, await body_of(request))
            except BadRequest as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            return JSONResponse(result)

        return handle

    async def decode(request: Request):
        try:
            z, c = session.decode_request(await body_of(request))
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        return JSONResponse({"images": await batcher(z, c)})

    async def index(request: Request):
        return FileResponse(WEB / "index.html", media_type="text/html")

    async def failed(request: Request, exc: Exception):  # a bug, not a user error: still one line
        print(f"vaelab serve: error answering {request.url.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return JSONResponse({"error": f"the server could not answer ({type(exc).__name__}); see its log"},
                            status_code=500)

    routes = [
        Route("/", index),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/info", endpoint(lambda q: session.info())),
        Route("/api/map", endpoint(lambda q: session.map(q.get("dims")))),
        Route("/api/gallery", endpoint(lambda q: session.gallery())),
        Route("/api/decode", decode, methods=["POST"]),
        Route("/api/encode", endpoint(session.encode), methods=["POST"]),
        Route("/api/interpolate", endpoint(session.interpolate), methods=["POST"]),
        Route("/api/noise", endpoint(session.noise), methods=["POST"]),
        Route("/api/classes", endpoint(session.classes), methods=["POST"]),
        Route("/api/prior", endpoint(session.prior), methods=["POST"]),
        Route("/api/ranking", endpoint(session.ranking)),
        Route("/api/score", endpoint(session.score), methods=["POST"]),
        Route("/api/resample", endpoint(session.resample), methods=["POST"]),
        Mount("/static", StaticFiles(directory=WEB), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: failed})
    app.state.batcher = batcher
    return app


def is_local(host: str) -> bool:
    """Whether `host` is only reachable from this machine (localhost or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket; a taken port or unknown host is one clear error."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise OSError(f"cannot serve on host {host!r}: not an address of this machine") from None
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say
    # they are TCP, and with Nagle on every answer waits ~40 ms for the client's delayed ACK
    sock = socket.socket(info[0], socket.SOCK_STREAM, info[2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
    except OSError as e:
        sock.close()
        why = "is in use" if e.errno in (98, 48) else f"cannot be used ({e.strerror})"
        raise OSError(f"port {port} on {host} {why}; choose another with --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", n: int = 2000,
          ready=None) -> None:
    """Serve the explorer page of a run in the browser until interrupted; ``vaelab serve RUN``.

    Blocks: call it from a script or a terminal, and stop it with Ctrl-C. The page has no
    login, so serving on an address other than this machine's own (the default
    ``127.0.0.1``) lets anyone who can reach the machine use it; a warning says so. Needs the
    ``serve`` extra (``pip install "vaelab[serve]"``). To serve the page from another ASGI
    server, or to test it, build the app with [make_app][vaelab.serve.make_app].

    Args:
        run_dir: the run folder.
        host: the address to listen on.
        port: the port to listen on; 0 picks a free one.
        device: where the model runs (``"cpu"``, ``"cuda"``).
        n: how many test images the page maps, ranks and shows.
        ready: called with the page's address (``"http://127.0.0.1:8000/"``) once it can be
            loaded.

    Raises:
        OSError: the port is taken or the host is not an address of this machine; nothing
            has been loaded yet.
        RunError: the folder holds no readable run.

    Examples:
        From a script (this blocks):

            serve("runs/mnist-vae", port=8000, ready=print)   # then open http://127.0.0.1:8000/

        A port that is taken is one clear error, raised before the model is loaded:

        >>> import socket
        >>> from vaelab.serve import serve
        >>> with socket.socket() as taken:
        ...     taken.bind(("127.0.0.1", 0))
        ...     taken.listen()
        ...     serve(run.path, port=taken.getsockname()[1])
        Traceback (most recent call last):
        ...
        OSError: port ... on 127.0.0.1 is in use; choose another with --port
    """
    import uvicorn

    if not is_local(host):
        print(f"warning: serving on {host}: anyone who can reach this machine can use the page "
              "(there is no login); use the default 127.0.0.1 to keep it local", file=sys.stderr)
    sock = listen(host, port)
    session = Session.from_run(run_dir, n=n, device=device)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(session), log_level="warning", lifespan="off"))
    if ready is not None:  # the socket already listens: the page can be requested now
        ready(f"http://{f'[{host}]' if ':' in host else host}:{bound}/")
    server.run(sockets=[sock])
