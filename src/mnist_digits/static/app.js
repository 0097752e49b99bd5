// The drawing page: strokes go to the server as a PNG, the same path as an uploaded file, so the
// server's one preprocessing step decides what the model sees. One digit goes to POST /api/predict,
// several written side by side to POST /api/read-number.
"use strict";

const INK_WIDTH = 0.075; // stroke width as a share of the paper's height: MNIST-like ink on a digit drawn large
const DEBOUNCE_MS = 120; // at most one request per this while drawing
const SCROLL_IDLE_MS = 700; // an answer out of view is scrolled to once the pen has rested this long
// The image sent, in its own pixels whatever the screen's density: what the model sees stays the same.
const PAPER = {
  digit: { width: 280, height: 280 },
  number: { width: 560, height: 280 },
};
const WORDS = {
  digit: {
    title: "Draw a digit",
    hint: "Draw one digit large, filling most of the square.",
    pad: "Drawing area: draw one digit, 0 to 9, with a mouse, a finger or a pen",
    idle: "Draw a digit to see what the model reads.",
  },
  number: {
    title: "Write a number",
    hint: "Write the digits side by side, each one tall, with a little space between them.",
    pad: "Drawing area: write a number, digits side by side, with a mouse, a finger or a pen",
    idle: "Write a number to see what the model reads.",
  },
};

const pad = document.getElementById("pad"); // what the person sees, at the screen's density
const view = pad.getContext("2d");
const paper = document.createElement("canvas"); // what is sent: dark ink on white, fixed size
const ink = paper.getContext("2d");
const seen = document.getElementById("seen");
const digitOut = document.getElementById("digit");
const confidenceOut = document.getElementById("confidence");
const note = document.getElementById("note");
const tiles = document.getElementById("tiles");
const bars = document.getElementById("bars");
const feedback = document.getElementById("feedback");
const feedbackLabel = document.getElementById("feedback-label");
const labels = document.getElementById("labels");
const statusLine = document.getElementById("status");
const announcer = document.getElementById("announce"); // the page's one live region
const result = document.querySelector(".result");
const dark = window.matchMedia("(prefers-color-scheme: dark)");

let mode = "digit";
let strokes = []; // each an array of [x, y] in paper pixels: replayed on resizes, theme and mode changes
let picture = null; // an uploaded image shown on the pad, and its file
let last = null; // the prediction feedback is about
let epoch = 0; // bumped by Clear, an upload and a mode change: answers about an older picture are dropped
let timer = 0;
let inFlight = false;
let dirty = false;
let uploading = 0; // uploads waiting for their answer
let stroke = null; // the pointer drawing now and the points of its stroke
let lastStrokeEnd = 0;
let scrollTimer = 0;

// --- the two canvases -------------------------------------------------------------------------

function lineWidth() {
  return paper.height * INK_WIDTH;
}

function padColors() {
  const style = getComputedStyle(pad);
  return { paper: style.getPropertyValue("--pad-paper").trim(), ink: style.getPropertyValue("--pad-ink").trim() };
}

function startCanvas(context, colors) {
  context.fillStyle = colors.paper;
  context.fillRect(0, 0, paper.width, paper.height);
  context.strokeStyle = colors.ink;
  context.fillStyle = colors.ink;
  context.lineWidth = lineWidth();
  context.lineCap = "round";
  context.lineJoin = "round";
}

function drawPicture(context) {
  if (!picture) return;
  const { image } = picture;
  const scale = Math.min(paper.width / image.width, paper.height / image.height);
  const [w, h] = [image.width * scale, image.height * scale];
  context.drawImage(image, (paper.width - w) / 2, (paper.height - h) / 2, w, h);
}

function drawDot(context, [x, y]) {
  context.beginPath(); // a dot for a tap
  context.arc(x, y, context.lineWidth / 2, 0, 2 * Math.PI);
  context.fill();
}

function drawLine(context, points) {
  context.beginPath();
  context.moveTo(...points[0]);
  for (const point of points.slice(1)) context.lineTo(...point);
  context.stroke();
}

function each(draw) {
  draw(ink);
  draw(view);
}

