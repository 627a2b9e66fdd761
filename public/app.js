// Ocular playground: a worked example of the public API, in plain JavaScript with no build step.
//   GET  /v2                          -> the server's name and version (the header)
//   GET  /v1/models                   -> the model picker (image tasks only; tensor models are named in a note)
//   GET  /readyz                      -> polled while models load
//   POST /v1/models/{name}/predict    -> the image as the raw body, the task's parameters in the query string;
//                                        the answer is drawn over the image
// Every request goes to this page's own origin. An API key, when the server asks for one (a 401), is sent as
// `Authorization: Bearer <key>` and kept in sessionStorage (this tab only).

import { compactJson, decodeRleCounts, fitText, parseServerTiming, placeLabels } from './lib.js';

const KEY_STORAGE = 'ocular.apiKey';
const MODEL_STORAGE = 'ocular.model';
const PALETTE = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#00a3a3', '#f032e6', '#808000', '#9a6324', '#000075'];
/** The tasks this page can draw; any other model (task `tensor`) takes tensors, not images. */
const IMAGE_TASKS = ['image-classification', 'object-detection', 'semantic-segmentation', 'ocr'];
/** The project's own drawn samples (scripts/make-examples.ts), one per task. */
const SAMPLES = {
  'image-classification': { file: 'television.png', what: 'a television' },
  'object-detection': { file: 'stop-sign.png', what: 'a stop sign' },
  'semantic-segmentation': { file: 'television.png', what: 'a television' },
  ocr: { file: 'no-parking.png', what: 'a “NO PARKING” sign' },
};
const POLL_MS = 1000;

/** @param {string} id */
function byId(id) {
  const el = document.getElementById(id);
  if (el === null) throw new Error(`#${id} is missing from the page`);
  return el;
}

const form = /** @type {HTMLFormElement} */ (byId('form'));
const modelSelect = /** @type {HTMLSelectElement} */ (byId('model'));
const modelInfo = byId('model-info');
const keyField = byId('api-key-field');
const keyInput = /** @type {HTMLInputElement} */ (byId('api-key'));
const fileInput = /** @type {HTMLInputElement} */ (byId('file'));
const runButton = /** @type {HTMLButtonElement} */ (byId('run'));
const sampleButton = /** @type {HTMLButtonElement} */ (byId('sample'));
const paramsBox = byId('params');
const topK = /** @type {HTMLInputElement} */ (byId('top-k'));
const scoreThreshold = /** @type {HTMLInputElement} */ (byId('score-threshold'));
const iouThreshold = /** @type {HTMLInputElement} */ (byId('iou-threshold'));
const classesInput = /** @type {HTMLInputElement} */ (byId('classes'));
const classNames = byId('class-names');
const opacity = /** @type {HTMLInputElement} */ (byId('opacity'));
const versionPill = byId('server-version');
const note = byId('note');
const statusLine = byId('status');
const errorLine = byId('error');
const progress = byId('progress');
const progressText = byId('progress-text');
const elapsed = byId('elapsed');
const cancelButton = /** @type {HTMLButtonElement} */ (byId('cancel'));
const resultSection = byId('result');
const stage = byId('stage');
const canvas = /** @type {HTMLCanvasElement} */ (byId('canvas'));
const caption = byId('caption');
const items = byId('items');
const timingsBody = /** @type {HTMLTableSectionElement} */ (byId('timings').querySelector('tbody'));
const jsonView = byId('json');
const copyButton = byId('copy');
const copyStatus = byId('copy-status');

/** @type {{ name: string, version: string, task: string, state: string, provider?: string, reason?: string }[]} */
let models = [];
/** @type {File | undefined} */
let currentFile;
/** Only the latest request may update the page. */
let sequence = 0;
/** @type {AbortController | undefined} */
let inFlight;
/** What the request in flight asks (file, model, query): the same run asked again (Enter fires change and submit) is not restarted. */
let inFlightAsk = '';
/** @type {ReturnType<typeof setInterval> | undefined} */
let ticker;
/** @type {ReturnType<typeof setTimeout> | undefined} */
let pollTimer;
/** A run asked for while the model loads: made once it is ready. */
let runWhenReady = false;
/** The parameters the user has set; the others are left to the model's own defaults (none is sent). */
const touched = new Set();
/** Labels seen in this model's answers, offered by the class filter. @type {Map<string, Set<string>>} */
const seenLabels = new Map();
/**
 * What is on the canvas, redrawn on resize, highlight or opacity change.
 * @type {{ body: any, image: HTMLImageElement | undefined, highlight: number, seg: SegOverlay | undefined, caption: (shapes: string) => string } | undefined}
 */
