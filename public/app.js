// Ocular playground: a worked example of the public API, in plain JavaScript with no build step.
//   GET  /v1/models                   -> the model picker
//   POST /v1/models/{name}/predict    -> the image as the raw body; the answer is drawn over the image
// Every request goes to this page's own origin. An API key, when given, is sent as `Authorization: Bearer <key>`
// and kept in sessionStorage (this tab only).

const KEY_STORAGE = 'ocular.apiKey';
const MODEL_STORAGE = 'ocular.model';
const PALETTE = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#00a3a3', '#f032e6', '#808000', '#9a6324', '#000075'];

/** @param {string} id */
function byId(id) {
  const el = document.getElementById(id);
  if (el === null) throw new Error(`#${id} is missing from the page`);
  return el;
}

const form = /** @type {HTMLFormElement} */ (byId('form'));
const modelSelect = /** @type {HTMLSelectElement} */ (byId('model'));
const modelInfo = byId('model-info');
const keyInput = /** @type {HTMLInputElement} */ (byId('api-key'));
const fileInput = /** @type {HTMLInputElement} */ (byId('file'));
const runButton = /** @type {HTMLButtonElement} */ (byId('run'));
const statusLine = byId('status');
const errorLine = byId('error');
const resultSection = byId('result');
const canvas = /** @type {HTMLCanvasElement} */ (byId('canvas'));
const caption = byId('caption');
const items = byId('items');
const timingsBody = /** @type {HTMLTableSectionElement} */ (byId('timings').querySelector('tbody'));
const jsonView = byId('json');

/** @type {{ name: string, version: string, task: string, state: string, provider?: string }[]} */
let models = [];
/** @type {File | undefined} */
let currentFile;
/** Only the latest request may update the page. */
let sequence = 0;
/** @type {AbortController | undefined} */
let inFlight;

function authHeaders() {
  const key = keyInput.value.trim();
  return key === '' ? {} : { authorization: `Bearer ${key}` };
}

/** @param {string} text */
function setStatus(text) {
  statusLine.textContent = text;
}

/** @param {string} text */
function showError(text) {
  errorLine.textContent = text;
  errorLine.hidden = false;
}

function clearError() {
  errorLine.textContent = '';
  errorLine.hidden = true;
}

/**
 * The body of an answer as JSON; an answer that is not JSON (a proxy's HTML error page) becomes a message.
 * @param {Response} res
 */
async function readBody(res) {
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    return { code: 'NOT_JSON', message: `${res.status} ${res.statusText}: ${text.slice(0, 200)}` };
  }
}

/**
 * What went wrong, for a person: the API's { code, message }, and what to do about a missing or wrong key.
 * @param {Response} res
 * @param {any} body
 */
function describeError(res, body) {
  const code = typeof body?.code === 'string' ? body.code : String(res.status);
  const message = typeof body?.message === 'string' ? body.message : res.statusText;
  const hint =
    res.status === 401
      ? ' Enter an API key above.'
      : res.status === 403
        ? ' This API key is not allowed to do that.'
        : '';
  return `${res.status} ${code}: ${message.replace(/\.$/, '')}.${hint}`;
}

// ---- models ----

async function loadModels() {
  setStatus('Loading the models…');
  let res;
  try {
    res = await fetch('/v1/models', { headers: { accept: 'application/json', ...authHeaders() } });
  } catch (err) {
    showError(`Cannot reach the server: ${err instanceof Error ? err.message : String(err)}`);
    setStatus('');
    return;
  }
  const body = await readBody(res);
  if (!res.ok) {
    showError(describeError(res, body));
    setStatus('');
    if (res.status === 401 || res.status === 403) keyInput.focus();
    return;
  }
  clearError();
  models = Array.isArray(body.models) ? body.models : [];
  const wanted = modelSelect.value || sessionStorage.getItem(MODEL_STORAGE) || '';
  modelSelect.replaceChildren(
    ...models.map((m) => {
      const option = document.createElement('option');
      option.value = m.name;
      option.textContent = `${m.name} (${m.task}${m.state === 'READY' ? '' : `, ${m.state.toLowerCase()}`})`;
      return option;
    }),
  );
  const ready = models.find((m) => m.state === 'READY');
  const chosen = models.find((m) => m.name === wanted) ?? ready ?? models[0];
  if (chosen !== undefined) modelSelect.value = chosen.name;
  describeModel();
  setStatus(models.length === 0 ? 'This server serves no models.' : `${models.length} models. Choose or drop an image.`);
}

