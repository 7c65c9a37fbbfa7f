// The annotator page: the image list, the canvas with the mask / heat-map overlay, clicks, keys.
// It talks to the JSON API of laplace_head/annotate/server.py; no build step, no libraries.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const MASK_RGB = [40, 110, 255];
const els = (id) => document.getElementById(id);
const canvas = els("canvas");
const ctx = canvas.getContext("2d");

const page = {
  images: [],        // the listed images (summaries)
  current: null,     // id of the open image
  state: null,       // the open image's state from the server
  picture: null,     // its decoded image (ImageBitmap)
  maskLayer: null,   // canvas: coloured mask at image size
  maskOutline: null, // canvas: its outline only (drawn over a heat map)
  heatLayers: {},    // name -> canvas: coloured 256-grid heat map
  heat: "none",
  scale: 1,
  version: 0,        // counts overlays drawn (the browser test waits on it)
  info: null,        // /api/info
};

// --- HTTP -------------------------------------------------------------------------------------

async function api(path, body) {
  const headers = {};
  if (TOKEN) headers["X-Laplace-Head-Token"] = TOKEN;
  const init = { headers };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.headers.get("content-type")?.startsWith("image/")) {
    if (!response.ok) throw { status: response.status, error: await response.text() };
    return response.blob();
  }
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw { status: response.status, error: data.error || response.statusText };
  return data;
}

const imagePath = (id, what) => `/api/images/${encodeURIComponent(id)}/${what}`;

function say(text, ok = false) {
  els("message").textContent = text;
  els("message").className = ok ? "ok" : "";
}

// --- colour maps ------------------------------------------------------------------------------

// viridis, 6 stops, linearly interpolated into a 256-entry table
const STOPS = [[68, 1, 84], [65, 68, 135], [42, 120, 142], [34, 168, 132], [122, 209, 81], [253, 231, 37]];
const LUT = Array.from({ length: 256 }, (_, i) => {
  const t = (i / 255) * (STOPS.length - 1);
  const k = Math.min(Math.floor(t), STOPS.length - 2);
  const f = t - k;
  return STOPS[k].map((c, j) => Math.round(c + f * (STOPS[k + 1][j] - c)));
});

function decodePng(base64) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = reject;
    img.src = "data:image/png;base64," + base64;
  });
}

function layerFrom(img, paint) {
  const layer = document.createElement("canvas");
  layer.width = img.width;
  layer.height = img.height;
  const g = layer.getContext("2d");
  g.drawImage(img, 0, 0);
  const pixels = g.getImageData(0, 0, img.width, img.height);
  paint(pixels.data, img.width, img.height);
  g.putImageData(pixels, 0, 0);
  return layer;
}

const paintMask = (fill) => (data, w, h) => {
  const inside = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) inside[i] = data[4 * i] > 127 ? 1 : 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      const edge = inside[i] && (x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        !inside[i - 1] || !inside[i + 1] || !inside[i - w] || !inside[i + w]);
      data[4 * i] = MASK_RGB[0];
      data[4 * i + 1] = MASK_RGB[1];
      data[4 * i + 2] = MASK_RGB[2];
      data[4 * i + 3] = inside[i] ? (edge ? 220 : fill) : 0;
    }
  }
};

function paintHeat(data, w, h) {
  for (let i = 0; i < w * h; i++) {
    const [r, g, b] = LUT[data[4 * i]];
    data[4 * i] = r;
    data[4 * i + 1] = g;
    data[4 * i + 2] = b;
    data[4 * i + 3] = 170;
  }
}

async function heatLayer(name) {
  // the shown heat map only, built on first use: the others cost nothing per click
  const heat = page.state?.overlay?.heat?.[name];
  if (heat && !page.heatLayers[name]) {
    page.heatLayers[name] = layerFrom(await decodePng(heat.png), paintHeat);
  }
}

function drawLegend() {
  const bar = els("legend-bar").getContext("2d");
  for (let i = 0; i < 256; i++) {
    bar.fillStyle = `rgb(${LUT[i].join(",")})`;
    bar.fillRect(i, 0, 1, 12);
  }
}

