/** The sending clinic's side of reports (docs/reports.md): the account's reports, kept on
 * this device so that what was loaded stays readable offline, without anything that names
 * the patient; answers to a radiologist's question, queued until the server took them; the
 * PDF, fetched when opened and never stored. */
import { signedInFetch } from "./account";
import { API, ApiError, networkError } from "./api";
import { accessToken } from "./auth";
import { db, type CachedReport, type QueuedReply, type UserError } from "./db";
import { reportWords } from "./words";

/** The report JSON of the API, as far as this app reads it. */
export interface ServerReport {
  id: number;
  status: string;
  upload_ids: string[];
  study_instance_uid: string;
  service_level: string;
  modality: string;
  study_description: string;
  question: string;
  versions: { pdf_available: boolean }[];
  created_at: string;
  updated_at: string;
  // Read for "Add images" only, in memory, never stored (see `addImagesMetadata`).
  patient_name?: string;
  patient_id?: string;
  study_date?: string;
  accession_number?: string;
}

interface ReportPage {
  results: ServerReport[];
}

export const QUESTION_OPEN = "additional_data_required";
// The list the screen shows: the API's first page (its 50 newest), as the History shows 20.
const REPORTS_PATH = "/reports?sort=-date";
/** The PDF's path: the service worker sends it to the network only (sw.ts). */
export const REPORT_DOWNLOAD_PATH = /^\/api\/v1\/reports\/\d+\/download$/;
/** How long an opened PDF's object URL lives: the new tab has loaded it well before. */
export const PDF_URL_LIFETIME_MS = 60_000;

/** What this device keeps of a report: its state and what tells studies apart (modality,
 * description, when), never the patient's name, ID, birth date, accession number, the
 * study's UID, the clinical notes or the report's text. The radiologist's question is kept only while it
 * waits for the answer (it may name the patient's history); once answered or closed it
 * is dropped. */
export function reportRow(owner: string, report: ServerReport): CachedReport {
  const created = Date.parse(report.created_at);
  const updated = Date.parse(report.updated_at);
  return {
    id: report.id,
    owner,
    status: report.status,
    modality: report.modality.replace(/\\/g, "/"),
    studyDescription: report.study_description,
    serviceLevel: report.service_level,
    uploadIds: [...report.upload_ids],
    question: report.status === QUESTION_OPEN ? report.question : "",
    pdf: report.versions.some((v) => v.pdf_available),
    createdAt: isNaN(created) ? 0 : created,
    updatedAt: isNaN(updated) ? 0 : updated,
  };
}

/** Newest first (when the report was opened), then by id. */
export function newestFirst(reports: CachedReport[]): CachedReport[] {
  return [...reports].sort((a, b) => b.createdAt - a.createdAt || b.id - a.id);
}

/** What the Reports screen says of a failure. */
export function reportError(error: unknown): UserError {
  if (error instanceof ApiError) return { code: error.code, ...reportWords(error.code, error.message, error.hint) };
  return { code: "app_error", message: "Something went wrong in the app.", hint: "Press Refresh and try again; if it happens again, tell your administrator." };
}

/** Get the account's reports and keep them for offline reading: the rows of reports the
 * server no longer lists for this account are removed. Throws an ApiError (offline too). */
export async function reportsRefresh(owner: string, now = Date.now()): Promise<CachedReport[]> {
  const page = await signedInFetch<ReportPage>(REPORTS_PATH);
  const rows = page.results.map((r) => reportRow(owner, r));
  const ids = new Set(rows.map((r) => r.id));
  await db.transaction("rw", db.reports, db.reportViews, async () => {
    await db.reports
      .where("owner")
      .equals(owner)
      .filter((r) => !ids.has(r.id))
      .delete();
    await db.reports.bulkPut(rows);
    await db.reportViews.put({ owner, fetchedAt: now });
  });
  return rows;
}

/** Forget the account's saved reports (signing out); its answers are `repliesForget`'s. */
export async function reportsForget(owner: string): Promise<void> {
  await db.transaction("rw", db.reports, db.reportViews, async () => {
    await db.reports.where("owner").equals(owner).delete();
    await db.reportViews.delete(owner);
  });
}

/** The owner's answers not yet taken by the server (queued or refused): signing out warns of them. */
export async function unsentReplies(owner: string): Promise<number> {
  return db.replies.where("owner").equals(owner).count();
}

/** Delete the owner's answers, sent or not (signing out, once the user agreed to lose them):
 * they may describe the patient and must not stay on a shared device. */
export async function repliesForget(owner: string): Promise<void> {
  await db.replies.where("owner").equals(owner).delete();
}

/** How long a refused answer is kept for "Send again" or "Discard" before it is deleted. */
export const REFUSED_REPLY_KEEP_MS = 7 * 24 * 3600 * 1000;

/** Delete every refused answer older than `REFUSED_REPLY_KEEP_MS` (at start-up, any
 * account): counted from the refusal, or from when it was written for rows without one.
 * Returns how many were deleted. */
export async function repliesExpire(now = Date.now()): Promise<number> {
  return db.replies.filter((r) => r.state === "refused" && now - (r.refusedAt ?? r.createdAt) > REFUSED_REPLY_KEEP_MS).delete();
}

/** Queue the answer to report `reportId`'s question and send it now when the network
 * allows (otherwise `repliesSend` sends it when the network is back). */
