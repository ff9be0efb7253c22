// vaelab explorer: the page's side. All model work happens on the server (vaelab/serve.py);
// this file draws the map, sends JSON requests and shows the images that come back.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                 "#e6550d", "#31a354", "#756bb1", "#636363"];
const $ = (id) => document.getElementById(id);

const state = {
  info: null, map: null,
  kept: null,          // the kept code (clicked on the map, encoded, or moved by the sliders)
  hover: null,         // the code under the mouse
  encoded: null,       // the last encode response
  source: null,        // what the current image is: {index} or {image}
  seed: 0, priorSeed: 0, levelsSeed: 0,
  rankScore: null,     // the score the test images are ranked by
  a: null, b: null,
};

// ---------------------------------------------------------------- requests

function setStatus(text) { $("status").textContent = text || ""; }

async function api(path, body) {
  const options = body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

// One request per target in flight; while it runs only the newest wish is kept, so a
// fast mouse never queues up stale decodes.
function latestOnly(send) {
  let running = false, pending = null;
  async function pump() {
    running = true;
    while (pending) {
      const args = pending; pending = null;
      try { await send(...args); setStatus(""); } catch (e) { setStatus(e.message); }
    }
    running = false;
  }
  return (...args) => { pending = args; if (!running) pump(); };
}

function classBody() {
  if (!state.info.class_selector) return {};
  return {"class": Number($("cls").value)};
}

// A test image is encoded with its own class; a drawn or uploaded one with the selected class.
function sourceBody(source) { return source.index === undefined ? {...source, ...classBody()} : {...source}; }

// ---------------------------------------------------------------- the map

function toPixel(x, y) {
  const [x0, x1, y0, y1] = state.map.extent, c = $("map");
  return [(x - x0) / (x1 - x0) * c.width, (1 - (y - y0) / (y1 - y0)) * c.height];
}

function fromPixel(px, py) {
  const [x0, x1, y0, y1] = state.map.extent, c = $("map");
  return [x0 + px / c.width * (x1 - x0), y0 + (1 - py / c.height) * (y1 - y0)];
}

function codeAt(x, y) {  // a point of the map -> a code: origin + x axes[0] + y axes[1]
  const m = state.map;
  return m.origin.map((o, d) => o + x * m.axes[0][d] + y * m.axes[1][d]);
}

function project(z) {
  const m = state.map;
  let x = 0, y = 0;
  for (let d = 0; d < z.length; d++) {
    x += (z[d] - m.origin[d]) * m.axes[0][d];
    y += (z[d] - m.origin[d]) * m.axes[1][d];
  }
  return [x, y];
}

let background = null;

function drawPoints() {
  const c = $("map"), ctx = c.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, c.width, c.height);
  const labels = state.map.labels;
  state.map.points.forEach(([x, y], i) => {
    const [px, py] = toPixel(x, y);
    ctx.fillStyle = labels[i] >= 0 ? PALETTE[labels[i] % PALETTE.length] : "#1f77b4";
    ctx.globalAlpha = 0.55;
    ctx.fillRect(px - 1.5, py - 1.5, 3, 3);
  });
  ctx.globalAlpha = 1;
  background = ctx.getImageData(0, 0, c.width, c.height);
  c.dataset.points = String(state.map.points.length);
}

function marker(ctx, z, colour, size, label) {
  const [px, py] = toPixel(...project(z));
  ctx.strokeStyle = colour; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.moveTo(px - size, py); ctx.lineTo(px + size, py);
  ctx.moveTo(px, py - size); ctx.lineTo(px, py + size); ctx.stroke();
  if (label) { ctx.fillStyle = colour; ctx.font = "bold 13px sans-serif"; ctx.fillText(label, px + 5, py - 5); }
}

function drawOverlay() {
  if (!background) return;
  const c = $("map"), ctx = c.getContext("2d");
  ctx.putImageData(background, 0, 0);
  const e = state.encoded;
  if (e) {  // the posterior of the current image: its mean, 2-std ellipse and a sample
    const [px, py] = toPixel(...project(e.mean));
    const [x0, x1, y0, y1] = state.map.extent;
    const rx = 2 * e.spread_xy[0] / (x1 - x0) * c.width, ry = 2 * e.spread_xy[1] / (y1 - y0) * c.height;
    ctx.strokeStyle = "#000"; ctx.lineWidth = 1.5;
    ctx.beginPath(); ctx.ellipse(px, py, Math.max(rx, 2), Math.max(ry, 2), 0, 0, 2 * Math.PI); ctx.stroke();
    marker(ctx, e.sample_z, "#555", 4, "");
  }
  if (state.a) marker(ctx, state.a.z, "#2563eb", 6, "A");
  if (state.b) marker(ctx, state.b.z, "#2563eb", 6, "B");
  if (state.kept) marker(ctx, state.kept, "#000", 8, "");
  if (state.hover) marker(ctx, state.hover, "#c2410c", 8, "");
}