// --- drawing ----------------------------------------------------------------------------------

function fitCanvas() {
  if (!page.picture) return;
  const stage = els("stage");
  const w = page.picture.width, h = page.picture.height;
  page.scale = Math.max(0.05, Math.min((stage.clientWidth - 4) / w, (stage.clientHeight - 4) / h));
  canvas.width = Math.round(w * page.scale);
  canvas.height = Math.round(h * page.scale);
}

function toCanvas(x, y) {
  // (x, y) image pixels, pixel centres at integers -> canvas pixels
  return [(x + 0.5) * page.scale, (y + 0.5) * page.scale];
}

function marker(x, y, label, suggested) {
  const [cx, cy] = toCanvas(x, y);
  ctx.lineWidth = 2;
  if (suggested) {
    ctx.lineWidth = 4;
    ctx.strokeStyle = "#000";
    ctx.beginPath();
    ctx.arc(cx, cy, 12, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.lineWidth = 2;
    ctx.strokeStyle = label ? "#2fd35a" : "#ff4a4a";
    ctx.setLineDash([5, 3]);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.font = "bold 18px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#000";
    ctx.strokeText(label ? "+" : "\u2212", cx, cy);
    ctx.fillStyle = label ? "#2fd35a" : "#ff4a4a";
    ctx.fillText(label ? "+" : "\u2212", cx, cy);
    ctx.font = "bold 12px system-ui, sans-serif";
    ctx.textAlign = "left";
    const text = `next: ${label ? "positive" : "negative"} (space)`;
    ctx.strokeText(text, cx + 16, cy - 14);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, cx + 16, cy - 14);
    return;
  }
  ctx.fillStyle = label ? "#2fd35a" : "#ff4a4a";
  ctx.strokeStyle = "#000";
  ctx.beginPath();
  ctx.arc(cx, cy, 6, 0, 2 * Math.PI);
  ctx.fill();
  ctx.stroke();
}

function draw() {
  if (!page.picture) return;
  const w = canvas.width, h = canvas.height;
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(page.picture, 0, 0, w, h);
  const heat = page.heatLayers[page.heat];
  if (heat) ctx.drawImage(heat, 0, 0, w, h);
  const mask = heat ? page.maskOutline : page.maskLayer;
  if (mask) {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(mask, 0, 0, w, h);
    ctx.imageSmoothingEnabled = true;
  }
  const state = page.state;
  if (!state) return;
  for (const click of state.clicks) marker(click.x, click.y, click.label, false);
  if (state.suggestion) marker(state.suggestion.x, state.suggestion.y, state.suggestion.label, true);
}

function showLegend() {
  const heat = page.state?.overlay?.heat?.[page.heat];
  els("legend").classList.toggle("off", !heat);
  if (!heat) return;
  const names = { probability: "calibrated probability", bald: "BALD (nats)", entropy: "entropy (nats)" };
  els("legend-name").textContent = names[page.heat];
  els("legend-max").textContent = page.heat === "probability" ? "1" : heat.max.toPrecision(2);
}