function describeModel() {
  const m = models.find((x) => x.name === modelSelect.value);
  modelInfo.textContent =
    m === undefined ? '' : `version ${m.version}, ${m.state}${m.provider !== undefined ? `, on ${m.provider}` : ''}`;
}

// ---- predict ----

async function predict() {
  const file = currentFile;
  const model = modelSelect.value;
  if (file === undefined) {
    setStatus('Choose or drop an image first.');
    return;
  }
  if (model === '') {
    setStatus('No model to run.');
    return;
  }
  inFlight?.abort();
  const controller = new AbortController();
  inFlight = controller;
  const mine = ++sequence;
  clearError();
  runButton.disabled = true;
  setStatus(`Running ${model} on ${file.name}…`);

  // The format is identified by the server from the bytes; an image/* type is passed on, anything else is sent
  // as application/octet-stream so that the server, not the browser's guess, says what the file is.
  const contentType = file.type.startsWith('image/') ? file.type : 'application/octet-stream';
  const started = performance.now();
  const picture = loadPicture(file);
  try {
    const res = await fetch(`/v1/models/${encodeURIComponent(model)}/predict`, {
      method: 'POST',
      headers: { 'content-type': contentType, accept: 'application/json', ...authHeaders() },
      body: file,
      signal: controller.signal,
    });
    const body = await readBody(res);
    const roundTripMs = performance.now() - started;
    if (mine !== sequence) return;
    if (!res.ok) {
      resultSection.hidden = true;
      showError(describeError(res, body));
      setStatus(`${file.name}: ${model} refused it.`);
      return;
    }
    const image = await picture;
    if (mine !== sequence) return;
    showAnswer(file, body, image, res, roundTripMs);
    setStatus(`${file.name}: ${summarise(body)}.`);
  } catch (err) {
    if (controller.signal.aborted) return;
    showError(`The request failed: ${err instanceof Error ? err.message : String(err)}`);
    setStatus('');
  } finally {
    if (mine === sequence) {
      runButton.disabled = false;
      inFlight = undefined;
    }
  }
}

/**
 * The dropped file as a decoded picture (browsers apply EXIF orientation, as the server does), or undefined when
 * this browser cannot show the format (TIFF): the answer is then drawn on a blank canvas.
 * @param {File} file
 * @returns {Promise<HTMLImageElement | undefined>}
 */
async function loadPicture(file) {
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.src = url;
  try {
    await img.decode();
    return img;
  } catch {
    return undefined;
  } finally {
    URL.revokeObjectURL(url);
  }
}

/** @param {any} body */
function summarise(body) {
  if (Array.isArray(body.predictions)) {
    const top = body.predictions[0];
    return top === undefined ? 'no label' : `${top.label} (${percent(top.score)})`;
  }
  if (Array.isArray(body.detections)) return plural(body.detections.length, 'detection');
  if (Array.isArray(body.lines)) return plural(body.lines.length, 'line') + ' of text';
  return 'answered';
}

/**
 * @param {number} n
 * @param {string} one
 * @param {string} many
 */
function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/** @param {number} score */
function percent(score) {
  return `${(score * 100).toFixed(score >= 0.995 || score < 0.1 ? 1 : 0)}%`;
}

/**
 * `preprocess;dur=1.20, queue;dur=0.05, ...` -> [[name, ms], ...]
 * @param {string | null} header
 * @returns {[string, number][]}
 */
export function parseServerTiming(header) {
  if (header === null) return [];
  /** @type {[string, number][]} */
  const out = [];
  for (const entry of header.split(',')) {
    const [name, ...params] = entry.trim().split(';');
    if (name === undefined || name === '') continue;
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith('dur='));
    out.push([name, dur === undefined ? NaN : Number(dur.slice(4))]);
  }
  return out;
}

/**
 * @param {File} file
 * @param {any} body
 * @param {HTMLImageElement | undefined} image
 * @param {Response} res
 * @param {number} roundTripMs
 */