const decodeView = latestOnly(async (z, caption) => {
  const r = await api("/api/decode", {z: z, ...classBody()});
  $("decoded").src = r.images[0];
  $("decoded-caption").textContent = caption;
  $("decoded").dataset.count = String(Number($("decoded").dataset.count || 0) + 1);
});

function mapEvent(ev) {
  const c = $("map"), rect = c.getBoundingClientRect();
  return fromPixel((ev.clientX - rect.left) * c.width / rect.width, (ev.clientY - rect.top) * c.height / rect.height);
}

function fmt(v) { return (v >= 0 ? " " : "") + v.toFixed(2); }

function setupMap() {
  const c = $("map");
  c.addEventListener("mousemove", (ev) => {
    const [x, y] = mapEvent(ev);
    state.hover = codeAt(x, y);
    drawOverlay();
    decodeView(state.hover, `map point (${fmt(x)}, ${fmt(y)})`);
  });
  c.addEventListener("mouseleave", () => {
    state.hover = null; drawOverlay();
    if (state.kept) decodeView(state.kept, "kept code");
  });
  c.addEventListener("click", (ev) => {
    const [x, y] = mapEvent(ev);
    keep(codeAt(x, y), `clicked (${fmt(x)}, ${fmt(y)})`);
  });
}

async function loadMap(dims) {
  state.map = await api("/api/map" + (dims ? "?dims=" + encodeURIComponent(dims) : ""));
  $("axis-x").textContent = state.map.axis_names[0];
  $("axis-y").textContent = state.map.axis_names[1];
  drawPoints();
  if (!state.kept) state.kept = codeAt(0, 0);
  keep(state.kept, "kept code");
}

// ---------------------------------------------------------------- the kept code and its sliders

function keep(z, caption) {
  state.kept = z.slice();
  buildSliders();
  drawOverlay();
  decodeView(state.kept, caption);
  showClasses();
}

function buildSliders() {
  const box = $("sliders");
  box.innerHTML = "";
  state.kept.forEach((v, d) => {
    const name = document.createElement("span"); name.textContent = `z[${d}]`;
    const input = document.createElement("input");
    input.type = "range"; input.step = "0.01"; input.id = `slider-${d}`;
    input.min = (v - 3).toFixed(2); input.max = (v + 3).toFixed(2); input.value = v.toFixed(2);
    const value = document.createElement("span"); value.className = "mono"; value.textContent = fmt(v);
    input.addEventListener("input", () => {
      state.kept[d] = Number(input.value);
      value.textContent = fmt(state.kept[d]);
      drawOverlay();
      decodeView(state.kept, `z[${d}] = ${fmt(state.kept[d])}`);
      showClasses();
    });
    box.append(name, input, value);
  });
}

// ---------------------------------------------------------------- images in, codes out

async function encode(source) {
  state.source = source;
  const r = await api("/api/encode", {...sourceBody(source), seed: state.seed, dims: state.map.dims});
  state.encoded = r;
  $("enc-input").src = r.input; $("enc-recon").src = r.recon; $("enc-sample").src = r.sample;
  const n = Math.min(r.mean.length, 8);
  const mean = r.mean.slice(0, n).map(fmt).join(" "), std = r.std.slice(0, n).map((v) => v.toFixed(2)).join(" ");
  const more = r.mean.length > n ? " ..." : "";
  $("enc-text").textContent = `mean [${mean}${more}]   std [${std}${more}]`;
  $("rank-input").src = r.input; $("rank-recon").src = r.recon;
  keep(r.mean, "posterior mean of the image");
  showNoise();
  showScore();
  showLevels();
}

// a test image clicked in the gallery or among the ranked ones is marked; others are not
function choose(img) {
  document.querySelectorAll("#gallery img, .thumbs img").forEach((o) => o.classList.remove("chosen"));
  if (img) img.classList.add("chosen");
}

