// The server's HTTP and websocket API (ComfyUI's routes and A1111's png-info), with the page's ?token=.

const token = new URLSearchParams(window.location.search).get("token");
export const clientId = crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2);

export class ApiError extends Error {
  constructor(message, body) {
    super(message);
    this.body = body;
  }
}

export function apiUrl(path, params = {}) {
  const url = new URL(path, window.location.href);
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  if (token) url.searchParams.set("token", token);
  return url.toString();
}

async function answer(response) {
  const text = await response.text();
  let body = text;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = text;
  }
  if (!response.ok) throw new ApiError(errorText(body, response), body);
  return body;
}

function errorText(body, response) {
  if (body && typeof body === "object") {
    const error = body.error;
    if (error && typeof error === "object") return error.message || JSON.stringify(error);
    return body.detail || body.errors || error || `${response.status} ${response.statusText}`;
  }
  return body || `${response.status} ${response.statusText}`;
}

export async function getJson(path, params = {}) {
  return answer(await fetch(apiUrl(path, params)));
}

export async function postJson(path, body) {
  const response = await fetch(apiUrl(path), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return answer(response);
}

export async function uploadImage(blob, filename) {
  const form = new FormData();
  form.append("image", blob, filename);
  form.append("type", "input");
  form.append("overwrite", "true");
  const result = await answer(await fetch(apiUrl("upload/image"), { method: "POST", body: form }));
  return result.subfolder ? `${result.subfolder}/${result.name}` : result.name;
}

export function viewUrl(image) {
  return apiUrl("view", { filename: image.filename, subfolder: image.subfolder || "", type: image.type });
}

export function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// The websocket: JSON messages go to onMessage, binary preview frames (uint32 type 1, uint32 format,
// image bytes) to onPreview as a Blob; it reconnects after a drop.
export function connectSocket(onMessage, onPreview) {
  const url = new URL(apiUrl("ws", { clientId }));
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(url.toString());
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => {
    if (typeof event.data === "string") {
      onMessage(JSON.parse(event.data));
      return;
    }
    const view = new DataView(event.data);
    if (view.getUint32(0) !== 1) return;
    const type = view.getUint32(4) === 2 ? "image/png" : "image/jpeg";
    onPreview(new Blob([event.data.slice(8)], { type }));
  };
  socket.onclose = () => setTimeout(() => connectSocket(onMessage, onPreview), 1000);
  return socket;
}
