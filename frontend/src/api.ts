/** The upload API over fetch (docs/upload-api.md). Every failure becomes an ApiError whose
 * message and hint a technician can act on. */

export const API = "/api/v1";

// The longest wait a Retry-After gets: a server asking for more is still tried every five
// minutes, so a study never waits out a mistaken header and the card's time stays near.
export const RETRY_AFTER_MAX_MS = 5 * 60_000;

/** Retry-After (RFC 9110 §10.2.3) in ms, from seconds or an HTTP date; null when it is
 * absent or neither. Not capped (see `RETRY_AFTER_MAX_MS`). */
export function retryAfterMs(value: string | null, now = Date.now()): number | null {
  const text = value?.trim() ?? "";
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  // An HTTP date names its day and month ("Wed, 02 Dec 2026 04:01:30 GMT").
  const at = /[a-z]/i.test(text) ? Date.parse(text) : NaN;
  return isNaN(at) ? null : Math.max(0, at - now);
}

export class ApiError extends Error {
  readonly code: string;
  readonly hint: string;
  readonly status: number;
  readonly body: Record<string, unknown>;
  /** How long the server asked to wait before trying again (its Retry-After), if it did. */
  readonly retryAfterMs: number | null;

  constructor(status: number, code: string, message: string, hint: string, body: Record<string, unknown> = {}, retryAfter: number | null = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.hint = hint;
    this.body = body;
    this.retryAfterMs = retryAfter;
  }

  /** Worth trying again later without the user doing anything. */
  get transient(): boolean {
    return this.status === 0 || this.status === 429 || this.status >= 500 && this.status !== 507;
  }
}

export function networkError(): ApiError {
  return new ApiError(
    0,
    "network_unavailable",
    "The server cannot be reached.",
    "The study stays queued on this device and is sent as soon as the connection is back.",
  );
}

export interface RequestOptions {
  method?: string;
  token?: string | null;
  json?: unknown;
  body?: BodyInit;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export async function apiFetch<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json", ...options.headers };
  if (options.token) headers.Authorization = `Bearer ${options.token}`;
  let body = options.body;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.json);
  }
  let response: Response;
  try {
    response = await fetch(`${API}${path}`, { method: options.method ?? "GET", headers, body, signal: options.signal });
  } catch (error) {
    if ((error as Error).name === "AbortError") throw error;
    throw networkError();
  }
  if (response.status === 204) return undefined as T;
  let data: Record<string, unknown> = {};
  try {
    data = (await response.json()) as Record<string, unknown>;
  } catch (error) {
    // Aborted while the answer was read: the caller's abort, never an unreadable answer.
    if ((error as Error | null)?.name === "AbortError") throw error;
    if (response.ok) throw new ApiError(response.status, "bad_response", "The server sent an answer this app cannot read.", "Try again in a minute; if it keeps happening, tell your administrator.");
  }
  if (!response.ok) {
    const error = data.error as { code?: string; message?: string; hint?: string } | undefined;
    const wait = retryAfterMs(response.headers.get("Retry-After"));
    if (error?.message) {
      throw new ApiError(response.status, error.code ?? "error", error.message, error.hint ?? "", data.error as Record<string, unknown>, wait);
    }
    throw new ApiError(
      response.status,
      `http_${response.status}`,
      response.status >= 500 ? "The server had a problem and did not take the request." : `The server refused the request (HTTP ${response.status}).`,
      response.status >= 500 ? "The app tries again by itself; if it keeps happening, tell your administrator." : "Try again; if it keeps happening, tell your administrator.",
      {},
      wait,
    );
  }
  return data as T;
}

export interface InitResponse {
  upload_id: string;
  upload_token: string;
  chunk_size: number;
  total_size: number;
  total_chunks: number;
  expires_at: string;
}

export interface UploadStatus {
  upload_id: string;
  state: string;
  state_label?: string;
  bytes_received: number;
  total_size: number;
  missing_chunks: number[];
  error: { code: string; message: string; hint: string } | null;
  pacs: { acknowledged_instances: number; pending_instances: number; next_retry_at: string | null };
  rejected_files: { name: string; reason: string }[];
  skipped_files?: { name: string; reason: string }[];
  warnings: string[];
  studies?: StatusStudy[];
  completed_at?: string | null;
}

export interface StatusSeries {
  series_number: number | null;
  modality: string;
  description: string;
  instances: number;
  expected_instances: number;
}

export interface StatusStudy {
  study_description: string;
  modalities: string[];
  series: StatusSeries[];
  instances: number;
}