// The pad's backing store follows its CSS size times devicePixelRatio, so lines stay sharp on dense
// screens; its transform maps paper pixels onto it, so both canvases take the same coordinates.
function redrawPad() {
  const box = pad.getBoundingClientRect();
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(box.width * ratio));
  const height = Math.max(1, Math.round(box.height * ratio));
  if (pad.width !== width || pad.height !== height) [pad.width, pad.height] = [width, height];
  view.setTransform(width / paper.width, 0, 0, height / paper.height, 0, 0);
  startCanvas(view, padColors());
  drawPicture(view);
  for (const points of strokes) {
    drawDot(view, points[0]);
    if (points.length > 1) drawLine(view, points);
  }
}

function redrawPaper() {
  startCanvas(ink, { paper: "#fff", ink: "#111" });
  drawPicture(ink);
  for (const points of strokes) {
    drawDot(ink, points[0]);
    if (points.length > 1) drawLine(ink, points);
  }
}

function hasInk() {
  return strokes.length > 0 || picture !== null;
}

function clearDrawing() {
  strokes = [];
  picture = null;
  stroke = null;
  redrawPaper();
  redrawPad();
}

new ResizeObserver(redrawPad).observe(pad);
window.addEventListener("resize", redrawPad); // a zoom changes devicePixelRatio, not always the CSS size
dark.addEventListener("change", redrawPad);

// --- drawing with mouse, finger or pen (Pointer Events cover all three) -----------------------

function paperPoint(event) {
  const box = pad.getBoundingClientRect();
  return [
    ((event.clientX - box.left) * paper.width) / box.width,
    ((event.clientY - box.top) * paper.height) / box.height,
  ];
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  clearTimeout(scrollTimer);
  const point = paperPoint(event);
  stroke = { id: event.pointerId, points: [point] };
  strokes.push(stroke.points);
  showStatus(""); // a new stroke: the last message was about the old drawing
  each((context) => drawDot(context, point));
  changed();
});

pad.addEventListener("pointermove", (event) => {
  if (!stroke || event.pointerId !== stroke.id) return;
  const coalesced = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  const points = (coalesced.length ? coalesced : [event]).map(paperPoint);
  const segment = [stroke.points.at(-1), ...points];
  stroke.points.push(...points);
  each((context) => drawLine(context, segment));
  changed();
});

function endStroke(event) {
  if (!stroke || event.pointerId !== stroke.id) return;
  stroke = null;
  lastStrokeEnd = performance.now();
  changed(0);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function changed(delay = DEBOUNCE_MS) {
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
  if (inFlight || !dirty || !hasInk()) return updateBusy();
  dirty = false;
  inFlight = true;
  const asked = epoch;
  const askedMode = mode;
  try {
    const blob = await new Promise((resolve) => paper.toBlob(resolve, "image/png"));
    const answer = await ask(askedMode, blob, "drawing.png");
    if (asked === epoch && answer) show(askedMode, answer);
  } finally {
    inFlight = false;
    if (dirty) schedule(0); // the drawing changed while we waited
    updateBusy();
  }
}

function clearAll() {
  clearDrawing();
  epoch += 1;
  dirty = false;
  last = null;
  reset();
  updateBusy();
}

document.getElementById("clear").addEventListener("click", clearAll);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !event.defaultPrevented) clearAll();
});

// --- one digit or a number --------------------------------------------------------------------

// The drawing so far is kept, scaled to fit the new paper and centred: "Read it as a number" rereads it.
function setMode(next) {
  if (next === mode) return;
  const before = { width: paper.width, height: paper.height };
  mode = next;
  [paper.width, paper.height] = [PAPER[mode].width, PAPER[mode].height];
  const scale = Math.min(paper.width / before.width, paper.height / before.height);
  const dx = (paper.width - before.width * scale) / 2;
  const dy = (paper.height - before.height * scale) / 2;
  strokes = strokes.map((points) => points.map(([x, y]) => [dx + x * scale, dy + y * scale]));
  stroke = null;
  document.body.dataset.mode = mode;
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.checked = radio.value === mode;
  document.getElementById("title").textContent = WORDS[mode].title;
  document.getElementById("hint").textContent = WORDS[mode].hint;
  pad.setAttribute("aria-label", WORDS[mode].pad);
  document.title = `${WORDS[mode].title} · mnist-digits`;
  redrawPaper();
  redrawPad();
  epoch += 1;
  last = null;
  reset();
  if (picture) {
    sendFile(picture.file);
  } else if (strokes.length) {
    changed(0);
  }
  updateBusy();
}

