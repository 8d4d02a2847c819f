// The gpufleet REST API, the same routes the CLI uses. Errors keep the server's words
// and say which form field they are about, so a form can show each next to its input.

export class ApiError extends Error {
  constructor(status, detail, fields) {
    super(detail);
    this.status = status;
    this.detail = detail;
    /** {fieldKey: message}; "" is the whole form */
    this.fields = fields;
  }
}

// The API key (docs/auth.md): kept in this browser's localStorage. `#key=<token>` in the page's
// URL sets it (the fragment never reaches the server, so no log sees it) and is removed from
// the address bar; a 401 asks for it.
const KEY_STORE = "gpufleet-api-key";
(function keyFromFragment() {
  const m = /(?:^#|&)key=([^&]+)/.exec(window.location.hash);
  if (!m) return;
  localStorage.setItem(KEY_STORE, decodeURIComponent(m[1]));
  history.replaceState(null, "", window.location.pathname + window.location.search);
})();

export function authHeaders() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** fetch with the key; on 401 ask for a key once and try again. */
export async function authFetch(path, init = {}) {
  const send = () => fetch(path, { ...init, headers: { ...(init.headers || {}), ...authHeaders() } });
  const sentWith = localStorage.getItem(KEY_STORE);
  let resp = await send();
  if (resp.status === 401 && localStorage.getItem(KEY_STORE) !== sentWith) {
    resp = await send();  // another request asked for the key meanwhile: one prompt, not one per request
  } else if (resp.status === 401) {
    const key = window.prompt("This gpufleet server needs an API key (see `gpufleet keys create` or the key "
      + "`gpufleet up` printed):");
    if (key && key.trim()) {
      localStorage.setItem(KEY_STORE, key.trim());
      resp = await send();
    }
  }
  return resp;
}

export async function api(method, path, body, options = {}) {
  let resp;
  try {
    resp = await authFetch(path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: options.signal,
    });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, `cannot reach the gpufleet server: ${exc.message}`, { "": "cannot reach the gpufleet server" });
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!resp.ok) throw errorFrom(resp.status, data);
  return data;
}

export const get = (path, options) => api("GET", path, undefined, options);
export const post = (path, body) => api("POST", path, body ?? {});
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path) => api("DELETE", path);

/** FastAPI's 422 lists errors with a location; our 400s are sentences. Both become fields. */
export function errorFrom(status, data) {
  const detail = data && typeof data === "object" && "detail" in data ? data.detail : data;
  const fields = {};
  if (Array.isArray(detail)) {
    const lines = [];
    for (const err of detail) {
      const loc = (err.loc || []).filter((x) => x !== "body" && x !== "query" && x !== "spec");
      const key = fieldFromLocation(loc);
      const msg = String(err.msg || "").replace(/^Value error, /, "");
      fields[key] = fields[key] ? `${fields[key]}; ${msg}` : msg;
      lines.push(loc.length ? `${loc.join(".")}: ${msg}` : msg);
    }
    return new ApiError(status, lines.join("; "), fields);
  }
  const message = String(detail ?? `HTTP ${status}`);
  for (const part of splitPlanMessage(message)) {
    const key = part.loc ? fieldFromLocation(part.loc) : fieldFromMessage(part.msg);
    fields[key] = fields[key] ? `${fields[key]}; ${part.msg}` : part.msg;
  }
  return new ApiError(status, message, fields);
}

/** `POST /v1/plan` names fields as "spec.placement.worker_selector: msg; ...". */
function splitPlanMessage(message) {
  const parts = message.split("; ").map((p) => {
    const m = /^(spec(?:\.[\w]+)+|cluster(?:\.[\w]+)*): (.*)$/.exec(p);
    return m ? { loc: m[1].split(".").filter((x) => x !== "spec"), msg: m[2].replace(/^Value error, /, "") } : null;
  });
  return parts.every(Boolean) ? parts : [{ loc: null, msg: message }];
}

const TOP_FIELDS = new Set(["name", "replicas", "backend", "backend_version", "backend_params", "env",
  "category", "image", "kv_cache", "labels", "restart_on_error"]);

export function fieldFromLocation(loc) {
  const [first, second] = loc.map(String);
  if (first === "source") return "source";
  if (first === "placement") return second ? `placement.${second}` : "placement";
  if (TOP_FIELDS.has(first)) return first;
  return "";
}

// Sentences from the server's validation (gpufleet/server/validation.py and the
// backends' parameter rules), matched to the input they are about.
const MESSAGE_FIELDS = [
  [/invalid deployment name|deployment '.*' (already exists|not found)/i, "name"],
  [/replicas/i, "replicas"],
  [/model path|not a valid GGUF|no GGUF|not a model|local_path|repository|hf:|modelscope:|gated|no file|not found on the gpufleet server/i, "source"],
  [/--backend-version|unknown [\w.-]+ version|is not installed on any ready worker/i, "backend_version"],
  [/--backend-param|must start with '-'|is set by gpufleet|--[\w-]+ (must|takes|is not)|unknown flag|flag/i, "backend_params"],
  [/--kv-cache|extended KV cache/i, "kv_cache"],
  [/--cpu-offloading/i, "placement.cpu_offloading"],
  [/--distributed/i, "placement.distributed"],
  [/worker selector/i, "placement.worker_selector"],
  [/GPU selection|--gpu\b|gpus_per_replica|--gpus-per-replica|--overcommit/i, "placement.gpu_selector"],
  [/no worker can run|cannot serve|unknown backend|backend/i, "backend"],
  [/category/i, "category"],
];

export function fieldFromMessage(message) {
  for (const [pattern, key] of MESSAGE_FIELDS) if (pattern.test(message)) return key;
  return "";
}
