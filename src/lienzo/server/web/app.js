// The page: the form, the queue of this page's prompts, live progress and previews, and error messages.
import {
  ApiError, apiUrl, blobToBase64, clientId, connectSocket, getJson, postJson, uploadImage, viewUrl,
} from "./api.js";
import { Gallery } from "./gallery.js";
import { MaskEditor } from "./mask.js";
import { renderXray } from "./xray.js";
import { buildWorkflow, describeError, MAX_PROMPT_CHARS } from "./workflow.js";

const $ = (id) => document.getElementById(id);
const form = $("generate-form");
const mask = new MaskEditor($("mask-canvas"), $("brush"));
const pending = new Map();
let running = null;
let source = null;
let previewUrl = null;

const IMAGE_MODES = ["img2img", "inpaint", "outpaint"];

class InputError extends Error {}

function showMessage(lines) {
  const box = $("message");
  const list = document.createElement("ul");
  for (const line of Array.isArray(lines) ? lines : [lines]) {
    const item = document.createElement("li");
    item.textContent = line;
    list.append(item);
  }
  box.replaceChildren(list);
  box.hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
  $("message").replaceChildren();
}

function report(error) {
  if (error instanceof ApiError) showMessage(describeError(error.body));
  else showMessage(error.message || String(error));
}

function mode() {
  return form.querySelector("input[name=mode]:checked").value;
}

function setMode(value) {
  form.querySelector(`input[name=mode][value=${value}]`).checked = true;
  showModeInputs();
}

function showModeInputs() {
  const current = mode();
  $("image-inputs").hidden = !IMAGE_MODES.includes(current);
  $("grid-options").hidden = current !== "grid";
  $("xray-options").hidden = current !== "xray";
  $("mask-tools").hidden = current !== "inpaint";
  $("mask-canvas").hidden = current !== "inpaint";
  $("padding").hidden = current !== "outpaint";
}

function fillSelect(select, names) {
  select.replaceChildren(...names.map((name) => new Option(name, name)));
}

async function loadOptions() {
  const info = await getJson("object_info");
  const sampler = info.KSampler.input.required;
  fillSelect($("model"), info.CheckpointLoaderSimple.input.required.ckpt_name[0]);
  fillSelect($("sampler"), sampler.sampler_name[0]);
  fillSelect($("scheduler"), sampler.scheduler[0]);
  const loras = info.LoraLoader ? info.LoraLoader.input.required.lora_name[0] : [];
  $("lora-picker").append(...loras.map((name) => new Option(name, name)));
  const embeddings = await getJson("embeddings");
  $("embedding-picker").append(...embeddings.map((name) => new Option(name, name)));
}

function insertIntoPrompt(text) {
  const box = $("prompt");
  const start = box.selectionStart ?? box.value.length;
  const end = box.selectionEnd ?? box.value.length;
  const before = box.value.slice(0, start);
  const spacer = before && !/\s$/.test(before) ? " " : "";
  box.value = `${before}${spacer}${text}${box.value.slice(end)}`;
  box.focus();
  box.selectionStart = box.selectionEnd = start + spacer.length + text.length;
}

function number(id, label, { min, max, step, integer = true }) {
  const raw = $(id).value.trim();
  const value = Number(raw);
  const wrong = raw === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value));
  if (wrong || value < min || value > max || (step && value % step !== 0)) {
    const multiple = step ? `a multiple of ${step} ` : "";
    const kind = integer ? "a whole number" : "a number";
    throw new InputError(`${label} ${raw === "" ? "is empty" : `${raw} is not allowed`}: use ${multiple || kind + " "}from ${min} to ${max}.`);
  }
  return value;
}

