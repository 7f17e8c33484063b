// The REST API: JSON in and out, errors turned into plain words for the operator.
// The session is the HttpOnly gp_session cookie set by POST /api/auth/login.

let unauthorizedHandler = null;

/** Called with the error whenever a request is refused with 401 (the session ended). */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

export class ApiError extends Error {
  constructor(status, detail, extra) {
    super(plainMessage(status, detail, extra));
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.extra = extra;
  }
}

function detailText(detail) {
  if (detail == null) return "";
  if (typeof detail === "string") return detail;
  try {
    return JSON.stringify(detail);
  } catch {
    return String(detail);
  }
}

function extraText(extra) {
  if (!Array.isArray(extra) || !extra.length) return "";
  const parts = extra.map((e) => {
    if (e && typeof e === "object") {
      const where = e.key ? `${e.key}: ` : "";
      return `${where}${e.message ?? detailText(e)}`;
    }
    return String(e);
  });
  return ` (${parts.join("; ")})`;
}

/** What an API error means, in words an operator can act on. */
export function plainMessage(status, detail, extra) {
  const d = detailText(detail);
  switch (status) {
    case 0:
      return "Cannot reach the GridPilot server. Check the network; live updates retry on their own.";
    case 400:
    case 422:
      return `The request was not accepted: ${d}${extraText(extra)}`;
    case 401:
      return `You are not signed in or your session has ended: ${d}`;
    case 403:
      return `Not permitted: ${d}`;
    case 404:
      return `Not found: ${d}`;
    case 409:
      return `Conflict: ${d}`;
    case 413:
      return "The request was too large.";
    case 429:
      return `Too many attempts: ${d}`;
    case 500:
      return `The server failed to handle the request: ${d}`;
    case 502:
    case 503:
    case 504:
      return `A platform service did not answer: ${d}`;
    default:
      return `The server answered ${status}: ${d}`;
  }
}

/**
 * One API call. ``body`` is sent as JSON; the answer's JSON is returned (null for 204).
 * Throws ApiError; a 401 also calls the handler set with onUnauthorized unless ``quiet401``.
 */
export async function api(method, path, body, { quiet401 = false, signal } = {}) {
  const init = { method, credentials: "same-origin", headers: { accept: "application/json" }, signal };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw exc;
    throw new ApiError(0, String(exc));
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const detail = data && data.detail !== undefined ? data.detail : text || res.statusText;
    const err = new ApiError(res.status, detail, data && data.extra);
    if (res.status === 401 && !quiet401 && unauthorizedHandler) unauthorizedHandler(err);
    throw err;
  }
  return data;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body ?? {}, opts);

/** Path segment escaping for grid, alarm and equipment ids. */
export const seg = (s) => encodeURIComponent(s);
