// fastcnn serve: the drawing pad and what the model makes of it.
// Drawing and display only: the preprocessing (28x28, MNIST-style) and the
// model run on the server (POST /api/predict), so every client gets the same
// answer and the Python side is where it is tested.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
const LINE_WIDTH = 22;   // about 2 px of a 20 px MNIST digit drawn 200 px tall

let strokes = 0;         // strokes finished (and Clears) since the page loaded: orders answers
let drawn = 0;           // strokes in the drawing on the pad now
let drawing = null;      // the pointer id of the stroke being drawn
let lastPixels = null;   // what the shown result was computed from
let backend = null;      // the backend whose results are shown

function setStatus(text, isError) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

// -- drawing --------------------------------------------------------------
function point(event) {
  const r = pad.getBoundingClientRect();
  return [(event.clientX - r.left) * pad.width / r.width,
          (event.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (event) => {
  if (drawing !== null) return;
  drawing = event.pointerId;
  pad.setPointerCapture(event.pointerId);
  const [x, y] = point(event);
  ctx.lineWidth = LINE_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = "#111";
  ctx.beginPath();
  ctx.moveTo(x, y);
  ctx.lineTo(x + 0.01, y);   // a tap leaves a dot
  ctx.stroke();
  event.preventDefault();
});

pad.addEventListener("pointermove", (event) => {
  if (event.pointerId !== drawing) return;
  const [x, y] = point(event);
  ctx.lineTo(x, y);
  ctx.stroke();
  event.preventDefault();
});

function endStroke(event) {
  if (event.pointerId !== drawing) return;
  drawing = null;
  strokes += 1;
  drawn += 1;
  predict(canvasPixels(), strokes, drawn);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", () => {
  ctx.clearRect(0, 0, pad.width, pad.height);
  strokes += 1;                       // a late answer for the old drawing is dropped
  drawn = 0;
  document.body.dataset.shownStroke = String(strokes);
  lastPixels = null;
  renderEmpty();
  setStatus("cleared: draw a digit 0\u20139");
});

// The ink is the canvas's alpha (the pad is transparent, the page paints it white).
function canvasPixels() {
  const { data, width, height } = ctx.getImageData(0, 0, pad.width, pad.height);
  const rows = [];
  for (let i = 0; i < height; i++) {
    const row = new Array(width);
    for (let j = 0; j < width; j++) {
      row[j] = Math.round(data[(i * width + j) * 4 + 3] / 255 * 1000) / 1000;
    }
    rows.push(row);
  }
  return rows;
}

// -- the API -----------------------------------------------------------------
async function predict(pixels, stroke, count) {
  lastPixels = pixels;
  setStatus("reading\u2026");
  const body = { pixels };
  if (backend) body.backend = backend;
  let result;
  try {
    const response = await fetch("/api/predict", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    result = await response.json();
    if (!response.ok) throw new Error(result.error || response.statusText);
  } catch (err) {
    if (stroke === strokes) setStatus(String(err.message || err), true);
    return;
  }
  if (stroke !== strokes) return;     // a newer stroke's answer is on its way
  render(result);
  document.body.dataset.shownStroke = String(stroke);
  setStatus(`read after ${count} stroke${count === 1 ? "" : "s"}`);
}

async function loadInfo() {
  const info = await (await fetch("/api/info")).json();
  const m = info.model;
  const acc = m.test_accuracy == null ? "" : `, test accuracy ${(100 * m.test_accuracy).toFixed(2)}%`;
  document.getElementById("model").textContent =
    `model ${m.name} (${m.file}): ${m.parameters.toLocaleString("en")} parameters, ` +
    `${m.dtype}, trained ${m.epochs} epoch${m.epochs === 1 ? "" : "s"}` +
    (m.trained_on_backend ? ` on backend ${m.trained_on_backend}` : "") + acc;
  const v = info.versions;
  document.getElementById("versions").textContent =
    `fastcnn ${v.fastcnn} \u00b7 numpy ${v.numpy} \u00b7 Flask ${v.flask} \u00b7 Python ${v.python}`;
  backend = info.default_backend;
  renderBackends(info.backends.map((name) => ({ name })), null);
}

// -- rendering -----------------------------------------------------------------
function renderEmpty() {
  document.getElementById("prediction").textContent = "?";
  document.getElementById("agree").textContent = "";
  renderBars(null, null);
  document.getElementById("seen").getContext("2d").clearRect(0, 0, 28, 28);
  document.getElementById("maps").replaceChildren();
  const rows = document.querySelectorAll("#backends tbody tr");
  rows.forEach((tr) => { for (const td of [...tr.children].slice(2)) td.textContent = ""; });
}

function render(r) {
  document.getElementById("prediction").textContent = String(r.prediction);
  const n = r.backends.length;
  const agree = document.getElementById("agree");
  agree.textContent = r.agree
    ? `all ${n} backends say ${r.prediction}; largest logit difference from loops ` +
      `${r.max_logit_diff_from_loops.toExponential(1)}`
    : "the backends DISAGREE (see the table)";
  agree.classList.toggle("disagree", !r.agree);
  renderBars(r.probabilities, r.prediction);
  renderSeen(r.image);
  renderBackends(r.backends, r.prediction);
  renderMaps(r.feature_maps);
}

function renderBars(probabilities, top) {
  const bars = document.getElementById("bars");
  bars.replaceChildren();
  for (let k = 0; k < 10; k++) {
    const p = probabilities ? probabilities[k] : 0;
    const label = document.createElement("span");
    label.textContent = String(k);
    const bar = document.createElement("div");
    bar.className = "bar" + (k === top ? " top" : "");
    bar.dataset.digit = String(k);
    bar.dataset.p = String(p);
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = probabilities ? `${(100 * p).toFixed(1)}%` : "";
    bars.append(label, bar, pct);
  }
}

function renderSeen(image) {
  const seen = document.getElementById("seen").getContext("2d");
  const img = seen.createImageData(28, 28);
  for (let i = 0; i < 28; i++) {
    for (let j = 0; j < 28; j++) {
      const v = Math.round(255 * image[i][j]);
      img.data.set([v, v, v, 255], (i * 28 + j) * 4);
    }
  }
  seen.putImageData(img, 0, 0);
}

function renderBackends(rows, prediction) {
  const tbody = document.querySelector("#backends tbody");
  tbody.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.backend = row.name;
    const pick = document.createElement("input");
    pick.type = "radio";
    pick.name = "backend";
    pick.value = row.name;
    pick.checked = row.name === backend;
    pick.addEventListener("change", () => {
      backend = row.name;
      if (lastPixels) predict(lastPixels, strokes, drawn);
    });
    const cells = [pick, row.name,
      row.ms == null ? "" : `${row.ms.toFixed(2)} ms`,
      row.prediction == null ? "" : String(row.prediction),
      row.max_logit_diff_from_loops == null ? "" : row.max_logit_diff_from_loops.toExponential(1)];
    for (const value of cells) {
      const td = document.createElement("td");
      td.append(value);
      tr.append(td);
    }
    if (prediction != null && row.prediction !== prediction) tr.classList.add("disagree");
    tbody.append(tr);
  }
}

function renderMaps(layers) {
  const root = document.getElementById("maps");
  root.replaceChildren();
  for (const layer of layers) {
    const box = document.createElement("div");
    box.className = "layer";
    box.dataset.layer = layer.name;
    const title = document.createElement("h3");
    title.textContent = `${layer.name}: ${layer.channels} maps of ${layer.height}\u00d7${layer.width}`;
    const grid = document.createElement("div");
    grid.className = "maps";
    const bytes = Uint8Array.from(atob(layer.data), (c) => c.charCodeAt(0));
    const size = layer.height * layer.width;
    const zoom = Math.max(1, Math.round(56 / layer.width));
    for (let c = 0; c < layer.channels; c++) {
      const canvas = document.createElement("canvas");
      canvas.width = layer.width;
      canvas.height = layer.height;
      canvas.style.width = `${layer.width * zoom}px`;
      canvas.style.height = `${layer.height * zoom}px`;
      const g = canvas.getContext("2d");
      const img = g.createImageData(layer.width, layer.height);
      for (let k = 0; k < size; k++) {
        const v = bytes[c * size + k];
        img.data.set([v, v, v, 255], 4 * k);
      }
      g.putImageData(img, 0, 0);
      grid.append(canvas);
    }
    box.append(title, grid);
    root.append(box);
  }
}

renderEmpty();
loadInfo().catch((err) => setStatus(`cannot reach the server: ${err.message || err}`, true));