function showAnswer(file, body, image, res, roundTripMs) {
  const shapes = draw(body, image);
  canvas.dataset['shapes'] = String(shapes.count);
  canvas.setAttribute('aria-label', `${file.name} with ${shapes.description} drawn over it`);
  const requestId = res.headers.get('x-request-id');
  caption.textContent = `${body.model} ${body.version} · ${body.width}×${body.height} px · ${shapes.description}${
    image === undefined ? ' (this browser cannot show the image itself)' : ''
  }${requestId !== null ? ` · request ${requestId}` : ''}`;

  items.replaceChildren(...listItems(body));

  const rows = parseServerTiming(res.headers.get('server-timing'));
  rows.push(['round trip (browser)', roundTripMs]);
  timingsBody.replaceChildren(
    ...rows.map(([name, ms]) => {
      const tr = document.createElement('tr');
      const th = document.createElement('th');
      th.scope = 'row';
      th.textContent = name;
      const td = document.createElement('td');
      td.className = 'num';
      td.textContent = Number.isFinite(ms) ? ms.toFixed(2) : '–';
      tr.append(th, td);
      return tr;
    }),
  );

  jsonView.textContent = JSON.stringify(body, null, 2);
  resultSection.hidden = false;
}

/** @param {any} body */
function listItems(body) {
  /** @type {[string, number][]} */
  let rows = [];
  if (Array.isArray(body.predictions)) rows = body.predictions.map((p) => [p.label, p.score]);
  else if (Array.isArray(body.detections)) rows = body.detections.map((d) => [`${d.label} at ${boxText(d.box)}`, d.score]);
  else if (Array.isArray(body.lines)) rows = body.lines.map((l) => [`“${l.text}”`, l.score]);
  if (rows.length === 0) {
    const li = document.createElement('li');
    li.textContent = 'nothing found';
    return [li];
  }
  return rows.map(([text, score]) => {
    const li = document.createElement('li');
    const span = document.createElement('span');
    span.className = 'score';
    span.textContent = ` ${percent(score)}`;
    li.append(text, span);
    return li;
  });
}

/** @param {{ x1: number, y1: number, x2: number, y2: number }} b */
function boxText(b) {
  return `(${Math.round(b.x1)}, ${Math.round(b.y1)})–(${Math.round(b.x2)}, ${Math.round(b.y2)})`;
}

// ---- drawing: in the answer's own pixel space (the upright image), scaled down by CSS ----

/**
 * @param {any} body
 * @param {HTMLImageElement | undefined} image
 * @returns {{ count: number, description: string }}
 */
function draw(body, image) {
  const w = Math.max(1, body.width);
  const h = Math.max(1, body.height);
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext('2d');
  if (ctx === null) return { count: 0, description: 'nothing (no 2D canvas)' };
  ctx.clearRect(0, 0, w, h);
  if (image !== undefined) ctx.drawImage(image, 0, 0, w, h);
  else {
    ctx.fillStyle = '#dddddd';
    ctx.fillRect(0, 0, w, h);
  }
  const unit = Math.max(w, h);
  const line = Math.max(2, Math.round(unit / 320));
  const font = Math.max(12, Math.round(unit / 45));
  ctx.font = `600 ${font}px system-ui, 'DejaVu Sans', sans-serif`;
  ctx.textBaseline = 'top';
  ctx.lineJoin = 'round';

  if (Array.isArray(body.predictions)) {
    drawLabels(ctx, body.predictions, font);
    return { count: body.predictions.length, description: plural(body.predictions.length, 'label') };
  }
  if (Array.isArray(body.detections)) {
    for (const d of body.detections) {
      ctx.strokeStyle = colour(d.index);
      ctx.lineWidth = line;
      ctx.strokeRect(d.box.x1, d.box.y1, d.box.x2 - d.box.x1, d.box.y2 - d.box.y1);
    }
    for (const d of body.detections) tag(ctx, `${d.label} ${percent(d.score)}`, d.box.x1, d.box.y1, colour(d.index), font, h);
    return { count: body.detections.length, description: plural(body.detections.length, 'box', 'boxes') };
  }
  if (Array.isArray(body.lines)) {
    body.lines.forEach((/** @type {any} */ l, /** @type {number} */ i) => {
      ctx.strokeStyle = colour(i);
      ctx.lineWidth = line;
      ctx.beginPath();
      l.polygon.forEach((/** @type {[number, number]} */ [x, y], /** @type {number} */ k) => (k === 0 ? ctx.moveTo(x, y) : ctx.lineTo(x, y)));
      ctx.closePath();
      ctx.stroke();
    });
    body.lines.forEach((/** @type {any} */ l, /** @type {number} */ i) => tag(ctx, l.text, l.box.x1, l.box.y1, colour(i), font, h));
    return { count: body.lines.length, description: plural(body.lines.length, 'polygon') };
  }
  return { count: 0, description: 'nothing' };
}