export async function replyQueue(input: { owner: string; reportId: number; answer: string }): Promise<number> {
  const answer = input.answer.trim();
  if (!answer) throw new ApiError(0, "invalid_request", "", "");
  const id = (await db.replies.add({ owner: input.owner, reportId: input.reportId, answer, createdAt: Date.now(), state: "queued", error: null })) as number;
  void repliesSend(input.owner).catch(() => undefined);
  return id;
}

const sending = new Map<string, Promise<number>>();

/** Send the owner's queued answers, oldest first. A sent answer leaves the device and its
 * report's row takes the server's new state; one the server refuses is kept as `refused`
 * with what to do (send again, or discard); offline, a server down or a sign-in needed
 * stops the round and leaves the rest queued. Safe to call often: one round at a time per
 * account in this context, and the server takes one answer per question (a second is a 409).
 * Returns how many were sent. */
export function repliesSend(owner: string): Promise<number> {
  const running = sending.get(owner);
  if (running) return running;
  const round = sendRound(owner).finally(() => sending.delete(owner));
  sending.set(owner, round);
  return round;
}

async function sendRound(owner: string): Promise<number> {
  const queued = (await db.replies.where("owner").equals(owner).sortBy("createdAt")).filter((r) => r.state === "queued");
  let sent = 0;
  for (const reply of queued) {
    let report: ServerReport;
    try {
      report = await signedInFetch<ServerReport>(`/reports/${reply.reportId}/reply`, { method: "POST", json: { answer: reply.answer } });
    } catch (error) {
      if (error instanceof ApiError && (error.transient || error.code === "sign_in_required")) return sent;
      await db.replies.update(reply.id!, { state: "refused", error: reportError(error), refusedAt: Date.now() });
      continue;
    }
    await db.transaction("rw", db.replies, db.reports, async () => {
      await db.replies.delete(reply.id!);
      await db.reports.put(reportRow(owner, report));
    });
    sent += 1;
  }
  return sent;
}

/** Queue a refused answer again (the user pressed "Send again"). */
export async function replyRetry(reply: QueuedReply): Promise<void> {
  await db.replies.update(reply.id!, { state: "queued", error: null, refusedAt: null });
  void repliesSend(reply.owner).catch(() => undefined);
}

export async function replyDiscard(id: number): Promise<void> {
  await db.replies.delete(id);
}

// The PDF, or the API's JSON error: the API negotiates on its JSON renderer and answers
// "application/pdf" alone with 406.
const ACCEPT_PDF = "application/pdf, application/json";

async function download(reportId: number, token: string): Promise<Response> {
  try {
    // no-store: not in the HTTP cache either (the server says so too); the service worker
    // lets this path through to the network (sw.ts).
    return await fetch(`${API}/reports/${reportId}/download`, { headers: { Authorization: `Bearer ${token}`, Accept: ACCEPT_PDF }, cache: "no-store" });
  } catch {
    throw networkError();
  }
}

async function refusal(response: Response): Promise<ApiError> {
  try {
    const body = (await response.json()) as { error?: { code?: string; message?: string; hint?: string } };
    if (body.error?.message) return new ApiError(response.status, body.error.code ?? "error", body.error.message, body.error.hint ?? "");
  } catch {
    // Not the API's error shape.
  }
  return new ApiError(response.status, `http_${response.status}`, "The server did not send the report.", "Try again in a minute; if it keeps happening, tell your administrator.");
}

/** The PDF of the report's current version, in memory only (a Blob of type
 * application/pdf): never written to IndexedDB or a cache. Throws an ApiError. */
export async function reportPdf(reportId: number): Promise<Blob> {
  let response = await download(reportId, await accessToken());
  if (response.status === 401) response = await download(reportId, await accessToken(true));
  if (!response.ok) throw await refusal(response);
  const blob = await response.blob();
  const head = new Uint8Array(await blob.slice(0, 5).arrayBuffer());
  if (String.fromCharCode(...head) !== "%PDF-") throw new ApiError(200, "bad_pdf", "", "");
  return blob.type === "application/pdf" ? blob : new Blob([blob], { type: "application/pdf" });
}

/** The upload metadata that puts added images in the report's study: its Study Instance
 * UID, and for photos (converted to DICOM on the server) the patient and study the report
 * names, so they carry the same patient as the images they join. Read from the server when
 * the upload starts and sent at once: nothing of it is stored on this device. */
export function addImagesMetadata(report: ServerReport, photos: boolean): Record<string, string> {
  const out: Record<string, string> = { study_instance_uid: report.study_instance_uid };
  if (photos) {
    const fields: [keyof ServerReport, string][] = [
      ["patient_name", "patient_name"],
      ["patient_id", "patient_id"],
      ["study_date", "study_date"],
      ["accession_number", "accession_number"],
      ["study_description", "study_description"],
    ];
    for (const [key, name] of fields) {
      const value = report[key];
      if (typeof value === "string" && value) out[name] = value;
    }
  }
  return out;
}

/** When the list shown was loaded, as the offline mark says it ("10:42", or with the day
 * when not today). */
export function shownAsOf(fetchedAt: number, now = Date.now()): string {
  const at = new Date(fetchedAt);
  const time = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return new Date(now).toDateString() === at.toDateString() ? time : `${at.toLocaleDateString()} ${time}`;
}