function setupDrawing() {
  const c = $("draw"), ctx = c.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, c.width, c.height); };
  clear();
  let drawing = false, last = null;
  const at = (ev) => { const r = c.getBoundingClientRect();
    return [(ev.clientX - r.left) * c.width / r.width, (ev.clientY - r.top) * c.height / r.height]; };
  c.addEventListener("pointerdown", (ev) => { drawing = true; last = at(ev); c.setPointerCapture(ev.pointerId); });
  c.addEventListener("pointermove", (ev) => {
    if (!drawing) return;
    const p = at(ev);
    ctx.strokeStyle = "#fff"; ctx.lineCap = "round"; ctx.lineWidth = Number($("brush").value);
    ctx.beginPath(); ctx.moveTo(...last); ctx.lineTo(...p); ctx.stroke();
    last = p;
  });
  const finish = () => {
    if (!drawing) return;
    drawing = false;
    encodeCanvas();
  };
  c.addEventListener("pointerup", finish);
  c.addEventListener("pointercancel", finish);
  $("draw-clear").addEventListener("click", clear);
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => encode({image: reader.result}).catch((e) => setStatus(e.message));
    reader.readAsDataURL(file);
  });
}

function encodeCanvas() {
  // shrink to the model's size with smoothing, as a photo would be
  const [, h, w] = state.info.image_shape, small = document.createElement("canvas");
  small.width = w; small.height = h;
  small.getContext("2d").drawImage($("draw"), 0, 0, w, h);
  choose(null);
  encode({image: small.toDataURL("image/png")}).catch((e) => setStatus(e.message));
}

async function loadGallery() {
  const g = await api("/api/gallery");
  const box = $("gallery");
  g.images.forEach((src, i) => {
    const img = document.createElement("img");
    img.src = src; img.title = g.labels[i] ? `test image ${i} (${g.labels[i]})` : `test image ${i}`;
    img.addEventListener("click", () => {
      choose(img);
      encode({index: i}).catch((e) => setStatus(e.message));
    });
    box.append(img);
  });
}

// ---------------------------------------------------------------- typical and unusual images

function scoreValue(v) { return v === null ? "n/a" : Number(v.toPrecision(4)).toString(); }

function thumbnail(row, label) {
  const f = figure(row.image, scoreValue(row.value));
  const img = f.querySelector("img");
  img.title = `test image ${row.index}: ${label} = ${scoreValue(row.value)}`;
  img.dataset.index = String(row.index);
  img.addEventListener("click", () => {
    choose(img);
    encode({index: row.index}).catch((e) => setStatus(e.message));
  });
  return f;
}

const rankRequest = latestOnly(async (score) => {
  const r = await api(`/api/ranking?score=${encodeURIComponent(score)}&n=12`);
  if (r.score !== state.rankScore) return;  // another score was chosen meanwhile
  const direction = r.typical_high ? "larger is more typical" : "smaller is more typical";
  $("rank-help").textContent = `${r.help} (${direction})`;
  for (const [id, rows] of [["rank-typical", r.typical], ["rank-unusual", r.unusual]]) {
    const strip = $(id);
    strip.innerHTML = "";
    rows.forEach((row) => strip.append(thumbnail(row, r.label)));
  }
  $("rank-panel").dataset.score = r.score;
});

function showRanking() {
  state.rankScore = $("rank-score").value;
  const waiting = `scoring the ${state.info.n_test} test images (the first time only)...`;
  if (!$("rank-typical").children.length) $("rank-typical").textContent = waiting;
  rankRequest(state.rankScore);
  showScore();
}

// the current image's score under the chosen score, and where it lies among the test images
const scoreRequest = latestOnly(async () => {
  if (!state.source || !state.rankScore) return;
  const r = await api("/api/score", {...sourceBody(state.source), score: state.rankScore});
  const text = (r.index === null ? "" : `test image ${r.index}: `) + r.text;
  $("enc-score").textContent = text;
  $("rank-current").textContent = text;
});

function showScore() { scoreRequest(); }

// ---------------------------------------------------------------- interpolation

function setEnd(which) {
  if (!state.encoded) { setStatus("encode an image first (draw, upload or click a test image)"); return; }
  state[which] = {z: state.encoded.mean.slice(), image: state.encoded.input};
  $(`img-${which}`).src = state.encoded.input;
  drawOverlay();
  showInterpolation();
}

