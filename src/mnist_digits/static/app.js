// The drawing page: strokes on a canvas go to POST /api/predict as a PNG, the same path as an
// uploaded file, so the server's one preprocessing step decides what the model sees.
"use strict";

const INK_WIDTH = 0.075; // stroke width as a share of the canvas side: MNIST-like ink on a digit drawn large
const DEBOUNCE_MS = 120; // at most one prediction per this while drawing

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen");
const digitOut = document.getElementById("digit");
const confidenceOut = document.getElementById("confidence");
const bars = document.getElementById("bars");
const feedback = document.getElementById("feedback");
const labels = document.getElementById("labels");
const statusLine = document.getElementById("status");
const result = document.querySelector(".result");

let hasInk = false;
let last = null; // the latest prediction, for feedback
let epoch = 0; // bumped by Clear and by an upload: answers about an older picture are dropped
let timer = 0;
let inFlight = false;
let dirty = false;
let uploading = 0; // uploads waiting for their answer

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = "#111";
  ctx.fillStyle = "#111";
  ctx.lineWidth = pad.width * INK_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  hasInk = false;
}

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

// --- drawing with mouse, finger or pen (Pointer Events cover all three) -----------------------

let stroke = null; // the pointer drawing now and its last point

function canvasPoint(event) {
  const box = pad.getBoundingClientRect();
  return [((event.clientX - box.left) * pad.width) / box.width, ((event.clientY - box.top) * pad.height) / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  const [x, y] = canvasPoint(event);
  stroke = { id: event.pointerId, x, y };
  showStatus(""); // a new stroke: the last message was about the old drawing
  ctx.beginPath(); // a dot for a tap
  ctx.arc(x, y, ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fill();
  changed();
});

pad.addEventListener("pointermove", (event) => {
  if (!stroke || event.pointerId !== stroke.id) return;
  const points = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  ctx.beginPath();
  ctx.moveTo(stroke.x, stroke.y);
  for (const point of points.length ? points : [event]) {
    [stroke.x, stroke.y] = canvasPoint(point);
    ctx.lineTo(stroke.x, stroke.y);
  }
  ctx.stroke();
  changed();
});

function endStroke(event) {
  if (!stroke || event.pointerId !== stroke.id) return;
  stroke = null;
  changed(0);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function changed(delay = DEBOUNCE_MS) {
  hasInk = true;
  dirty = true;
  schedule(delay);
}

function schedule(delay) {
  if (delay === 0 && timer) {
    clearTimeout(timer);
    timer = 0;
  }
  if (!timer) timer = setTimeout(flush, delay);
  updateBusy();
}

// aria-busy says an answer is on its way (screen readers wait; tests too).
function updateBusy() {
  result.setAttribute("aria-busy", String(Boolean(timer || inFlight || dirty || uploading)));
}

async function flush() {
  timer = 0;
  if (inFlight || !dirty || !hasInk) return updateBusy();
  dirty = false;
  inFlight = true;
  const asked = epoch;
  try {
    const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    const answer = await predict(blob, "drawing.png");
    if (asked === epoch && answer) show(answer);
  } finally {
    inFlight = false;
    if (dirty) schedule(0); // the drawing changed while we waited
    updateBusy();
  }
}

document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  epoch += 1;
  dirty = false;
  last = null;
  reset();
  updateBusy();
});

// --- uploading a file -------------------------------------------------------------------------

document.getElementById("upload").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = ""; // choosing the same file again still fires "change"
  if (!file) return;
  clearPad();
  epoch += 1;
  dirty = false;
  const asked = epoch;
  drawPreview(file);
  uploading += 1;
  updateBusy();
  const answer = await predict(file, file.name);
  uploading -= 1;
  updateBusy();
  if (asked === epoch && answer) show(answer);
});

function drawPreview(file) {
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.onload = () => {
    const scale = Math.min(pad.width / image.width, pad.height / image.height);
    const w = image.width * scale;
    const h = image.height * scale;
    ctx.drawImage(image, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  image.src = url;
}

// --- talking to the API -----------------------------------------------------------------------

async function predict(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      showStatus(body.message || `The server answered ${response.status}.`, true);
      return null;
    }
    if (statusLine.classList.contains("error")) showStatus(""); // it works again
    return body.predictions[0];
  } catch (error) {
    showStatus(`Cannot reach the server (${error.message}).`, true);
    return null;
  }
}

async function sendFeedback(label) {
  if (!last) return;
  try {
    const response = await fetch("/api/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pixels: last.image, label }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || `status ${response.status}`);
    const plural = body.stored === 1 ? "" : "s";
    showStatus(`Thank you: saved as a ${label} (${body.stored} correction${plural} so far).`);
  } catch (error) {
    showStatus(`Could not save the correction: ${error.message}`, true);
  }
}

async function showModel() {
  try {
    const response = await fetch("/api/model");
    const model = await response.json();
    const accuracy = model.test_accuracy == null ? "" : `, ${(100 * model.test_accuracy).toFixed(2)}% on MNIST's test set`;
    document.getElementById("model-info").textContent = `Model: ${model.name}${accuracy}`;
  } catch (error) {
    document.getElementById("model-info").textContent = "";
  }
}

// --- showing an answer ------------------------------------------------------------------------

function show(prediction) {
  if (prediction.digit === null) {
    reset();
    confidenceOut.textContent = "No digit found: draw one larger or darker.";
    return;
  }
  last = prediction;
  digitOut.textContent = String(prediction.digit);
  const sure = `${(100 * prediction.confidence).toFixed(1)}% sure`;
  confidenceOut.textContent = prediction.uncertain ? `${sure}: a guess` : sure;
  prediction.probabilities.forEach((p, digit) => {
    const row = bars.children[digit];
    row.classList.toggle("top", digit === prediction.digit);
    row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
  });
  const pixels = seen.getContext("2d").createImageData(28, 28);
  prediction.image.forEach((value, i) => {
    pixels.data.set([value, value, value, 255], 4 * i);
  });
  seen.getContext("2d").putImageData(pixels, 0, 0);
  feedback.hidden = false;
}

function reset() {
  digitOut.textContent = "–";
  confidenceOut.textContent = "Draw a digit to see what the model reads.";
  for (const row of bars.children) {
    row.classList.remove("top");
    row.querySelector(".fill").style.width = "0";
    row.querySelector(".pct").textContent = "";
  }
  seen.getContext("2d").clearRect(0, 0, 28, 28);
  feedback.hidden = true;
  showStatus("");
}

for (let digit = 0; digit <= 9; digit++) {
  const row = document.createElement("li");
  row.innerHTML = `<span>${digit}</span><span class="bar"><span class="fill"></span></span><span class="pct"></span>`;
  bars.append(row);
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = String(digit);
  button.dataset.label = String(digit);
  button.addEventListener("click", () => sendFeedback(digit));
  labels.append(button);
}

clearPad();
reset();
updateBusy();
showModel();
