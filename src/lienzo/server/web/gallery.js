// Finished images as <img> elements (alt = their prompt) with their settings: the latest run's results and
// the gallery of the server's history, each with "Reuse parameters" and "Send to img2img".
import { getJson, viewUrl } from "./api.js";
import { paramsFromWorkflow } from "./workflow.js";

const SUMMARY_FIELDS = [
  ["steps", "Steps"], ["sampler", "Sampler"], ["scheduler", "Schedule"], ["cfg", "CFG"],
  ["seed", "Seed"], ["model", "Model"],
];

// The page's own record (extra_data.lienzo_page) of a history entry, or what its workflow says.
export function entryParams(entry) {
  const extra = entry.prompt[3] || {};
  return extra.lienzo_page || paramsFromWorkflow(entry.prompt[2]) || { prompt: "" };
}

export function entryImages(entry) {
  const images = [];
  for (const output of Object.values(entry.outputs || {})) {
    for (const image of output.images || []) if (image.type === "output") images.push(image);
  }
  return images;
}

export function summary(params) {
  const parts = SUMMARY_FIELDS.filter(([key]) => params[key] !== undefined && params[key] !== null)
    .map(([key, label]) => `${label}: ${params[key]}`);
  if (params.width && params.height) parts.push(`Size: ${params.width}×${params.height}`);
  if (params.mode && params.mode !== "txt2img") parts.push(`Mode: ${params.mode}`);
  if (params.denoise !== undefined && params.denoise !== 1) parts.push(`Denoise: ${params.denoise}`);
  if (params.axes) parts.push(`Axes: ${params.axes.filter(Boolean).join(" × ")}`);
  return parts.join(", ");
}

export class Gallery {
  constructor(results, gallery, actions) {
    this.results = results;
    this.gallery = gallery;
    this.actions = actions;
    this.shown = new Set();
  }

  async load() {
    const history = await getJson("history", { max_items: 48 });
    for (const [promptId, entry] of Object.entries(history)) this.add(promptId, entry, false);
  }

  // A finished prompt: its images become the results (when `latest`) and the gallery's first items.
  add(promptId, entry, latest) {
    const params = entryParams(entry);
    const images = entryImages(entry);
    if (latest) this.results.replaceChildren(...images.map((image) => this.figure(image, params, "result")));
    if (this.shown.has(promptId)) return;
    this.shown.add(promptId);
    for (const image of images.slice().reverse()) this.gallery.prepend(this.figure(image, params, "gallery"));
  }

  figure(image, params, kind) {
    const figure = document.createElement("figure");
    figure.className = kind;
    const img = document.createElement("img");
    img.src = viewUrl(image);
    img.alt = params.prompt || "generated image";
    img.title = params.prompt || "";
    const caption = document.createElement("figcaption");
    const prompt = document.createElement("p");
    prompt.textContent = params.prompt || "(no prompt)";
    const details = document.createElement("p");
    details.className = "details";
    details.textContent = summary(params);
    caption.append(prompt, details, this.button("Reuse parameters", () => this.actions.reuse(params)),
      this.button("Send to img2img", () => this.actions.sendToImg2img(image)));
    figure.append(img, caption);
    return figure;
  }

  button(label, action) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.addEventListener("click", action);
    return button;
  }
}