for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener("change", () => radio.checked && setMode(radio.value));
}
document.getElementById("as-number").addEventListener("click", () => {
  setMode("number");
  document.querySelector('input[name="mode"][value="number"]').focus();
});

// --- uploading a file -------------------------------------------------------------------------

document.getElementById("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  event.target.value = ""; // choosing the same file again still fires "change"
  if (!file) return;
  clearDrawing();
  showPreview(file);
  sendFile(file);
});

async function sendFile(file) {
  epoch += 1;
  dirty = false;
  const asked = epoch;
  const askedMode = mode;
  uploading += 1;
  updateBusy();
  const answer = await ask(askedMode, file, file.name);
  uploading -= 1;
  updateBusy();
  if (asked === epoch && answer) show(askedMode, answer);
}

function showPreview(file) {
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.onload = () => {
    URL.revokeObjectURL(url);
    if (picture && picture.file === file) {
      picture.image = image;
      redrawPaper();
      redrawPad();
    }
  };
  image.onerror = () => URL.revokeObjectURL(url); // the server's answer says what is wrong with it
  picture = { file, image: new Image() }; // empty until loaded: drawImage skips an unloaded image
  image.src = url;
}

// --- talking to the API -----------------------------------------------------------------------

// A proxy or gateway in front of the server answers its own errors as HTML: say so, not "invalid JSON".
async function readJson(response) {
  const type = (response.headers.get("content-type") || "").split(";")[0].trim();
  const answered = `The server answered ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
  if (type !== "application/json") {
    const what = type === "text/html" ? "a web page" : type ? `${type}` : "something without a type";
    throw new Error(
      `${answered} with ${what} instead of mnist-digits' JSON: a proxy or gateway between this page and ` +
        "the server failed, or the server is not mnist-digits. Try again in a moment.",
    );
  }
  try {
    return await response.json();
  } catch (error) {
    throw new Error(`${answered} with broken JSON (${error.message}). Try again in a moment.`);
  }
}

async function ask(askedMode, blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  const url = askedMode === "number" ? "/api/read-number" : "/api/predict";
  let response;
  try {
    response = await fetch(url, { method: "POST", body: form });
  } catch (error) {
    showStatus(`Cannot reach the server (${error.message}). Is mnist-digits serve still running?`, true);
    return null;
  }
  try {
    const body = await readJson(response);
    if (!response.ok) {
      showStatus(body.message || `The server answered ${response.status}.`, true);
      return null;
    }
    if (statusLine.classList.contains("error")) showStatus(""); // it works again
    return askedMode === "number" ? body.numbers[0] : body.predictions[0];
  } catch (error) {
    showStatus(error.message, true);
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
    const body = await readJson(response);
    if (!response.ok) throw new Error(body.message || `The server answered ${response.status}.`);
    const plural = body.stored === 1 ? "" : "s";
    showStatus(`Thank you: saved as a ${label} (${body.stored} correction${plural} so far).`);
  } catch (error) {
    showStatus(`Could not save the correction: ${error.message}`, true);
  }
}

async function showModel() {
  const info = document.getElementById("model-info");
  try {
    const model = await readJson(await fetch("/api/model"));
    const accuracy =
      model.test_accuracy == null
        ? "its accuracy on MNIST's test set is not recorded"
        : `${(100 * model.test_accuracy).toFixed(2)}% right on MNIST's 10,000 test digits`;
    info.textContent = `Model: ${model.name}, ${accuracy}.`;
  } catch (error) {
    info.textContent = `Cannot tell which model answers: ${error.message}`;
  }
}

// --- showing an answer ------------------------------------------------------------------------

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
  if (text) announce(text);
}