function mode() { return document.querySelector("input[name=interp-mode]:checked").value; }

const interpolateOne = latestOnly(async (t) => {
  const r = await api("/api/interpolate", {a: state.a.z, b: state.b.z, t: t, mode: mode(), ...classBody()});
  $("interp-img").src = r.images[0];
  $("interp-caption").textContent = `t = ${t.toFixed(2)} (${mode()})`;
  state.hover = r.z[0]; drawOverlay();
});

async function showInterpolation() {
  if (!state.a || !state.b) return;
  const ts = Array.from({length: 9}, (_, i) => i / 8);
  const r = await api("/api/interpolate", {a: state.a.z, b: state.b.z, t: ts, mode: mode(), ...classBody()});
  const strip = $("interp-strip");
  strip.innerHTML = "";
  r.images.forEach((src, i) => strip.append(figure(src, ts[i].toFixed(2))));
  interpolateOne(Number($("interp-t").value));
}

function figure(src, caption) {
  const f = document.createElement("figure"), img = document.createElement("img"), cap = document.createElement("figcaption");
  img.src = src; cap.textContent = caption; f.append(img, cap);
  return f;
}

// ---------------------------------------------------------------- noise, classes, prior

const noiseRequest = latestOnly(async () => {
  if (!state.source) return;
  const level = Number($("noise-level").value);
  const r = await api("/api/noise", {...sourceBody(state.source), kind: $("noise-kind").value, level: level,
                                     seed: state.seed});
  $("noise-clean").src = r.clean; $("noise-noisy").src = r.noisy; $("noise-recon").src = r.recon;
  $("noise-noisy-caption").textContent = `noisy: ${r.psnr_noisy.toFixed(1)} dB`;
  $("noise-recon-caption").textContent = `reconstruction: ${r.psnr_recon.toFixed(1)} dB`;
});

function showNoise() {
  $("noise-level-text").textContent = Number($("noise-level").value).toFixed(2);
  noiseRequest();
}

const classesRequest = latestOnly(async (z) => {
  const r = await api("/api/classes", {z: z});
  const strip = $("classes-strip");
  strip.innerHTML = "";
  r.images.forEach((src, i) => strip.append(figure(src, r.classes[i])));
});

function showClasses() { if (state.info.class_selector && state.kept) classesRequest(state.kept.slice()); }

async function showPrior(seed) {
  const temperature = state.info.prior_temperature ? Number($("prior-t").value) : 1;
  const r = await api("/api/prior", {n: 16, seed: seed, temperature: temperature, ...classBody()});
  const grid = $("prior-grid");
  grid.innerHTML = "";
  r.images.forEach((src) => grid.append(figure(src, "")));
  $("prior-text").textContent = state.info.prior_temperature ? `the prior's standard deviation times ` +
    `${temperature.toFixed(2)}; the slider cools or warms these same draws` : "";
  $("prior-panel").dataset.shown = `${seed},${temperature}`;
}

// the same seed at another temperature: the same noise, nearer the prior's centre or further out
const coolRequest = latestOnly(showPrior);

async function drawPrior() { state.priorShown = state.priorSeed++; await showPrior(state.priorShown); }

function coolPrior() {
  $("prior-t-text").textContent = Number($("prior-t").value).toFixed(2);
  if (state.priorShown !== undefined) coolRequest(state.priorShown);
}

// ---------------------------------------------------------------- levels of a hierarchical model

function levelNames(levels) {
  return levels.length ? levels.map((l) => `${l} (${state.info.levels[l - 1].join("x")})`).join(", ") : "none";
}

const levelsRequest = latestOnly(async () => {
  if (!state.source || !state.info.levels) return;
  const body = {...sourceBody(state.source), k: Number($("levels-k").value), redraw: $("levels-redraw").value,
                temperature: Number($("levels-t").value), n: 6, seed: state.levelsSeed};
  const r = await api("/api/resample", body);
  $("levels-input").src = r.input; $("levels-recon").src = r.recon;
  const strip = $("levels-strip");
  strip.innerHTML = "";
  r.images.forEach((src, i) => strip.append(figure(src, `draw ${i + 1}`)));
  $("levels-text").textContent = `kept: ${levelNames(r.kept)}; redrawn from the prior: ${levelNames(r.redrawn)}`;
  $("levels-panel").dataset.shown = `${r.k},${r.redraw}`;
});