// The form's settings, checked: every mistake becomes a message naming the field and what to do.
function readForm() {
  const prompt = $("prompt").value.trim();
  if (!prompt) throw new InputError("The prompt is empty: describe the image you want in the Prompt box.");
  if (prompt.length > MAX_PROMPT_CHARS) {
    throw new InputError(`The prompt is ${prompt.length} characters long; the page accepts at most ${MAX_PROMPT_CHARS}. Shorten it.`);
  }
  const params = {
    mode: mode(), prompt, negative: $("negative").value.trim(), model: $("model").value,
    sampler: $("sampler").value, scheduler: $("scheduler").value,
    steps: number("steps", "Steps", { min: 1, max: 150 }),
    cfg: number("cfg", "CFG scale", { min: 0, max: 30, integer: false }),
    width: number("width", "Width", { min: 64, max: 2048, step: 8 }),
    height: number("height", "Height", { min: 64, max: 2048, step: 8 }),
    batch: number("batch", "Batch size", { min: 1, max: 16 }),
    seed: $("random-seed").checked ? Math.floor(Math.random() * 2 ** 32)
      : number("seed", "Seed", { min: 0, max: Number.MAX_SAFE_INTEGER }),
  };
  if (!params.model) throw new InputError("No model is available: put a checkpoint in the models folder.");
  if (params.mode === "grid") {
    params.axes = ["x-axis", "y-axis", "z-axis"].map((id) => $(id).value.trim());
    if (!params.axes[0]) throw new InputError("Give the grid an X axis, e.g. cfg=3,7,11.");
  }
  if (params.mode === "xray") params.every = number("every", "Trajectory interval", { min: 1, max: 1000 });
  if (IMAGE_MODES.includes(params.mode)) {
    if (!source) throw new InputError("Choose a source image first (drop it on the image box or use Source image).");
    params.denoise = number("denoise", "Denoising strength", { min: 0, max: 1, integer: false });
    params.width = source.width;
    params.height = source.height;
  }
  if (params.mode === "inpaint" && mask.isEmpty()) {
    throw new InputError("The mask is empty: paint over the part of the image to repaint.");
  }
  if (params.mode === "outpaint") {
    params.padding = {};
    for (const side of ["left", "top", "right", "bottom"]) {
      params.padding[side] = number(`pad-${side}`, `Padding ${side}`, { min: 0, max: 1024, step: 8 });
    }
    if (Object.values(params.padding).every((value) => value === 0)) {
      throw new InputError("All outpaint paddings are 0: give at least one side some pixels to add.");
    }
    params.width += params.padding.left + params.padding.right;
    params.height += params.padding.top + params.padding.bottom;
  }
  return params;
}

async function generate() {
  clearMessage();
  let params;
  try {
    params = readForm();
  } catch (error) {
    report(error);
    return;
  }
  try {
    if (IMAGE_MODES.includes(params.mode)) params.image = source.name;
    if (params.mode === "inpaint") params.mask = await uploadImage(await mask.toBlob(), "lienzo-mask.png");
    const promptId = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
    pending.set(promptId, params);
    updateButtons();
    const body = { prompt: buildWorkflow(params), client_id: clientId, prompt_id: promptId,
      extra_data: { lienzo_page: params } };
    await postJson("prompt", body).catch((error) => {
      pending.delete(promptId);
      throw error;
    });
    if (running !== promptId && pending.has(promptId)) {
      $("status").textContent = pending.size > 1 ? `Queued (${pending.size} waiting).` : "Queued.";
    }
  } catch (error) {
    report(error);
  } finally {
    updateButtons();
  }
}

function updateButtons() {
  $("cancel").disabled = pending.size === 0;
}

async function cancel() {
  const waiting = [...pending.keys()].filter((id) => id !== running);
  try {
    if (waiting.length) await postJson("queue", { delete: waiting });
    if (running) await postJson("interrupt", { prompt_id: running });
  } catch (error) {
    report(error);
  }
  for (const id of waiting) pending.delete(id);
  updateButtons();
  $("status").textContent = "Cancelled.";
}

async function finished(promptId) {
  pending.delete(promptId);
  if (running === promptId) running = null;
  updateButtons();
  const history = await getJson(`history/${promptId}`);
  const entry = history[promptId];
  if (!entry) return;
  gallery.add(promptId, entry, true);
  const xray = Object.values(entry.outputs || {}).find((output) => output.xray);
  if (xray) renderXray($("xray"), xray.xray[0]);
  else $("xray").hidden = true;
  if (entry.status && entry.status.completed) {
    $("status").textContent = "Done.";
    $("progress").value = $("progress").max;
    $("live-preview").hidden = true;
  }
}

function onMessage(message) {
  const data = message.data || {};
  const ours = data.prompt_id && pending.has(data.prompt_id);
  if (message.type === "status") {
    const left = data.status && data.status.exec_info ? data.status.exec_info.queue_remaining : 0;
    // Other clients' work, shown while this page has nothing of its own to report.
    const idle = /^(Ready|Server queue)/.test($("status").textContent);
    if (!pending.size && idle) $("status").textContent = left ? `Server queue: ${left}.` : "Ready.";
  } else if (!ours) {
    return;
  } else if (message.type === "execution_start") {
    running = data.prompt_id;
    $("progress").value = 0;
    $("status").textContent = "Running…";
  } else if (message.type === "progress") {
    $("progress").max = data.max;
    $("progress").value = data.value;
    $("status").textContent = `Step ${data.value} of ${data.max}.`;
  } else if (message.type === "execution_error") {
    showMessage(`${data.node_type || "The workflow"} failed: ${data.exception_message}`);
    $("status").textContent = "Failed.";
  } else if (message.type === "execution_interrupted") {
    $("status").textContent = "Cancelled.";
    $("live-preview").hidden = true;
  } else if (message.type === "executing" && data.node === null) {
    finished(data.prompt_id).catch(report);
  }
}