function announce(text) {
  announcer.textContent = text;
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

function show(askedMode, answer) {
  if (askedMode === "number") showNumber(answer);
  else showDigit(answer);
  revealAnswer();
}

function showDigit(prediction) {
  if (prediction.digit === null) return showNothing(prediction.error);
  digitOut.textContent = String(prediction.digit);
  const sure = `${percent(prediction.confidence)} sure`;
  // A note (several digits in one image) makes any answer a guess, however sure the model is.
  const guess = prediction.note ? `${sure}, but a guess: see below` : `${sure}: a guess`;
  confidenceOut.textContent = prediction.uncertain ? guess : sure;
  document.getElementById("note-text").textContent = prediction.note || "";
  note.hidden = !prediction.note;
  showDetails(prediction);
  announce(`${prediction.digit}, ${confidenceOut.textContent}.${prediction.note ? ` ${prediction.note}.` : ""}`);
}

function showNumber(reading) {
  if (reading.error) return showNothing(reading.error);
  digitOut.textContent = reading.number;
  const sure = `${percent(reading.confidence)} sure of every digit`;
  confidenceOut.textContent = reading.uncertain ? `${sure}: a guess` : sure;
  note.hidden = true;
  tiles.replaceChildren(...reading.digits.map((digit, index) => tile(digit, index, reading.digits.length)));
  tiles.hidden = false;
  selectTile(0);
  announce(`${reading.number}, ${confidenceOut.textContent}.`);
}

// A tile per digit of a number: choosing one shows its probabilities and takes a correction for it.
function tile(prediction, index, count) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.setAttribute("aria-pressed", "false");
  button.setAttribute("aria-label", `digit ${index + 1} of ${count}: ${prediction.digit}, ${percent(prediction.confidence)}`);
  const thumb = document.createElement("canvas");
  [thumb.width, thumb.height] = [28, 28];
  paint(thumb, prediction.image);
  const digit = document.createElement("b");
  digit.textContent = String(prediction.digit);
  const sure = document.createElement("small");
  sure.textContent = percent(prediction.confidence);
  button.classList.toggle("uncertain", prediction.uncertain);
  button.append(thumb, digit, sure);
  button.addEventListener("click", () => selectTile(index));
  button.prediction = prediction;
  item.append(button);
  return item;
}

function selectTile(index) {
  const buttons = [...tiles.querySelectorAll("button")];
  buttons.forEach((button, i) => button.setAttribute("aria-pressed", String(i === index)));
  showDetails(buttons[index].prediction);
  feedbackLabel.textContent = `Wrong? Digit ${index + 1} was a`;
}

function showDetails(prediction) {
  last = prediction;
  prediction.probabilities.forEach((p, digit) => {
    const row = bars.children[digit];
    row.classList.toggle("top", digit === prediction.digit);
    row.querySelector(".fill").style.width = percent(p);
    row.querySelector(".pct").textContent = percent(p);
  });
  paint(seen, prediction.image);
  feedback.hidden = false;
}

function paint(canvas, image) {
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(28, 28);
  image.forEach((value, i) => pixels.data.set([value, value, value, 255], 4 * i));
  context.putImageData(pixels, 0, 0);
}

function showNothing(error) {
  reset();
  const found = !error || error === "no digit found";
  confidenceOut.textContent = found ? "No digit found: draw larger or darker." : error;
  announce(confidenceOut.textContent);
}

function reset() {
  digitOut.textContent = "–";
  confidenceOut.textContent = WORDS[mode].idle;
  for (const row of bars.children) {
    row.classList.remove("top");
    row.querySelector(".fill").style.width = "0";
    row.querySelector(".pct").textContent = "";
  }
  seen.getContext("2d").clearRect(0, 0, 28, 28);
  note.hidden = true;
  tiles.hidden = true;
  tiles.replaceChildren();
  feedback.hidden = true;
  feedbackLabel.textContent = "Wrong? It was a";
  showStatus("");
  announce("");
}

// On a small screen the answer can sit below the fold: bring it up once the pen rests, never mid-stroke.
function revealAnswer() {
  clearTimeout(scrollTimer);
  const box = document.querySelector(".answer").getBoundingClientRect();
  if (box.top >= 0 && box.bottom <= window.innerHeight) return;
  const wait = Math.max(0, lastStrokeEnd + SCROLL_IDLE_MS - performance.now());
  scrollTimer = setTimeout(() => {
    if (!stroke) document.querySelector(".answer").scrollIntoView({ block: "nearest", behavior: "smooth" });
  }, wait);
}

// --- start ------------------------------------------------------------------------------------

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

[paper.width, paper.height] = [PAPER[mode].width, PAPER[mode].height];
document.body.dataset.mode = mode;
document.querySelector('input[name="mode"][value="digit"]').checked = true; // a reload may keep "number"
redrawPaper();
redrawPad();
reset();
updateBusy();
showModel();