async function showState(state, started) {
  page.state = state;
  page.maskLayer = page.maskOutline = null;
  page.heatLayers = {};
  if (state.overlay) {
    const mask = await decodePng(state.overlay.mask);
    page.maskLayer = layerFrom(mask, paintMask(90));
    page.maskOutline = layerFrom(mask, paintMask(0)); // over a heat map: the outline only
    await heatLayer(page.heat);
  }
  draw();
  showLegend();
  els("n-clicks").textContent = state.clicks.length;
  els("expected-error").textContent =
    state.expected_error == null ? "–" : `${(100 * state.expected_error).toFixed(2)} % of pixels`;
  const s = state.suggestion;
  els("suggestion-text").textContent = s
    ? `${s.label ? "positive" : "negative"} at (${Math.max(0, Math.round(s.x))}, ${Math.max(0, Math.round(s.y))}), p = ${s.predictive_probability.toFixed(2)}`
    : "–";
  els("status-text").textContent = state.status.replace("_", " ");
  if (started !== undefined) {
    const total = performance.now() - started;
    const t = state.timings_ms;
    els("latency").textContent = t.predict === undefined ? `${total.toFixed(0)} ms`
      : `${total.toFixed(0)} ms (predict ${t.predict.toFixed(0)}, suggest ${t.suggest.toFixed(0)}, encode ${t.encode.toFixed(0)})`;
    document.body.dataset.lastLatencyMs = total.toFixed(1);
  }
  const labels = new Set(state.clicks.map((click) => click.label));
  if (page.info?.base_segmenter === "random_walker" && labels.size === 1) {
    // random_walker seeded with one label gives that label everywhere
    say(labels.has(1)
      ? "random_walker needs both labels: right-click (or shift-click) the background too"
      : "random_walker needs both labels: left-click the object too");
  } else if (started !== undefined) {
    say("");
  }
  page.version += 1;
  document.body.dataset.overlayVersion = String(page.version);
  updateListEntry(state);
}

// --- image list -------------------------------------------------------------------------------

function updateListEntry(summary) {
  const item = document.querySelector(`#image-list li[data-id="${CSS.escape(summary.id)}"]`);
  if (!item) return;
  item.querySelector(".dot").className = "dot " + summary.status;
  item.querySelector(".err").textContent =
    summary.expected_error == null ? "" : `${(100 * summary.expected_error).toFixed(1)} %`;
  const entry = page.images.find((image) => image.id === summary.id);
  if (entry) Object.assign(entry, { status: summary.status, expected_error: summary.expected_error });
}

async function loadList() {
  const params = new URLSearchParams({ sort: els("sort-order").value });
  if (els("class-filter").value) params.set("class", els("class-filter").value);
  page.images = await api(`/api/images?${params}`);
  const list = els("image-list");
  list.replaceChildren();
  for (const image of page.images) {
    const item = document.createElement("li");
    item.dataset.id = image.id;
    item.title = `${image.class}/${image.stem} (${image.split})`;
    const dot = document.createElement("span");
    const name = document.createElement("span");
    const err = document.createElement("span");
    dot.className = "dot " + image.status;
    name.textContent = `${image.class}/${image.stem}`;
    err.className = "err";
    item.append(dot, name, err);
    item.addEventListener("click", () => openImage(image.id));
    if (image.id === page.current) item.classList.add("current");
    list.append(item);
    updateListEntry(image);
  }
  const saved = page.images.filter((image) => image.status === "saved").length;
  els("counts").textContent = `${page.images.length} images, ${saved} saved`;
}

let queue = Promise.resolve();

function enqueue(task) {
  // every request the page makes runs after the ones before it, in order
  queue = queue.then(task, task);
  return queue;
}

function openImage(id) {
  return enqueue(() => loadImage(id));
}

async function loadImage(id) {
  try {
    say("");
    const [blob, state] = await Promise.all([api(imagePath(id, "image")), api(imagePath(id, "state"))]);
    page.picture = await createImageBitmap(blob);
    page.current = id;
    els("image-title").textContent = `${state.class}/${state.stem} (${state.split}, ${state.image_hw[1]} × ${state.image_hw[0]})`;
    for (const item of document.querySelectorAll("#image-list li")) {
      item.classList.toggle("current", item.dataset.id === id);
      if (item.dataset.id === id) item.scrollIntoView({ block: "nearest" });
    }
    fitCanvas();
    await showState(state);
  } catch (err) {
    say(`cannot open ${id}: ${err.error || err}`);
  }
}

function step(offset) {
  if (!page.images.length) return;
  const index = page.images.findIndex((image) => image.id === page.current);
  const next = page.images[(index + offset + page.images.length) % page.images.length];
  openImage(next.id);
}

// --- actions ----------------------------------------------------------------------------------