function onPreview(blob) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(blob);
  $("live-preview").src = previewUrl;
  $("live-preview").hidden = false;
}

// A source image for img2img, inpainting or outpainting: checked by the browser, then uploaded.
async function loadSource(blob, name) {
  clearMessage();
  const url = URL.createObjectURL(blob);
  const image = $("source-preview");
  const loaded = await new Promise((resolve) => {
    image.onload = () => resolve(true);
    image.onerror = () => resolve(false);
    image.src = url;
  });
  if (!loaded) {
    source = null;
    image.removeAttribute("src");
    showMessage(`${name} could not be read as an image: choose a PNG, JPEG or WebP file.`);
    return;
  }
  try {
    const stored = await uploadImage(blob, name);
    source = { name: stored, width: image.naturalWidth, height: image.naturalHeight };
    mask.reset(image.naturalWidth, image.naturalHeight);
  } catch (error) {
    source = null;
    report(error);
  }
}

function fillForm(params) {
  const set = (id, value) => { if (value !== undefined && value !== null) $(id).value = value; };
  const missing = [];
  for (const [id, value] of [["model", params.model], ["sampler", params.sampler], ["scheduler", params.scheduler]]) {
    if (value === undefined || value === null) continue;
    if ([...$(id).options].some((option) => option.value === value)) $(id).value = value;
    else missing.push(`${id} ${value}`);
  }
  set("prompt", params.prompt);
  set("negative", params.negative ?? params.negative_prompt);
  set("steps", params.steps);
  set("cfg", params.cfg);
  set("width", params.width);
  set("height", params.height);
  set("batch", params.batch);
  set("denoise", params.denoise ?? (params.strength !== 1 ? params.strength : undefined));
  if (params.seed !== undefined && params.seed !== null) {
    $("seed").value = params.seed;
    $("random-seed").checked = false;
  }
  if (missing.length) showMessage(`Not available on this server, left as they were: ${missing.join(", ")}.`);
}

async function readPngParameters(file) {
  clearMessage();
  const answer = await postJson("sdapi/v1/png-info", { image: await blobToBase64(file) });
  if (!answer.info) {
    showMessage(`${file.name} has no generation parameters (no A1111 "parameters" text chunk).`);
    return;
  }
  fillForm(answer.parameters);
  $("status").textContent = `Parameters read from ${file.name}.`;
}

async function sendToImg2img(image) {
  setMode("img2img");
  const response = await fetch(viewUrl(image));
  await loadSource(await response.blob(), image.filename);
  $("prompt").focus();
}

const gallery = new Gallery($("results"), $("gallery"), {
  reuse: (params) => { clearMessage(); fillForm(params); $("prompt").focus(); },
  sendToImg2img: (image) => sendToImg2img(image).catch(report),
});

function droppedFile(event) {
  event.preventDefault();
  return event.dataTransfer && event.dataTransfer.files.length ? event.dataTransfer.files[0] : null;
}

function wireEvents() {
  form.addEventListener("submit", (event) => { event.preventDefault(); generate(); });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      generate();
    }
  });
  $("cancel").addEventListener("click", cancel);
  for (const radio of form.querySelectorAll("input[name=mode]")) radio.addEventListener("change", showModeInputs);
  $("lora-picker").addEventListener("change", (event) => {
    if (event.target.value) insertIntoPrompt(`<lora:${event.target.value.replace(/\.[^.]+$/, "")}:1>`);
    event.target.value = "";
  });
  $("embedding-picker").addEventListener("change", (event) => {
    if (event.target.value) insertIntoPrompt(event.target.value);
    event.target.value = "";
  });
  $("source-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) loadSource(file, file.name);
  });
  $("mask-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (!file) return;
    const image = new Image();
    image.onload = () => { try { mask.load(image); clearMessage(); } catch (error) { report(error); } };
    image.onerror = () => showMessage(`${file.name} could not be read as an image.`);
    image.src = URL.createObjectURL(file);
  });
  $("mask-clear").addEventListener("click", () => mask.clear());
  $("mask-invert").addEventListener("click", () => mask.invert());
  for (const zone of [$("drop-zone"), $("canvas-box")]) {
    zone.addEventListener("dragover", (event) => event.preventDefault());
    zone.addEventListener("drop", (event) => {
      event.stopPropagation();
      const file = droppedFile(event);
      if (file) loadSource(file, file.name);
    });
  }
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    const file = droppedFile(event);
    if (file) readPngParameters(file).catch(report);
  });
}

async function start() {
  $("node-editor").href = apiUrl("comfyui/");
  wireEvents();
  showModeInputs();
  connectSocket(onMessage, onPreview);
  try {
    await loadOptions();
    await gallery.load();
  } catch (error) {
    report(error);
  }
  document.body.dataset.ready = "true";
}

start();