function showLevels() {
  if (!state.info.levels) return;
  $("levels-k-text").textContent = $("levels-k").value;
  $("levels-t-text").textContent = Number($("levels-t").value).toFixed(2);
  levelsRequest();
}

// ---------------------------------------------------------------- start
// ---------------------------------------------------------------- start

async function start() {
  const info = state.info = await api("/api/info");
  const shape = info.image_shape.join("x");
  $("about").textContent = `${info.run}: ${info.model} (${info.net}, ${info.likelihood}) on ${info.dataset}, ` +
    `${shape} images, ${info.latent_dim}-D latent`;
  const dims = $("dims");
  const views = info.latent_dim > 2 ? [["pca", "PCA of the codes"], ["custom", "two chosen dims"]] :
    info.latent_dim === 2 ? [["0,1", "z[0], z[1]"]] : [["0", "z[0]"]];
  views.forEach(([v, t]) => dims.add(new Option(t, v)));
  $("dims-custom-label").hidden = info.latent_dim <= 2;
  $("dims-custom").value = "0,1";
  const changeView = () => {
    const v = dims.value === "custom" ? $("dims-custom").value : dims.value;
    loadMap(v).then(() => { if (state.source) encode(state.source); }).catch((e) => setStatus(e.message));
  };
  dims.addEventListener("change", changeView);
  $("dims-custom").addEventListener("change", () => { dims.value = "custom"; changeView(); });
  info.classes.forEach((name, i) => {
    const entry = document.createElement("span");
    entry.style.setProperty("--c", PALETTE[i % PALETTE.length]);
    entry.textContent = name;
    $("legend").append(entry);
  });
  $("class-row").hidden = !info.class_selector;
  $("classes-panel").hidden = !info.class_selector;
  info.classes.forEach((name, i) => $("cls").add(new Option(name, String(i))));
  $("cls").addEventListener("change", () => {
    decodeView(state.hover || state.kept, "kept code");
    if (state.source) encode(state.source).catch((e) => setStatus(e.message));
  });
  info.noise_kinds.forEach((k) => $("noise-kind").add(new Option(k, k)));
  $("noise-kind").addEventListener("change", showNoise);
  $("noise-level").addEventListener("input", showNoise);
  $("resample").addEventListener("click", () => {
    state.seed++;
    if (state.source) encode(state.source).catch((e) => setStatus(e.message));
  });
  $("set-a").addEventListener("click", () => setEnd("a"));
  $("set-b").addEventListener("click", () => setEnd("b"));
  $("interp-t").addEventListener("input", () => { if (state.a && state.b) interpolateOne(Number($("interp-t").value)); });
  document.querySelectorAll("input[name=interp-mode]").forEach((r) => r.addEventListener("change", showInterpolation));
  $("prior-button").addEventListener("click", () => drawPrior().catch((e) => setStatus(e.message)));
  if (!info.has_prior) $("prior-button").textContent = "decode 16 codes from N(0, I) (an AE has no prior)";
  $("prior-t-row").hidden = !info.prior_temperature;  // an AE, a mixture or a layered prior takes none
  $("prior-t").addEventListener("input", coolPrior);
  if (info.levels) {
    $("levels-panel").hidden = false;
    $("levels-k").max = String(info.levels.length);
    ["levels-k", "levels-t"].forEach((id) => $(id).addEventListener("input", showLevels));
    $("levels-redraw").addEventListener("change", showLevels);
    $("levels-again").addEventListener("click", () => { state.levelsSeed++; showLevels(); });
  }
  $("rank-k").textContent = String(info.score_k);
  info.scores.forEach((name) => $("rank-score").add(new Option(info.score_labels[name], name)));
  $("rank-score").value = info.default_score;
  $("rank-score").addEventListener("change", showRanking);
  setupMap();
  setupDrawing();
  await loadMap(views[0][0] === "custom" ? "0,1" : views[0][0]);
  await loadGallery();
  // the first view shows a test image at work, not empty frames: the first one is encoded
  const first = document.querySelector("#gallery img");
  if (first) {
    first.classList.add("chosen");
    await encode({index: 0}).catch((e) => setStatus(e.message));
  }
  await drawPrior();
  showRanking();
  document.body.dataset.ready = "1";
}

start().catch((e) => setStatus("could not start: " + e.message));