function act(what, body) {
  // queued: a click made while the previous one is answered waits its turn, it is not lost
  const started = performance.now();
  return enqueue(async () => {
    if (!page.current) return;
    try {
      const state = await api(imagePath(page.current, what), body);
      await showState(state, started);
    } catch (err) {
      say(err.error || String(err));
    }
  });
}

function save() {
  return enqueue(saveNow);
}

async function saveNow() {
  if (!page.current) return;
  try {
    let result;
    try {
      result = await api(imagePath(page.current, "save"), { overwrite: false });
    } catch (err) {
      if (err.status !== 409 || !/exists/.test(err.error)) throw err;
      if (!confirm(`${err.error}.\nReplace the saved mask?`)) {
        say("not saved: the saved mask is kept");
        return;
      }
      result = await api(imagePath(page.current, "save"), { overwrite: true });
    }
    say(`saved ${result.saved}`, true);
    updateListEntry(result);
    els("status-text").textContent = result.status.replace("_", " ");
    const saved = page.images.filter((image) => image.status === "saved").length;
    els("counts").textContent = `${page.images.length} images, ${saved} saved`;
    document.body.dataset.saved = result.saved;
  } catch (err) {
    say(err.error || String(err));
  }
}

function clickAt(event, label) {
  const rect = canvas.getBoundingClientRect();
  const x = ((event.clientX - rect.left) * canvas.width) / rect.width / page.scale - 0.5;
  const y = ((event.clientY - rect.top) * canvas.height) / rect.height / page.scale - 0.5;
  act("click", { x, y, label });
}

canvas.addEventListener("click", (event) => clickAt(event, event.shiftKey ? 0 : 1));
canvas.addEventListener("contextmenu", (event) => {
  event.preventDefault();
  clickAt(event, 0);
});

async function setHeat(name) {
  page.heat = name;
  for (const radio of document.querySelectorAll('input[name="heat"]')) radio.checked = radio.value === name;
  await heatLayer(name);
  draw();
  showLegend();
}

for (const radio of document.querySelectorAll('input[name="heat"]')) {
  radio.addEventListener("change", () => setHeat(radio.value));
}

function toggleHelp(show) {
  els("help").hidden = show === undefined ? !els("help").hidden : !show;
}

els("help-button").addEventListener("click", () => toggleHelp());
els("help").addEventListener("click", () => toggleHelp(false));

document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "SELECT" || event.ctrlKey || event.metaKey || event.altKey) return;
  const keys = {
    z: () => act("undo", {}),
    " ": () => enqueue(() => {
      // the suggestion of the latest state, once the clicks before this key are answered (the
      // click itself queues behind this task: awaiting it here would wait for ever)
      const s = page.state?.suggestion;
      if (s) act("click", { x: s.x, y: s.y, label: s.label });
    }),
    r: () => act("reset", {}),
    s: () => save(),
    n: () => step(1),
    p: () => step(-1),
    h: () => {
      const order = ["none", "probability", "bald", "entropy"];
      setHeat(order[(order.indexOf(page.heat) + 1) % order.length]);
    },
    "?": () => toggleHelp(),
    Escape: () => toggleHelp(false),
  };
  const handler = keys[event.key];
  if (handler) {
    event.preventDefault();
    handler();
  }
});

els("class-filter").addEventListener("change", loadList);
els("sort-order").addEventListener("change", loadList);
new ResizeObserver(() => {
  fitCanvas();
  draw();
}).observe(els("stage"));

async function start() {
  drawLegend();
  try {
    const info = (page.info = await api("/api/info"));
    els("run-info").textContent =
      `run ${info.run_id}${info.posterior_variant ? ` / ${info.posterior_variant}` : ""}, ` +
      `${info.head} head, ${info.posterior} posterior, ${info.base_segmenter}, ` +
      `suggestions: ${info.suggest_policy}`;
    for (const name of info.classes) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      els("class-filter").append(option);
    }
    await loadList();
    if (page.images.length) await openImage(page.images[0].id);
    document.body.dataset.ready = "1";
  } catch (err) {
    say(`cannot start: ${err.error || err}`);
  }
}

start();
