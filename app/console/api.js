// The API as the console calls it. The key lives in sessionStorage only: gone when the tab closes, never
// in a cookie (which the server would read on every request) and never in a URL (which logs and
// referrers keep). Every call sends it as `Authorization: Bearer <key>`.

const KEY_NAME = "finetune-console.api-key";

export const session = {
  get key() { return sessionStorage.getItem(KEY_NAME); },
  signIn(key) { sessionStorage.setItem(KEY_NAME, key.trim()); },
  signOut() { sessionStorage.removeItem(KEY_NAME); },
};

/** An error answer of the API, in OpenAI's shape: `message` says what to change, `param` which field. */
export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
    this.retryAfter = retryAfter;
  }
}

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${session.key}`, ...extra };
}

async function failure(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: the status says enough */ }
  const error = new ApiError(response.status, body, Number(response.headers.get("Retry-After")) || null);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("console:unauthorized", { detail: error }));
  return error;
}

/** A JSON call; answers the parsed body or throws ApiError. */
export async function api(path, { method = "GET", body, signal, headers } = {}) {
  const init = { method, signal, headers: authHeaders(headers) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** A raw call (streams): answers the Response once its status is known to be good. */
export async function request(path, { method = "GET", body, signal, headers } = {}) {
  const init = { method, signal, headers: authHeaders(headers), cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response;
}

/** Upload a dataset with XMLHttpRequest, the one browser API that reports upload progress.
 *  `onProgress(fraction)` is called as the bytes leave; answers the file object. */
export function uploadFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    xhr.setRequestHeader("Authorization", `Bearer ${session.key}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) { onProgress(1); resolve(xhr.response); return; }
      const error = new ApiError(xhr.status, xhr.response);
      if (xhr.status === 401) window.dispatchEvent(new CustomEvent("console:unauthorized", { detail: error }));
      reject(error);
    });
    xhr.addEventListener("error", () => reject(new Error("The upload failed: the connection was lost.")));
    xhr.addEventListener("abort", () => reject(new Error("The upload was cancelled.")));
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** Save what a route answers as a file. A plain link cannot send the Authorization header, so the
 *  bytes are fetched and handed to the browser as a blob (fine for the sizes a console downloads). */
export async function download(path, filename) {
  const response = await request(path);
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Model ids contain '/' and ':' and are used in paths as they are (docs/api.md): encode only what
 *  would change the URL's meaning. */
export function modelPath(modelId) {
  return `/v1/models/${modelId.split("/").map(encodeURIComponent).join("/")}`;
}