/** @param {number} i */
function colour(i) {
  return PALETTE[((i % PALETTE.length) + PALETTE.length) % PALETTE.length] ?? '#e6194b';
}

/**
 * A label on a solid tag above the point (inside the box when there is no room above).
 * @param {CanvasRenderingContext2D} ctx
 * @param {string} text
 * @param {number} x
 * @param {number} y
 * @param {string} fill
 * @param {number} font
 * @param {number} height
 */
function tag(ctx, text, x, y, fill, font, height) {
  const pad = Math.round(font / 4);
  const tw = ctx.measureText(text).width + 2 * pad;
  const th = font + 2 * pad;
  const top = y - th >= 0 ? y - th : Math.min(y, height - th);
  ctx.fillStyle = fill;
  ctx.fillRect(x, top, tw, th);
  ctx.fillStyle = '#ffffff';
  ctx.fillText(text, x + pad, top + pad);
}

/**
 * Classification: the top labels with score bars, on a dark panel in the top-left corner.
 * @param {CanvasRenderingContext2D} ctx
 * @param {{ label: string, score: number }[]} predictions
 * @param {number} font
 */
function drawLabels(ctx, predictions, font) {
  const pad = Math.round(font / 2);
  const rowH = Math.round(font * 1.6);
  const texts = predictions.map((p) => `${p.label} ${percent(p.score)}`);
  const width = Math.min(ctx.canvas.width - 2 * pad, Math.max(...texts.map((t) => ctx.measureText(t).width)) + 2 * pad);
  ctx.fillStyle = 'rgba(0, 0, 0, 0.7)';
  ctx.fillRect(pad, pad, width, rowH * predictions.length + pad);
  predictions.forEach((p, i) => {
    const top = pad + pad / 2 + i * rowH;
    ctx.fillStyle = colour(i);
    ctx.fillRect(pad + pad / 2, top + font + 2, Math.max(2, (width - pad) * p.score), Math.max(3, Math.round(font / 5)));
    ctx.fillStyle = '#ffffff';
    ctx.fillText(texts[i] ?? '', pad + pad / 2, top);
  });
}

// ---- wiring ----

/** @param {File | undefined} file */
function choose(file) {
  if (file === undefined) return;
  currentFile = file;
  void predict();
}

keyInput.value = sessionStorage.getItem(KEY_STORAGE) ?? '';
keyInput.addEventListener('change', () => {
  const key = keyInput.value.trim();
  if (key === '') sessionStorage.removeItem(KEY_STORAGE);
  else sessionStorage.setItem(KEY_STORAGE, key);
  void loadModels();
});
modelSelect.addEventListener('change', () => {
  sessionStorage.setItem(MODEL_STORAGE, modelSelect.value);
  describeModel();
  if (currentFile !== undefined) void predict();
});
fileInput.addEventListener('change', () => choose(fileInput.files?.[0]));
form.addEventListener('submit', (event) => {
  event.preventDefault();
  void predict();
});

// Drop anywhere on the page (and never let the browser navigate to a dropped file).
let dragDepth = 0;
document.addEventListener('dragenter', (event) => {
  event.preventDefault();
  dragDepth++;
  document.body.classList.add('dragging');
});
document.addEventListener('dragleave', () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) document.body.classList.remove('dragging');
});
document.addEventListener('dragover', (event) => event.preventDefault());
document.addEventListener('drop', (event) => {
  event.preventDefault();
  dragDepth = 0;
  document.body.classList.remove('dragging');
  choose(event.dataTransfer?.files[0]);
});

void loadModels();
