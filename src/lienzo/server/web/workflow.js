// The form's settings as a ComfyUI API-format workflow (lienzo's graph nodes), and back.

const LORA_TAG = /<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>/g;
export const MAX_PROMPT_CHARS = 4000;

// Node ids name what each node is for, so ComfyUI's node_errors read as page fields.
export const NODE_LABELS = {
  model: "Model",
  positive: "Prompt",
  negative: "Negative prompt",
  latent: "Width / height / batch size",
  source: "Source image",
  mask: "Mask",
  pad: "Outpaint padding",
  encode: "Source image",
  masked: "Mask",
  sampler: "Sampling",
  decode: "Decoding",
  save: "Saving",
  xray: "X-ray",
  grid: "Grid",
};

// The <lora:name:weight> tags of a prompt, and the prompt without them (LoraLoader nodes apply them).
export function splitLoras(prompt) {
  const loras = [];
  const text = prompt.replace(LORA_TAG, (_, name, weight) => {
    const strength = weight === undefined || weight === "" ? 1 : Number(weight);
    loras.push({ name: name.trim(), strength });
    return "";
  });
  return { text: text.replace(/\s+,/g, ",").replace(/\s{2,}/g, " ").trim(), loras };
}

// The X-ray mode: LienzoXRay on the checkpoint; its prompt keeps its tags (the x-ray lists and applies them).
function xrayWorkflow(params) {
  return {
    model: node("CheckpointLoaderSimple", { ckpt_name: params.model }),
    xray: node("LienzoXRay", {
      model: ["model", 0], text: params.prompt, negative: params.negative, seed: params.seed,
      steps: params.steps, cfg: params.cfg, sampler_name: params.sampler, scheduler: params.scheduler,
      width: params.width, height: params.height, every: params.every, filename_prefix: "lienzo",
    }),
  };
}

// The Grid mode: LienzoGrid on the checkpoint (its prompt keeps its tags; the grid applies them per cell).
function gridWorkflow(params) {
  const [xAxis, yAxis, zAxis] = params.axes;
  return {
    model: node("CheckpointLoaderSimple", { ckpt_name: params.model }),
    grid: node("LienzoGrid", {
      model: ["model", 0], text: params.prompt, negative: params.negative, x_axis: xAxis, y_axis: yAxis,
      z_axis: zAxis, seed: params.seed, steps: params.steps, cfg: params.cfg, sampler_name: params.sampler,
      scheduler: params.scheduler, width: params.width, height: params.height, filename_prefix: "lienzo",
    }),
  };
}

export function buildWorkflow(params) {
  if (params.mode === "xray") return xrayWorkflow(params);
  if (params.mode === "grid") return gridWorkflow(params);
  const { text, loras } = splitLoras(params.prompt);
  const negative = splitLoras(params.negative).text;
  const prompt = { model: node("CheckpointLoaderSimple", { ckpt_name: params.model }) };
  let model = ["model", 0];
  let clip = ["model", 1];
  loras.forEach((lora, index) => {
    const id = `lora${index + 1}`;
    prompt[id] = node("LoraLoader", {
      model, clip, lora_name: lora.name, strength_model: lora.strength, strength_clip: lora.strength,
    });
    model = [id, 0];
    clip = [id, 1];
  });
  prompt.positive = node("CLIPTextEncode", { text, clip });
  prompt.negative = node("CLIPTextEncode", { text: negative, clip });
  let latent;
  let denoise = 1.0;
  if (params.mode === "txt2img") {
    prompt.latent = node("EmptyLatentImage", {
      width: params.width, height: params.height, batch_size: params.batch,
    });
    latent = ["latent", 0];
  } else {
    denoise = params.denoise;
    prompt.source = node("LoadImage", { image: params.image });
    let pixels = ["source", 0];
    let mask = null;
    if (params.mode === "inpaint") {
      prompt.mask = node("LoadImageMask", { image: params.mask, channel: "red" });
      mask = ["mask", 0];
    } else if (params.mode === "outpaint") {
      prompt.pad = node("ImagePadForOutpaint", { image: pixels, ...params.padding, feathering: 16 });
      pixels = ["pad", 0];
      mask = ["pad", 1];
    }
    prompt.encode = node("VAEEncode", { pixels, vae: ["model", 2] });
    latent = ["encode", 0];
    if (mask) {
      prompt.masked = node("SetLatentNoiseMask", { samples: latent, mask });
      latent = ["masked", 0];
    }
  }
  prompt.sampler = node("KSampler", {
    model, seed: params.seed, steps: params.steps, cfg: params.cfg,
    sampler_name: params.sampler, scheduler: params.scheduler,
    positive: ["positive", 0], negative: ["negative", 0], latent_image: latent, denoise,
  });
  prompt.decode = node("VAEDecode", { samples: ["sampler", 0], vae: ["model", 2] });
  prompt.save = node("SaveImage", { images: ["decode", 0], filename_prefix: "lienzo" });
  return prompt;
}

function node(classType, inputs) {
  return { class_type: classType, inputs };
}

// Settings read back from an API workflow this page did not build (the history of other clients):
// the first KSampler, its prompts and checkpoint, where they are plain values.
export function paramsFromWorkflow(prompt) {
  const samplerEntry = Object.values(prompt).find((item) => item.class_type === "KSampler");
  if (!samplerEntry) return null;
  const inputs = samplerEntry.inputs;
  const textOf = (link) => {
    const source = Array.isArray(link) ? prompt[link[0]] : null;
    return source && typeof source.inputs.text === "string" ? source.inputs.text : "";
  };
  const loader = Object.values(prompt).find((item) => item.class_type === "CheckpointLoaderSimple");
  const empty = Object.values(prompt).find((item) => item.class_type === "EmptyLatentImage");
  const params = {
    prompt: textOf(inputs.positive), negative: textOf(inputs.negative), steps: inputs.steps,
    cfg: inputs.cfg, sampler: inputs.sampler_name, scheduler: inputs.scheduler, seed: inputs.seed,
    denoise: inputs.denoise,
  };
  if (loader) params.model = loader.inputs.ckpt_name;
  if (empty) Object.assign(params, { width: empty.inputs.width, height: empty.inputs.height });
  return params;
}

// ComfyUI's error JSON as lines a person can act on.
export function describeError(body) {
  if (!body || typeof body !== "object") return [String(body)];
  const lines = [];
  const perNode = Object.keys(body.node_errors || {}).length > 0;
  if (body.error && typeof body.error === "object" && body.error.message) {
    // With node errors, the top-level details repeat them; they are listed one per line below.
    const details = body.error.details && !perNode ? `: ${body.error.details}` : "";
    lines.push(`${body.error.message}${details}`);
  }
  for (const [id, entry] of Object.entries(body.node_errors || {})) {
    const where = NODE_LABELS[id] || entry.class_type || id;
    for (const error of entry.errors || []) {
      const input = error.extra_info && error.extra_info.input_name;
      const field = input ? `${where} (${input})` : where;
      const details = error.details && error.details !== error.message ? ` — ${error.details}` : "";
      lines.push(`${field}: ${error.message}${details}`);
    }
  }
  return lines.length ? lines : [JSON.stringify(body)];
}
