// The dashboard's only way to the host: the /v1 API, by relative URL (so a
// path prefix in front of the host is kept), with the admin token from
// sessionStorage on every call.

const TOKEN_KEY = "kwasm.token";

/** Raised for any answer that is not 2xx; `status` and the API's message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** `../v1/<path>` relative to the page (the page lives at `<prefix>/ui/`). */
export function apiUrl(path) {
  return new URL("../v1/" + path, document.baseURI).toString();
}

/** A call to the API; resolves to the JSON answer (or null for 204). */
export async function call(method, path, body, contentType = "application/json") {
  const headers = {};
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  if (body !== undefined) headers["Content-Type"] = contentType;
  const response = await fetch(apiUrl(path), { method, headers, body });
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (!response.ok) {
    const message = json && json.error ? json.error.message : text || response.statusText;
    throw new ApiError(response.status, message);
  }
  return json;
}

export const get = (path) => call("GET", path);

/** Uploads bytes with progress (fetch has no upload progress; XHR does). */
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl(path));
    const t = token();
    if (t) xhr.setRequestHeader("Authorization", "Bearer " + t);
    xhr.setRequestHeader("Content-Type", "application/wasm");
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let json = null;
      try {
        json = JSON.parse(xhr.responseText);
      } catch (_) {
        json = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(json);
      else reject(new ApiError(xhr.status, json && json.error ? json.error.message : xhr.statusText));
    };
    xhr.onerror = () => reject(new ApiError(0, "the host did not answer"));
    xhr.send(file);
  });
}

export const encode = encodeURIComponent;