let view;
/** @typedef {{ map: Uint8Array, overlay: HTMLCanvasElement | undefined, alpha: number, highlight: number }} SegOverlay */

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

/** The server asked for a key (a 401): from now on the page shows the key field. */
function askForKey() {
  keyField.hidden = false;
}

/**
 * The body of an answer as JSON; an answer that is not JSON (a proxy's HTML error page) becomes a message.
 * @param {Response} res
 */
async function readBody(res) {
  const text = await res.text();
  try {
    return { body: JSON.parse(text), text };
  } catch {
    return { body: { code: 'NOT_JSON', message: `${res.status} ${res.statusText}: ${text.slice(0, 200)}` }, text };
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
        : res.status === 503 && res.headers.get('retry-after') !== null
          ? ` Try again in ${res.headers.get('retry-after')} s.`
          : '';
  return `${res.status} ${code}: ${message.replace(/\.$/, '')}.${hint}`;
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

// ---- server and models ----

async function loadVersion() {
  try {
    const res = await fetch('/v2', { headers: { accept: 'application/json', ...authHeaders() } });
    if (res.status === 401) askForKey();
    if (!res.ok) return;
    const { body } = await readBody(res);
    if (typeof body.version === 'string') {
      versionPill.textContent = `v${body.version}`;
      versionPill.title = `${body.name ?? 'ocular'} server version`;
      versionPill.hidden = false;
    }
  } catch {
    // The header goes without a version; the model list says what is wrong.
  }
}

async function loadModels() {
  if (models.length === 0) setStatus('Loading the model list…');
  let res;
  try {
    res = await fetch('/v1/models', { headers: { accept: 'application/json', ...authHeaders() } });
  } catch (err) {
    showError(`Cannot reach the server: ${err instanceof Error ? err.message : String(err)}`);
    setStatus('');
    return;
  }
  const { body } = await readBody(res);
  if (!res.ok) {
    showError(describeError(res, body));
    setStatus('');
    if (res.status === 401 || res.status === 403) {
      askForKey();
      keyInput.focus();
    } else if (res.status >= 500) schedulePoll();
    return;
  }
  clearError();
  const all = Array.isArray(body.models) ? body.models : [];
  models = all.filter((/** @type {any} */ m) => IMAGE_TASKS.includes(m.task));
  const others = all.filter((/** @type {any} */ m) => !IMAGE_TASKS.includes(m.task));
  note.textContent =
    others.length === 0
      ? ''
      : `Not in the picker, as they take tensors rather than images: ${others.map((/** @type {any} */ m) => `${m.name} (${m.task})`).join(', ')}. Call them through POST /v2/models/{name}/infer.`;
  note.hidden = others.length === 0;

  const wanted = modelSelect.value || sessionStorage.getItem(MODEL_STORAGE) || '';
  modelSelect.replaceChildren(
    ...models.map((m) => {
      const option = document.createElement('option');
      option.value = m.name;
      option.textContent = `${m.name} (${m.task}${m.state === 'READY' ? '' : `, ${m.state.toLowerCase()}`})`;
      return option;
    }),
  );
  const chosen = models.find((m) => m.name === wanted) ?? models.find((m) => m.state === 'READY') ?? models[0];
  if (chosen !== undefined) modelSelect.value = chosen.name;
  modelChanged();
}

function selectedModel() {
  return models.find((m) => m.name === modelSelect.value);
}

/** The picker's model changed (or its state): its controls, its sample, the loading state. */
function modelChanged() {
  const m = selectedModel();
  modelInfo.textContent =
    m === undefined
      ? ''
      : `${m.task}, version ${m.version}, ${m.state.toLowerCase()}${m.provider !== undefined ? ` on ${m.provider}` : ''}${m.reason !== undefined ? `: ${m.reason}` : ''}`;
  const task = m?.task ?? '';
  let anyParam = false;
  for (const el of paramsBox.querySelectorAll('.param')) {
    const on = (/** @type {HTMLElement} */ (el).dataset['tasks'] ?? '').split(' ').includes(task);
    /** @type {HTMLElement} */ (el).hidden = !on;
    anyParam ||= on;
  }
  paramsBox.hidden = !anyParam;
  classNames.replaceChildren(
    ...[...(seenLabels.get(m?.name ?? '') ?? [])].sort().map((label) => {
      const option = document.createElement('option');
      option.value = label;
      return option;
    }),
  );
  const sample = SAMPLES[/** @type {keyof typeof SAMPLES} */ (task)];
  sampleButton.hidden = sample === undefined;
  if (sample !== undefined) sampleButton.textContent = `Try the sample (${sample.what})`;

  const loading = models.filter((x) => x.state === 'LOADING');
  const ready = m?.state === 'READY';
  runButton.disabled = !ready || inFlight !== undefined;
  sampleButton.disabled = !ready || inFlight !== undefined;
  if (models.length === 0) setStatus('This server serves no image models.');
  else if (m?.state === 'LOADING') {
    setStatus(`Models are loading (${models.length - loading.length} of ${plural(models.length, 'model')} ready)… the Run button turns on when ${m.name} is ready.`);
    schedulePoll();
  } else if (m?.state === 'UNAVAILABLE') setStatus(`${m.name} is unavailable: pick another model.`);
  else if (inFlight === undefined && currentFile === undefined) {
    setStatus(`${plural(models.length, 'model')} ready to try. Choose or drop an image, or try the sample.`);
  }
  if (loading.length > 0) schedulePoll();
  if (ready && runWhenReady) {
    runWhenReady = false;
    void predict();
  }
}

/**
 * While a model loads: ask /readyz (open to all unless probes need a key) once a second; while some of the picker's
 * models still load there, update their states, else read the model list again (which says what changed).
 */
function schedulePoll() {
  if (pollTimer !== undefined) return;
  pollTimer = setTimeout(async () => {
    let states;
    try {
      const res = await fetch('/readyz', { headers: { accept: 'application/json', ...authHeaders() } });
      const { body } = await readBody(res);
      if (res.status !== 401 && Array.isArray(body.models)) states = new Map(body.models.map((/** @type {any} */ s) => [s.name, s.state]));
    } catch {
      // The server is restarting: ask again.
    }
    pollTimer = undefined;
    if (states !== undefined && models.some((m) => states.get(m.name) === 'LOADING')) {
      for (const m of models) m.state = states.get(m.name) ?? m.state;
      modelChanged();
    } else await loadModels();
  }, POLL_MS);
}

// ---- parameters ----

/** The query string for the chosen model's task: only the parameters the user set. */
function queryFor(task) {
  const q = new URLSearchParams();
  if (task === 'image-classification' && touched.has('top_k')) {
    const k = Math.round(Number(topK.value));
    if (Number.isFinite(k) && k >= 1) q.set('top_k', String(Math.min(k, 50)));
  }
  if (task === 'object-detection') {
    if (touched.has('score_threshold')) q.set('score_threshold', scoreThreshold.value);
    if (touched.has('iou_threshold')) q.set('iou_threshold', iouThreshold.value);
  }
  if ((task === 'object-detection' || task === 'semantic-segmentation') && classesInput.value.trim() !== '') {
    q.set(
      'classes',
      classesInput.value
        .split(',')
        .map((c) => c.trim())
        .filter((c) => c !== '')
        .join(','),
    );
  }
  const s = q.toString();
  return s === '' ? '' : `?${s}`;
}

function showParamValues() {
  byId('score-threshold-out').textContent = touched.has('score_threshold') ? scoreThreshold.value : '(model default)';
  byId('iou-threshold-out').textContent = touched.has('iou_threshold') ? iouThreshold.value : '(model default)';
  byId('opacity-out').textContent = opacity.value;
}

// ---- predict ----

async function predict() {
  const file = currentFile;
  const m = selectedModel();
  if (file === undefined) {
    setStatus('Choose or drop an image first, or try the sample.');
    return;
  }
  if (m === undefined) {
    setStatus('No model to run.');
    return;
  }
  if (m.state === 'LOADING') {
    runWhenReady = true;
    modelChanged();
    return;
  }
  const query = queryFor(m.task);
  const ask = `${m.name}${query}`;
  if (inFlight !== undefined && inFlightAsk === ask && currentFile === file) return;
  inFlight?.abort();
  const controller = new AbortController();
  inFlight = controller;
  inFlightAsk = ask;
  const mine = ++sequence;
  clearError();
  // The previous answer goes at once: nothing on screen belongs to another run.
  resultSection.hidden = true;
  view = undefined;
  items.replaceChildren();
  jsonView.textContent = '';
  runButton.disabled = true;
  sampleButton.disabled = true;
  setStatus(`Running ${m.name} on ${file.name}…`);
  startProgress(`Running ${m.name} on ${file.name}`);

  // The format is identified by the server from the bytes; an image/* type is passed on, anything else is sent
  // as application/octet-stream so that the server, not the browser's guess, says what the file is.
  const contentType = file.type.startsWith('image/') ? file.type : 'application/octet-stream';
  const started = performance.now();
  const picture = loadPicture(file);
  try {
    const res = await fetch(`/v1/models/${encodeURIComponent(m.name)}/predict${query}`, {
      method: 'POST',
      headers: { 'content-type': contentType, accept: 'application/json', ...authHeaders() },
      body: file,
      signal: controller.signal,
    });
    const { body, text } = await readBody(res);
    const roundTripMs = performance.now() - started;
    if (mine !== sequence) return;
    if (!res.ok) {
      showError(describeError(res, body));
      if (res.status === 401) askForKey();
      if (res.status === 503 && body?.code === 'MODEL_NOT_READY') {
        // Loading (a reload, a restart): wait for it and run again, rather than leave a dead button.
        runWhenReady = true;
        m.state = 'LOADING';
      }
      setStatus(`${file.name}: ${m.name} refused it.`);
      return;
    }
    const image = await picture;
    if (mine !== sequence) return;
    showAnswer(file, body, text, image, res, roundTripMs);
    setStatus(`${file.name}: ${summarise(body)}.`);
  } catch (err) {
    if (mine !== sequence) return;
    if (controller.signal.aborted) setStatus(`${file.name}: cancelled.`);
    else {
      showError(`The request failed: ${err instanceof Error ? err.message : String(err)}`);
      setStatus(`${file.name}: the request failed.`);
    }
  } finally {
    if (mine === sequence) {
      inFlight = undefined;
      stopProgress();
      modelChanged();
    }
  }
}

/** @param {string} text */
function startProgress(text) {
  const t0 = performance.now();
  progressText.textContent = `${text}…`;
  elapsed.textContent = '0.0 s';
  progress.hidden = false;
  // The progress bar says it on screen; the status line still tells a screen reader.
  statusLine.classList.add('visually-hidden');
  clearInterval(ticker);
  ticker = setInterval(() => {
    elapsed.textContent = `${((performance.now() - t0) / 1000).toFixed(1)} s`;
  }, 100);
}

function stopProgress() {
  clearInterval(ticker);
  ticker = undefined;
  progress.hidden = true;
  statusLine.classList.remove('visually-hidden');
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
  if (Array.isArray(body.detections)) return body.detections.length === 0 ? 'nothing detected' : plural(body.detections.length, 'detection');
  if (Array.isArray(body.lines)) return body.lines.length === 0 ? 'no text found' : `${plural(body.lines.length, 'line')} of text`;
  if (Array.isArray(body.classes)) return plural(body.classes.length, 'class', 'classes');
  return 'answered';
}

/**
 * @param {File} file
 * @param {any} body
 * @param {string} text
 * @param {HTMLImageElement | undefined} image
 * @param {Response} res
 * @param {number} roundTripMs
 */
function showAnswer(file, body, text, image, res, roundTripMs) {
  const labels = seenLabels.get(body.model) ?? new Set();
  for (const x of body.predictions ?? body.detections ?? body.classes ?? []) if (typeof x.label === 'string') labels.add(x.label);
  seenLabels.set(body.model, labels);

  const requestId = res.headers.get('x-request-id');
  view = {
    body,
    image,
    highlight: -1,
    seg: Array.isArray(body.classes) ? segmentationMap(body) : undefined,
    caption: (/** @type {string} */ shapes) =>
      `${body.model} ${body.version} · ${body.width}×${body.height} px · ${shapes}${image === undefined ? ' (this browser cannot show the image itself)' : ''}${
        requestId !== null ? ` · request ${requestId}` : ''
      }`,
  };
  resultSection.hidden = false;
  const shapes = render();
  canvas.setAttribute('aria-label', `${file.name} with ${shapes.description} drawn over it`);
  // On a phone the picture is below the controls: bring it into view.
  if (window.matchMedia('(max-width: 899px)').matches) stage.scrollIntoView({ block: 'start' });

  items.replaceChildren(...listItems(body));

  const rows = parseServerTiming(res.headers.get('server-timing'));
  rows.push(['round trip (browser)', roundTripMs]);
  const longest = Math.max(1e-9, ...rows.map(([, ms]) => (Number.isFinite(ms) ? ms : 0)));
  timingsBody.replaceChildren(
    ...rows.map(([name, ms]) => {
      const tr = document.createElement('tr');
      if (name === 'total') tr.className = 'total';
      if (name.includes('browser')) tr.className = 'browser';
      const th = document.createElement('th');
      th.scope = 'row';
      th.textContent = name;
      const track = document.createElement('td');
      track.className = 'track';
      const bar = document.createElement('div');
      bar.className = 'bar';
      // CSSOM, not a style attribute: the page's CSP allows no inline style, and this is no inline style.
      bar.style.width = `${Number.isFinite(ms) ? Math.max(0, Math.min(100, (ms / longest) * 100)).toFixed(1) : 0}%`;
      track.append(bar);
      const td = document.createElement('td');
      td.className = 'num';
      td.textContent = Number.isFinite(ms) ? ms.toFixed(2) : '–';
      tr.append(th, track, td);
      return tr;
    }),
  );

  jsonView.dataset['raw'] = text;
  jsonView.textContent = compactJson(body);
  copyStatus.textContent = '';
}

/** @param {any} body */
function listItems(body) {
  /** @type {{ text: string, score: number, colour?: string, title?: string, bar?: boolean }[]} */
  let rows = [];
  if (Array.isArray(body.predictions)) rows = body.predictions.map((/** @type {any} */ p) => ({ text: p.label, score: p.score, bar: true }));
  else if (Array.isArray(body.detections))
    rows = body.detections.map((/** @type {any} */ d) => ({ text: d.label, score: d.score, colour: colour(d.index), title: `box ${boxText(d.box)}` }));
  else if (Array.isArray(body.lines))
    rows = body.lines.map((/** @type {any} */ l, /** @type {number} */ i) => ({ text: `“${l.text}”`, score: l.score, colour: colour(i), title: `box ${boxText(l.box)}` }));
  else if (Array.isArray(body.classes))
    rows = body.classes.map((/** @type {any} */ c) => ({ text: c.label, score: c.fraction, colour: colour(c.index), title: `${c.area} px in ${boxText(c.box)}` }));
  if (rows.length === 0) {
    const li = document.createElement('li');
    const span = document.createElement('span');
    span.className = 'empty';
    span.textContent = 'Nothing found: try a lower threshold or another image.';
    li.append(span);
    return [li];
  }
  return rows.map((row, i) => {
    const li = document.createElement('li');
    li.tabIndex = 0;
    li.dataset['index'] = String(i);
    if (row.title !== undefined) li.title = row.title;
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = row.colour ?? 'transparent';
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = row.text;
    const score = document.createElement('span');
    score.className = 'score';
    score.textContent = ` ${percent(row.score)}`;
    li.append(swatch, text, score);
    if (row.bar === true) {
      const bar = document.createElement('span');
      bar.className = 'bar';
      bar.style.width = `${Math.max(1, Math.min(100, row.score * 100)).toFixed(1)}%`;
      li.append(bar);
    }
    return li;
  });
}

/** @param {{ x1: number, y1: number, x2: number, y2: number }} b */
function boxText(b) {
  return `(${Math.round(b.x1)}, ${Math.round(b.y1)})–(${Math.round(b.x2)}, ${Math.round(b.y2)})`;
}

// ---- segmentation: the classes' COCO RLE masks as one class map ----

/**
 * One byte per pixel: 0 where no class was answered, else 1 + the class's position in `body.classes`.
 * @param {any} body
 * @returns {SegOverlay}
 */
function segmentationMap(body) {
  const w = body.width;
  const h = body.height;
  const map = new Uint8Array(w * h);
  body.classes.forEach((/** @type {any} */ c, /** @type {number} */ slot) => {
    const counts = c.mask === undefined ? undefined : decodeRleCounts(c.mask.counts);
    if (counts === undefined || c.mask.size[0] !== h || c.mask.size[1] !== w || slot > 254) return;
    if (counts.reduce((a, b) => a + b, 0) !== w * h) return;
    let pos = 0;
    counts.forEach((run, j) => {
      if (j % 2 === 1) {
        for (let i = pos; i < pos + run; i++) map[(i % h) * w + Math.floor(i / h)] = slot + 1;
      }
      pos += run;
    });
  });
  return { map, overlay: undefined, alpha: -1, highlight: -2 };
}

/** @param {string} hex */
function rgb(hex) {
  const n = Number.parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/**
 * The class map coloured at the image's size (made again when the opacity or the highlight changes).
 * @param {any} body
 * @param {SegOverlay} seg
 * @param {number} highlight
 */
function segmentationOverlay(body, seg, highlight) {
  const alpha = Number(opacity.value);
  if (seg.overlay !== undefined && seg.alpha === alpha && seg.highlight === highlight) return seg.overlay;
  const off = document.createElement('canvas');
  off.width = body.width;
  off.height = body.height;
  const octx = off.getContext('2d');
  if (octx === null) return undefined;
  const img = octx.createImageData(body.width, body.height);
  const colours = body.classes.map((/** @type {any} */ c, /** @type {number} */ slot) => {
    // Background is left untinted unless pointed at: the objects are what the overlay shows.
    const base = /^background$/i.test(c.label) ? 0 : alpha;
    const a = highlight < 0 ? base : highlight === slot ? alpha : base * 0.2;
    return [...rgb(colour(c.index)), Math.round(a * 255)];
  });
  for (let i = 0; i < seg.map.length; i++) {
    const slot = seg.map[i] ?? 0;
    if (slot === 0) continue;
    const c = colours[slot - 1];
    img.data.set(c, i * 4);
  }
  octx.putImageData(img, 0, 0);
  seg.overlay = off;
  seg.alpha = alpha;
  seg.highlight = highlight;
  return off;
}

// ---- drawing: at the size shown (labels in CSS pixels, legible at any image size), the answer scaled to it ----

/** @typedef {import('./lib.js').Rect} Rect */

/** @returns {{ count: number, description: string }} */
function render() {
  if (view === undefined) return { count: 0, description: 'nothing' };
  const { body, image, highlight } = view;
  const w = Math.max(1, body.width);
  const h = Math.max(1, body.height);
  const room = Math.max(120, stage.clientWidth);
  const scale = Math.min(room / w, Math.max(200, window.innerHeight * 0.75) / h);
  const cssW = Math.max(1, Math.round(w * scale));
  const cssH = Math.max(1, Math.round(h * scale));
  const dpr = Math.max(1, window.devicePixelRatio || 1);
  canvas.width = Math.round(cssW * dpr);
  canvas.height = Math.round(cssH * dpr);
  canvas.style.width = `${cssW}px`;
  canvas.style.height = `${cssH}px`;
  canvas.dataset['scale'] = String(scale * dpr);
  const ctx = canvas.getContext('2d');
  if (ctx === null) return { count: 0, description: 'nothing (no 2D canvas)' };
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  if (image !== undefined) ctx.drawImage(image, 0, 0, cssW, cssH);
  else {
    ctx.fillStyle = '#dddddd';
    ctx.fillRect(0, 0, cssW, cssH);
  }
  const font = cssW < 520 ? 13 : 14;
  ctx.font = `600 ${font}px system-ui, 'DejaVu Sans', sans-serif`;
  ctx.textBaseline = 'top';
  ctx.lineJoin = 'round';
  const dim = (/** @type {number} */ i) => highlight >= 0 && highlight !== i;
  /** @type {{ rect: Rect, text: string }[]} */
  const wanted = [];
  /** @type {{ count: number, description: string }} */
  let out = { count: 0, description: 'nothing' };

  if (Array.isArray(body.predictions)) {
    out = { count: drawPredictions(ctx, body.predictions, font, cssW, cssH, highlight), description: plural(body.predictions.length, 'label') };
  } else if (Array.isArray(body.detections)) {
    body.detections.forEach((/** @type {any} */ d, /** @type {number} */ i) => {
      ctx.globalAlpha = dim(i) ? 0.3 : 1;
      ctx.strokeStyle = colour(d.index);
      ctx.lineWidth = highlight === i ? 4 : 2.5;
      ctx.strokeRect(d.box.x1 * scale, d.box.y1 * scale, (d.box.x2 - d.box.x1) * scale, (d.box.y2 - d.box.y1) * scale);
      wanted.push({ rect: scaled(d.box, scale), text: `${d.label} ${percent(d.score)}` });
    });
    ctx.globalAlpha = 1;
    out = { count: body.detections.length, description: plural(body.detections.length, 'box', 'boxes') };
  } else if (Array.isArray(body.lines)) {
    body.lines.forEach((/** @type {any} */ l, /** @type {number} */ i) => {
      ctx.globalAlpha = dim(i) ? 0.3 : 1;
      ctx.strokeStyle = colour(i);
      ctx.lineWidth = highlight === i ? 4 : 2.5;
      ctx.beginPath();
      l.polygon.forEach((/** @type {[number, number]} */ [x, y], /** @type {number} */ k) => (k === 0 ? ctx.moveTo(x * scale, y * scale) : ctx.lineTo(x * scale, y * scale)));
      ctx.closePath();
      ctx.stroke();
      wanted.push({ rect: scaled(l.box, scale), text: l.text });
    });
    ctx.globalAlpha = 1;
    out = { count: body.lines.length, description: plural(body.lines.length, 'polygon') };
  } else if (Array.isArray(body.classes) && view.seg !== undefined) {
    const overlay = segmentationOverlay(body, view.seg, highlight);
    if (overlay !== undefined) {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(overlay, 0, 0, cssW, cssH);
      ctx.imageSmoothingEnabled = true;
    }
    body.classes.forEach((/** @type {any} */ c) => wanted.push({ rect: scaled(c.box, scale), text: `${c.label} ${percent(c.fraction)}` }));
    out = { count: body.classes.length, description: `${plural(body.classes.length, 'class', 'classes')} as a mask` };
  }

  const placed = placeLabels(wanted, (text) => ctx.measureText(text).width, font, cssW, cssH);
  placed.forEach((p) => {
    if (p.rect === undefined) return;
    ctx.globalAlpha = dim(p.index) ? 0.35 : 1;
    const kind = body.detections?.[p.index]?.index ?? body.classes?.[p.index]?.index ?? p.index;
    ctx.fillStyle = colour(kind);
    ctx.fillRect(p.rect.x, p.rect.y, p.rect.w, p.rect.h);
    ctx.fillStyle = '#ffffff';
    ctx.fillText(p.text, p.rect.x + 4, p.rect.y + 3);
  });
  ctx.globalAlpha = 1;
  const shown = placed.filter((p) => p.rect !== undefined);
  canvas.dataset['shapes'] = String(out.count);
  canvas.dataset['highlight'] = String(highlight);
  canvas.dataset['labels'] = JSON.stringify(shown.map((p) => ({ ...p.rect, text: p.text })));
  const hidden = wanted.length - shown.length;
  if (hidden > 0) out.description += ` (${plural(hidden, 'label')} left off for room: see the list)`;
  caption.textContent = view.caption(out.description);
  return out;
}

/**
 * @param {{ x1: number, y1: number, x2: number, y2: number }} b
 * @param {number} s
 * @returns {Rect}
 */
function scaled(b, s) {
  return { x: b.x1 * s, y: b.y1 * s, w: (b.x2 - b.x1) * s, h: (b.y2 - b.y1) * s };
}

/** @param {number} i */
function colour(i) {
  return PALETTE[((i % PALETTE.length) + PALETTE.length) % PALETTE.length] ?? '#e6194b';
}

/**
 * Classification: the top labels with score bars, on a dark panel in the top-left corner; as many rows as fit.
 * @param {CanvasRenderingContext2D} ctx
 * @param {{ label: string, score: number }[]} predictions
 * @param {number} font
 * @param {number} width
 * @param {number} height
 * @param {number} highlight
 * @returns {number} the rows drawn
 */
function drawPredictions(ctx, predictions, font, width, height, highlight) {
  const pad = 8;
  const rowH = Math.round(font * 1.9);
  const rows = Math.max(0, Math.min(predictions.length, Math.floor((height - 3 * pad) / rowH)));
  const texts = predictions.slice(0, rows).map((p) => fitText((t) => ctx.measureText(t).width, `${p.label} ${percent(p.score)}`, width));
  const panelW = Math.min(width - 2 * pad, Math.max(0, ...texts.map((t) => ctx.measureText(t).width)) + 2 * pad);
  ctx.fillStyle = 'rgba(0, 0, 0, 0.72)';
  ctx.fillRect(pad, pad, panelW, rowH * rows + pad);
  texts.forEach((text, i) => {
    const top = pad + pad / 2 + i * rowH;
    const p = predictions[i];
    if (highlight === i) {
      ctx.fillStyle = 'rgba(255, 255, 255, 0.18)';
      ctx.fillRect(pad, top - pad / 4, panelW, rowH);
    }
    ctx.fillStyle = colour(i);
    ctx.fillRect(pad * 1.5, top + font + 3, Math.max(2, (panelW - pad) * (p?.score ?? 0)), 3);
    ctx.fillStyle = '#ffffff';
    ctx.fillText(text, pad * 1.5, top);
  });
  return rows;
}

// ---- highlight: a list item and its shape, either way ----

/** @param {number} i */
function highlight(i) {
  if (view === undefined || view.highlight === i) return;
  view.highlight = i;
  render();
  for (const li of items.querySelectorAll('li')) li.classList.toggle('active', li.dataset['index'] === String(i));
}

/**
 * The answer's item under a point of the canvas (CSS pixels), or -1.
 * @param {number} px
 * @param {number} py
 */
function itemAt(px, py) {
  if (view === undefined) return -1;
  const { body } = view;
  const scale = Number(canvas.dataset['scale']) / Math.max(1, window.devicePixelRatio || 1);
  const x = px / scale;
  const y = py / scale;
  const inBox = (/** @type {any} */ b) => x >= b.x1 && x <= b.x2 && y >= b.y1 && y <= b.y2;
  const area = (/** @type {any} */ b) => (b.x2 - b.x1) * (b.y2 - b.y1);
  /** @param {any[]} list @param {(v: any) => boolean} hit */
  const smallest = (list, hit) => {
    let best = -1;
    list.forEach((v, i) => {
      if (hit(v) && (best < 0 || area(v.box) < area(list[best].box))) best = i;
    });
    return best;
  };
  if (Array.isArray(body.detections)) return smallest(body.detections, (d) => inBox(d.box));
  if (Array.isArray(body.lines)) return smallest(body.lines, (l) => inPolygon(l.polygon, x, y));
  if (Array.isArray(body.classes) && view.seg !== undefined) {
    const ix = Math.floor(x);
    const iy = Math.floor(y);
    if (ix < 0 || iy < 0 || ix >= body.width || iy >= body.height) return -1;
    return (view.seg.map[iy * body.width + ix] ?? 0) - 1;
  }
  return -1;
}

/**
 * @param {[number, number][]} polygon
 * @param {number} x
 * @param {number} y
 */
function inPolygon(polygon, x, y) {
  let inside = false;
  for (let i = 0, j = polygon.length - 1; i < polygon.length; j = i++) {
    const [xi, yi] = polygon[i] ?? [0, 0];
    const [xj, yj] = polygon[j] ?? [0, 0];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

// ---- wiring ----

/** @param {File | undefined} file */
function choose(file) {
  if (file === undefined) return;
  currentFile = file;
  void predict();
}

async function runSample() {
  const m = selectedModel();
  const sample = SAMPLES[/** @type {keyof typeof SAMPLES} */ (m?.task ?? '')];
  if (sample === undefined) return;
  try {
    const res = await fetch(`samples/${sample.file}`);
    if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
    choose(new File([await res.blob()], sample.file, { type: 'image/png' }));
  } catch (err) {
    showError(`Cannot load the sample: ${err instanceof Error ? err.message : String(err)}`);
  }
}

keyInput.value = sessionStorage.getItem(KEY_STORAGE) ?? '';
if (keyInput.value !== '') askForKey();
keyInput.addEventListener('change', () => {
  const key = keyInput.value.trim();
  if (key === '') sessionStorage.removeItem(KEY_STORAGE);
  else sessionStorage.setItem(KEY_STORAGE, key);
  void loadVersion();
  void loadModels();
});
modelSelect.addEventListener('change', () => {
  sessionStorage.setItem(MODEL_STORAGE, modelSelect.value);
  modelChanged();
  if (currentFile !== undefined) void predict();
});
fileInput.addEventListener('change', () => choose(fileInput.files?.[0]));
form.addEventListener('submit', (event) => {
  event.preventDefault();
  void predict();
});
sampleButton.addEventListener('click', () => void runSample());
cancelButton.addEventListener('click', () => inFlight?.abort());

/** A parameter changed: remember that the user set it, and run again on the same image (no new upload step). */
for (const [input, name] of /** @type {[HTMLInputElement, string][]} */ ([
  [topK, 'top_k'],
  [scoreThreshold, 'score_threshold'],
  [iouThreshold, 'iou_threshold'],
  [classesInput, 'classes'],
])) {
  input.addEventListener('input', () => {
    touched.add(name);
    showParamValues();
  });
  input.addEventListener('change', () => {
    touched.add(name);
    showParamValues();
    if (currentFile !== undefined && selectedModel()?.state === 'READY') void predict();
  });
}
opacity.addEventListener('input', () => {
  showParamValues();
  render();
});

items.addEventListener('pointerover', (event) => {
  const li = /** @type {HTMLElement | null} */ (event.target instanceof HTMLElement ? event.target.closest('li[data-index]') : null);
  if (li !== null) highlight(Number(li.dataset['index']));
});
items.addEventListener('pointerleave', () => highlight(-1));
items.addEventListener('focusin', (event) => {
  const li = /** @type {HTMLElement | null} */ (event.target instanceof HTMLElement ? event.target.closest('li[data-index]') : null);
  if (li !== null) highlight(Number(li.dataset['index']));
});
items.addEventListener('focusout', () => highlight(-1));
canvas.addEventListener('pointermove', (event) => {
  const r = canvas.getBoundingClientRect();
  highlight(itemAt(event.clientX - r.left, event.clientY - r.top));
});
canvas.addEventListener('pointerleave', () => highlight(-1));

copyButton.addEventListener('click', async () => {
  const text = jsonView.dataset['raw'] ?? jsonView.textContent ?? '';
  try {
    await navigator.clipboard.writeText(text);
    copyStatus.textContent = 'Copied.';
  } catch {
    // No clipboard access (a page served over plain HTTP from another host): select the text for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents(jsonView);
    const selection = window.getSelection();
    selection?.removeAllRanges();
    selection?.addRange(range);
    copyStatus.textContent = 'Selected: press Ctrl+C to copy.';
  }
});
// Redrawn when the space for the image changes width (a rotated phone, a resized window).
let stageWidth = 0;
new ResizeObserver(() => {
  if (view === undefined || stage.clientWidth === stageWidth) return;
  stageWidth = stage.clientWidth;
  render();
}).observe(stage);

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

showParamValues();
void loadVersion();
void loadModels();
