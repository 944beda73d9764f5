/** The upload engine: sends every queued study of the signed-in user, chunk by chunk, and
 * follows it until the PACS confirms receipt. It runs in the page and in the service worker
 * (Background Sync), one at a time (Web Lock), with the queue in IndexedDB as the truth. */
import { md5 } from "hash-wasm";
import { ApiError, apiFetch, networkError, RETRY_AFTER_MAX_MS, type InitResponse, type StatusStudy, type UploadStatus } from "./api";
import { accessToken, currentSession } from "./auth";
import { backoffDelay, sleep } from "./backoff";
import { chunkBlob, chunkRange } from "./chunks";
import { ACK_PAGE_BYTES, ackPageOf, ackPagesFor, db, studyBlobs, studyScrub, type FinishedSummary, type ServerFile, type Study, type StudyFields, type UserError } from "./db";
import { adviceFrom, advisedInFlight, browserLinkEstimate, chunkSizeFor, chunkStallMs, FIRST_IN_FLIGHT, type InFlightAdvice } from "./linkTuning";
import { FINAL_STATES, fromServerState, isActive, keepsWaitNote, transition, type StudyEvent } from "./queueState";
import { hasStatusDue, linkLost, streamLive, takeStatusDue } from "./pushState";
import { addImagesMetadata, type ServerReport } from "./reports";
import { plainError } from "./words";
import { NetworkMeter, telemetrySend } from "./telemetry";

export const UPLOADER_LOCK = "relaypacs-uploader";
export const SYNC_TAG = "relaypacs-upload";
export const WAKE_CHANNEL = "relaypacs-wake";
// While the server processes and forwards, ask for news this often.
export const POLL_MS = 1500;
// A chunk whose bytes were damaged on the way is sent again this many times.
const CHUNK_ATTEMPTS = 4;
// The longest Retry-After a chunk's own retry waits; longer ones are the engine's wait.
const CHUNK_RETRY_AFTER_MAX_MS = 5_000;
// Speed is measured over this window.
const RATE_WINDOW_MS = 10_000;
// The study record (with its file list) gets the progress at most this often, not per chunk:
// the progress bar needs no more, and a write per chunk would cost the whole record.
export const PROGRESS_WRITE_MS = 1000;

class ExpiredUpload extends Error {}

const ALREADY_DELIVERED: UserError = {
  code: "upload_completed",
  message: "This study was already delivered to the PACS and could not be cancelled.",
  hint: "Ask the PACS administrator if the study must be removed there.",
};

function hexToBase64(hex: string): string {
  let binary = "";
  for (let i = 0; i < hex.length; i += 2) binary += String.fromCharCode(parseInt(hex.slice(i, i + 2), 16));
  return btoa(binary);
}

/** What the user is told of a failure, in plain words (words.ts). */
export function toUserError(error: unknown): UserError {
  if (error instanceof ApiError) return plainError({ code: error.code, message: error.message, hint: error.hint });
  return {
    code: "app_error",
    message: "Something went wrong in the app while sending this study.",
    hint: "Press Retry; if it happens again, tell your administrator.",
  };
}

/** Apply a state-machine event to the stored study, atomically against other writers.
 * The study's wait note is `patch.waitNote` after an "offline" event that leaves it waiting
 * to be sent, and gone after anything else (queueState.ts `keepsWaitNote`). */
export async function studyEvent(id: number, event: StudyEvent, patch: Partial<Study> = {}): Promise<Study | undefined> {
  return db.transaction("rw", db.studies, async () => {
    const study = await db.studies.get(id);
    if (!study) return undefined;
    const state = transition(study.state, event);
    const { waitNote: asked, ...rest } = patch;
    const changes: Partial<Study> = { ...rest, state };
    const waitNote = keepsWaitNote(event, state) ? (asked ?? null) : null;
    // Written only when there is or was one: most events never touch it.
    if (waitNote || study.waitNote) changes.waitNote = waitNote;
    await db.studies.update(id, changes);
    return { ...study, ...changes };
  });
}

function metadataOf(fields: StudyFields | null, studyName: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (fields) {
    const map: [keyof StudyFields, string][] = [
      ["patientName", "patient_name"],
      ["patientId", "patient_id"],
      ["patientBirthDate", "patient_birth_date"],
      ["patientSex", "patient_sex"],
      ["studyDate", "study_date"],
      ["modality", "modality"],
      ["accessionNumber", "accession_number"],
    ];
    for (const [key, name] of map) if (fields[key]) out[name] = fields[key];
  }
  if (studyName) out.study_description = studyName;
  return out;
}

/** The report's study for images added to it (Reports, "Add images"), asked of the server
 * as the upload starts, so that nothing naming the patient waits on this device. */
async function addedImagesMetadata(study: Study, token: string): Promise<Record<string, string>> {
  const photos = study.fields?.modality === "XC";
  try {
    return addImagesMetadata(await apiFetch<ServerReport>(`/reports/${study.addTo!.reportId}`, { token }), photos);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      throw new ApiError(
        404,
        "report_gone",
        "The report these images were added to is no longer open to this account.",
        "Cancel this upload; if the images are still needed, send them as a new study.",
      );
    }
    if (error instanceof ApiError && error.status === 401) await accessToken(true);
    throw error;
  }
}

function isOnline(): boolean {
  return typeof navigator === "undefined" || navigator.onLine !== false;
}

/** Send a queued cancel ("cancelling") to the server and, once it confirmed, delete the
 * study from this device. The server confirms with 204 (or 200), or says the upload is gone
 * (404, 410); a 409 `upload_completed` means the PACS already has the study, which the
 * study then says.
 * Any other failure (offline, server down, signed out) leaves the cancel queued: it is sent
 * again when the uploader next runs (start, back online, page visible, Background Sync).
 * Safe to run twice, from the page and the uploader at once. */
export async function studyCancelSend(id: number): Promise<void> {
  const study = await db.studies.get(id);
  if (!study || study.state !== "cancelling") return;
  if (!study.uploadId) {
    // The server never heard of it (an `init` still on its way is caught in `init`).
    await studyScrub(id, { state: "cancelled", error: null });
    return;
  }
  const path = `/upload/${study.uploadId}`;
  try {
    try {
      await apiFetch(path, { method: "DELETE", token: await accessToken() });
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
      await apiFetch(path, { method: "DELETE", token: await accessToken(true) });
    }
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 410)) {
      // Gone already (cancelled, expired or cleaned up): it will never be delivered.
    } else if (error instanceof ApiError && error.status === 409 && error.code === "upload_completed") {
      await studyScrub(id, {
        state: "completed",
        serverState: "completed",
        completedAt: Date.now(),
        error: { code: error.code, message: error.message, hint: error.hint },
      });
      return;
    } else {
      if (error instanceof ApiError && !error.transient && error.code !== "sign_in_required") {
        await db.studies.update(id, { error: toUserError(error) });
      }
      throw error;
    }
  }
  await studyScrub(id, { state: "cancelled", serverState: "cancelled", error: null });
}

/** A chunk's 200 answer; `max_in_flight` only when the server is busy (docs/upload-api.md). */
interface ChunkAnswer {
  index: number;
  received: boolean;
  bytes_received: number;
  max_in_flight?: number;
}

interface Progress {
  id: number;
  bytesAcked: number;
  rate: number;
  writtenAt: number;
}

export class Uploader {
  private wakeUp: (() => void) | null = null;
  // One chunk first, one more per quick answer: fifty clinics starting at once must not
  // open with three chunks each on a server that can only queue them (bench/RESULTS.md).
  private inFlight = FIRST_IN_FLIGHT;
  // A busy server's `max_in_flight` in a chunk's answer, while it holds.
  private advice: InFlightAdvice | null = null;
  // Chunk requests under way, and how many stalls there were: an attempt begun before the
  // latest stall does not move the in-flight count (it ran beside the stalled one).
  private sending = 0;
  private stalls = 0;
  private samples: [number, number][] = [];
  private failures = 0;
  private progress: Progress | null = null;
  /** The network each upload of this run saw, per study (telemetry.ts). */
  private readonly meters = new Map<number, NetworkMeter>();

  constructor(private readonly owner: string, private readonly signal: AbortSignal) {}

  private meterOf(id: number): NetworkMeter {
    let meter = this.meters.get(id);
    if (!meter) this.meters.set(id, (meter = new NetworkMeter()));
    return meter;
  }

  /** The studies being sent lost the network: an outage for each until chunks go again. */
  private wentOffline(studies: Study[]): void {
    const now = Date.now();
    for (const s of studies) if (s.state === "queued" || s.state === "uploading") this.meterOf(s.id!).offline(now);
  }

  /** Send the upload's network figures once its chunks are all acknowledged; in the
   * background, and whatever happens to it, the upload goes on. */
  private reportNetwork(study: Study): void {
    const meter = this.meters.get(study.id!);
    this.meters.delete(study.id!);
    if (!meter || !study.uploadId) return;
    void telemetrySend(study.uploadId, study.uploadToken, meter.report(), this.signal).catch(() => undefined);
  }

  /** Look at the queue again now (new study, back online, resumed). */
  wake(): void {
    this.wakeUp?.();
  }

  private wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      // Stopped between two waits: let go at once (a stop must not sleep out a minute
      // holding the upload lock).
      if (this.signal.aborted) return resolve();
      const signal = this.signal;
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done);
      function done() {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      }
      this.wakeUp = done;
    });
  }

  /** Work until aborted (the page), or until nothing is left to send (`untilSent`: the
   * service worker's Background Sync, which must finish quickly). */
  async run({ untilSent = false } = {}): Promise<void> {
    while (!this.signal.aborted) {
      const session = await currentSession();
      if (!session || session.username !== this.owner || session.expired) {
        if (untilSent) return;
        await this.wait(60_000);
        continue;
      }
      const active = (await db.studies.where("owner").equals(this.owner).sortBy("createdAt")).filter((s) => isActive(s.state));
      // Cancels first: a wrong-patient study must not wait for another study's upload.
      const studies = [...active.filter((s) => s.state === "cancelling"), ...active.filter((s) => s.state !== "cancelling")];
      const sending = studies.filter((s) => s.state === "queued" || s.state === "uploading" || s.state === "cancelling");
      if (untilSent && sending.length === 0) return;
      // While the live stream is connected (pushState.ts) nothing is polled: the stream
      // wakes the engine when a study needs its status asked once.
      const pushed = streamLive() && sending.length === 0 && !hasStatusDue();
      let delay = studies.length && !pushed ? POLL_MS : 60_000;
      if (!isOnline()) {
        // A cancel the server never needs to hear of is done at once, offline too.
        for (const s of studies) if (s.state === "cancelling" && !s.uploadId) await studyCancelSend(s.id!);
        this.wentOffline(sending);
        for (const s of sending) await studyEvent(s.id!, { type: "offline" });
        if (untilSent) return;
        await this.wait(60_000);
        continue;
      }
      let stepping: number | null = null;
      try {
        for (const study of studies) {
          if (this.signal.aborted) return;
          stepping = study.id!;
          await this.step(study.id!);
        }
        this.failures = 0;
      } catch (error) {
        if (error instanceof ApiError && (error.transient || error.code === "sign_in_required")) {
          // Offline, server restarting, or sign-in needed: keep the queue, try again later.
          this.failures += 1;
          // The server not reached at all: the live stream's socket may be dead without
          // knowing it, and the engine would wait on it instead of polling.
          if (error.code === "network_unavailable") linkLost();
          this.wentOffline(sending);
          // Never sooner than the server asked (a failing disk asks for a minute).
          delay = error.code === "sign_in_required" ? 60_000 : Math.max(backoffDelay(this.failures), Math.min(error.retryAfterMs ?? 0, RETRY_AFTER_MAX_MS));
          // Online, the study whose step failed says why and when the next try is (the
          // others were not tried: their old notes go); not offline (the banner says it),
          // nor for a sign-in (the app asks for it), nor in the service worker, which does
          // not wait (the browser runs it again when it sees fit).
          const { message, hint } = toUserError(error);
          const waitNote = error.transient && isOnline() && !untilSent ? { message, hint, retryAt: Date.now() + delay } : null;
          for (const s of sending) await studyEvent(s.id!, { type: "offline" }, { waitNote: s.id === stepping ? waitNote : null });
          if (untilSent) return;
        } else if ((error as Error).name !== "AbortError") {
          console.error(error);
        }
      }
      await this.wait(delay);
    }
  }

  /** One unit of work on one study; transient failures propagate to `run`. */
  private async step(id: number): Promise<void> {
    const study = await db.studies.get(id);
    if (!study || !isActive(study.state)) return;
    if (study.state === "cancelling") {
      try {
        await studyCancelSend(id);
      } catch (error) {
        // Only what passes with time stops the round; anything else is on the study already.
        if (error instanceof ApiError && (error.transient || error.code === "sign_in_required")) throw error;
        if ((error as Error).name === "AbortError") throw error;
        if (!(error instanceof ApiError)) console.error(error);
      }
      return;
    }
    try {
      if (study.state === "queued" || study.state === "uploading") await this.send(study);
      else await this.follow(study);
    } catch (error) {
      // Cancelled meanwhile: what the server says of the old work is the cancel's business now.
      const now = await db.studies.get(id);
      if (!now || now.state === "cancelling" || FINAL_STATES.includes(now.state)) return;
      if (error instanceof ExpiredUpload) {
        // The server forgot the upload (expired or unknown): start again from the stored files.
        await db.transaction("rw", db.studies, db.ackPages, async () => {
          await db.ackPages.where("studyId").equals(id).delete();
          await db.studies.update(id, { uploadId: null, uploadToken: null, bytesAcked: 0 });
        });
        return;
      }
      if (error instanceof ApiError && (error.transient || error.code === "sign_in_required")) throw error;
      if ((error as Error).name === "AbortError") throw error;
      await studyEvent(id, { type: "fail" }, { error: toUserError(error) });
    }
  }

  /** Start the upload on the server; null when the study was cancelled meanwhile (the
   * cancel then goes to the new upload). */
  private async init(study: Study): Promise<Study | null> {
    const token = await accessToken();
    const added = study.addTo ? await addedImagesMetadata(study, token) : {};
    const body = {
      files: study.files.map((f) => ({ name: f.name, size: f.size, ...(f.sha256 ? { sha256: f.sha256 } : {}) })),
      // Images added to a report: the server's study and patient fields win over anything
      // typed on this device, so the images join the report's patient, never another.
      metadata: { ...metadataOf(study.fields, study.studyName), ...added },
      clinical_notes: study.clinicalNotes,
      service_level: study.serviceLevel,
      allow_partial: study.allowPartial ?? false,
      // Images added to a report's study are meant to join it: no duplicate check.
      force_upload: study.forceUpload || Boolean(study.addTo),
      chunk_size: chunkSizeFor(this.measuredRate() ?? browserLinkEstimate()),
    };
    let init: InitResponse;
    try {
      init = await apiFetch<InitResponse>("/upload/init", { method: "POST", token, json: body });
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) await accessToken(true);
      throw error;
    }
    const patch = {
      uploadId: init.upload_id,
      uploadToken: init.upload_token,
      chunkSize: init.chunk_size,
      totalChunks: init.total_chunks,
      bytesAcked: 0,
    };
    const cancelled = await db.transaction("rw", db.studies, db.ackPages, async () => {
      const current = await db.studies.get(study.id!);
      if (!current) return true;
      await db.ackPages.where("studyId").equals(study.id!).delete();
      if (current.state === "cancelling" || current.state === "cancelled") {
        // Cancelled while `init` was on its way: the server now has an upload to cancel.
        await db.studies.update(study.id!, { uploadId: init.upload_id, uploadToken: init.upload_token, state: "cancelling" });
        return true;
      }
      await db.studies.update(study.id!, patch);
      return false;
    });
    return cancelled ? null : { ...study, ...patch };
  }

  /** Call the upload's endpoints with its upload token, getting a fresh one when refused. */
  private async withUploadToken<T>(study: Study, call: (token: string) => Promise<T>, signal?: AbortSignal): Promise<T> {
    try {
      return await call(study.uploadToken ?? "");
    } catch (error) {
      if (error instanceof ApiError && (error.status === 404 || error.status === 410)) throw new ExpiredUpload();
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
    }
    const access = await accessToken();
    let fresh: { upload_token: string };
    try {
      fresh = await apiFetch(`/upload/${study.uploadId}/token`, { method: "POST", token: access, signal });
    } catch (error) {
      if (error instanceof ApiError && (error.status === 404 || error.status === 410)) throw new ExpiredUpload();
      throw error;
    }
    study.uploadToken = fresh.upload_token;
    await db.studies.update(study.id!, { uploadToken: fresh.upload_token });
    return call(fresh.upload_token);
  }

  private status(study: Study): Promise<UploadStatus> {
    return this.withUploadToken(study, (token) => apiFetch<UploadStatus>(`/upload/${study.uploadId}/status`, { token }));
  }

  private async send(initial: Study): Promise<void> {
    let study = initial;
    if (!study.uploadId) {
      const started = await this.init(study);
      if (!started) return;
      study = started;
    }
    const status = await this.status(study);
    if (status.state === "upload_expired" || status.error?.code === "upload_expired") throw new ExpiredUpload();
    if (status.state !== "receiving") {
      await this.applyStatus(study.id!, status);
      return;
    }
    // The server's list of missing chunks is the truth: it can name an acknowledged chunk
    // it lost (a power cut before complete flushed it, a restore), which is sent again.
    const missing = status.missing_chunks;
    const started = await db.transaction("rw", db.studies, db.ackPages, async () => {
      const begun = await studyEvent(study.id!, { type: "start" }, { bytesAcked: status.bytes_received, serverState: "receiving", error: null });
      if (begun?.state !== "uploading") return begun;
      await db.ackPages.where("studyId").equals(study.id!).delete();
      await db.ackPages.bulkPut(ackPagesFor(study.id!, study.totalChunks ?? 0, missing));
      return begun;
    });
    if (started?.state !== "uploading") return;
    this.progress = { id: study.id!, bytesAcked: status.bytes_received, rate: 0, writtenAt: Date.now() };
    const blobs = await studyBlobs(study.id!);
    if (blobs.length !== study.files.length) {
      throw new ApiError(
        0,
        "files_missing",
        "The files of this study are no longer stored on this device.",
        "Cancel this study and pick the files again.",
      );
    }
    let complete: boolean;
    const meter = this.meterOf(study.id!);
    meter.sending();
    try {
      complete = await this.sendChunks(study, blobs, missing);
    } finally {
      meter.idle();
      await this.writeProgress(study.id!, true);
    }
    if (!complete) return; // paused, cancelled or offline
    this.reportNetwork(study);
    try {
      await this.withUploadToken(study, (token) => apiFetch(`/upload/${study.uploadId}/complete`, { method: "POST", token }));
    } catch (error) {
      if (error instanceof ApiError && error.code === "upload_incomplete") return; // the next step sends the rest
      throw error;
    }
    await studyEvent(study.id!, { type: "sent" }, { serverState: "processing", rate: 0, sentAt: Date.now() });
  }

  /** Send `indexes` with up to `inFlight` chunks at once; false if it stopped early. */
  private async sendChunks(study: Study, blobs: Blob[], indexes: number[]): Promise<boolean> {
    const queue = [...indexes];
    const active = new Set<Promise<void>>();
    let failure: unknown = null;
    let stopped = false;
    while (queue.length || active.size) {
      while (!failure && !stopped && queue.length && active.size < this.inFlight) {
        // Pause, cancel and offline stop new chunks at once (in-flight ones finish).
        const current = await db.studies.get(study.id!);
        if (current?.state !== "uploading" || !isOnline() || this.signal.aborted) {
          stopped = true;
          break;
        }
        const index = queue.shift()!;
        const task: Promise<void> = this.sendChunk(study, blobs, index)
          .catch((error: unknown) => {
            failure ??= error;
          })
          .finally(() => active.delete(task));
        active.add(task);
      }
      if (!active.size) break;
      await Promise.race(active);
    }
    if (failure) throw failure;
    if (!isOnline()) throw networkError();
    return !stopped;
  }

  private async sendChunk(study: Study, blobs: Blob[], index: number): Promise<void> {
    const chunkSize = study.chunkSize!;
    const body = new Uint8Array(await chunkBlob(blobs, chunkSize, index).arrayBuffer());
    const [start, end] = chunkRange(index, chunkSize, study.totalSize);
    if (body.length !== end - start) {
      throw new ApiError(0, "files_changed", "A file of this study could not be read completely from this device.", "Cancel this study and pick the files again.");
    }
    const contentMd5 = hexToBase64(await md5(body));
    for (let attempt = 0; ; attempt++) {
      const began = Date.now();
      this.meterOf(study.id!).chunkSent(index, body.length);
      let answer: ChunkAnswer;
      // This attempt ends with the engine (its signal) or when it stalls (chunkStallMs).
      const request = new AbortController();
      const stop = () => request.abort();
      this.signal.addEventListener("abort", stop);
      // Stopped before this attempt (during a backoff, or while the chunk was read): the
      // listener above never fires for a signal already aborted.
      if (this.signal.aborted) request.abort();
      let stalled = false;
      const stallsBefore = this.stalls;
      this.sending += 1;
      // Chunks in flight share the link: this one may wait behind the others.
      const stallTimer = setTimeout(() => {
        stalled = true;
        request.abort();
      }, chunkStallMs(body.length * Math.max(this.inFlight, this.sending)));
      try {
        answer = await this.withUploadToken(study, (token) =>
          apiFetch<ChunkAnswer>(`/upload/${study.uploadId}/chunk?index=${index}`, {
            method: "PUT",
            token,
            body,
            headers: { "Content-Type": "application/octet-stream", "Content-MD5": contentMd5 },
            signal: request.signal,
          }),
          request.signal,
        );
      } catch (caught) {
        // A stalled request is a connection lost: the engine waits, then sends it again,
        // one chunk at a time until chunks are answered again.
        const isStall = stalled && !this.signal.aborted && (caught as Error | null)?.name === "AbortError";
        if (isStall) {
          this.inFlight = 1;
          this.stalls += 1;
        }
        const error = isStall ? networkError() : caught;
        // Bytes damaged on the way: the server stored nothing, send them again.
        if (error instanceof ApiError && error.code === "checksum_mismatch" && attempt + 1 < CHUNK_ATTEMPTS) continue;
        // A server that asks for more than a few seconds (a failing disk, a minute) gets it
        // from the engine, which says on the card why it waits; a short Retry-After
        // (server_busy's 5 s) is waited here, never less than the backoff.
        const asked = error instanceof ApiError ? (error.retryAfterMs ?? 0) : 0;
        if (error instanceof ApiError && error.status >= 500 && error.status !== 507 && attempt + 1 < CHUNK_ATTEMPTS && asked <= CHUNK_RETRY_AFTER_MAX_MS) {
          await sleep(Math.max(backoffDelay(attempt), asked), this.signal);
          continue;
        }
        throw error;
      } finally {
        clearTimeout(stallTimer);
        this.sending -= 1;
        this.signal.removeEventListener("abort", stop);
      }
      if (this.stalls === stallsBefore) this.adapt(Date.now() - began, answer?.max_in_flight);
      await this.acknowledge(study.id!, index, body.length);
      return;
    }
  }

  private adapt(ms: number, maxInFlight: unknown): void {
    const now = Date.now();
    this.advice = adviceFrom(maxInFlight, this.advice, now);
    this.inFlight = advisedInFlight(this.inFlight, ms / 1000, this.advice, now);
  }

  /** The upload speed measured on recent chunks, if there were enough of them. */
  private measuredRate(): number | null {
    if (this.samples.length < 3) return null;
    const bytes = this.samples.reduce((sum, [, b]) => sum + b, 0);
    const span = (Date.now() - this.samples[0]![0]) / 1000;
    return span > 1 ? bytes / span : null;
  }

  /** Record that the server acknowledged chunk `index`: one write of one fixed-size bitmap
   * page, whatever the index, and the progress on the study at most once a second. */
  private async acknowledge(id: number, index: number, bytes: number): Promise<void> {
    const now = Date.now();
    this.samples.push([now, bytes]);
    this.samples = this.samples.filter(([t]) => now - t <= RATE_WINDOW_MS);
    const windowBytes = this.samples.reduce((sum, [, b]) => sum + b, 0);
    const span = Math.max(1000, now - this.samples[0]![0]);
    const rate = (windowBytes / span) * 1000;
    const fresh = await db.transaction("rw", db.studies, db.ackPages, async () => {
      const study = await db.studies.get(id);
      // Scrubbed meanwhile (cancelled, delivered): nothing of it is kept any more.
      if (!study || FINAL_STATES.includes(study.state)) return false;
      const { page, byte, mask } = ackPageOf(index);
      const row = (await db.ackPages.get([id, page])) ?? { studyId: id, page, bits: new Uint8Array(ACK_PAGE_BYTES) };
      if (row.bits[byte]! & mask) return false;
      row.bits[byte]! |= mask;
      await db.ackPages.put(row);
      return true;
    });
    if (fresh && this.progress?.id === id) {
      this.progress.bytesAcked += bytes;
      this.progress.rate = rate;
    }
    await this.writeProgress(id, false);
  }

  /** Put the progress on the study record: when `force`, or when the last write is a second old. */
  private async writeProgress(id: number, force: boolean): Promise<void> {
    const progress = this.progress;
    if (progress?.id !== id) return;
    const now = Date.now();
    if (!force && now - progress.writtenAt < PROGRESS_WRITE_MS) return;
    progress.writtenAt = now;
    const { bytesAcked, rate } = progress;
    await db.transaction("rw", db.studies, async () => {
      const study = await db.studies.get(id);
      if (!study || FINAL_STATES.includes(study.state)) return;
      await db.studies.put({ ...study, bytesAcked, rate });
    });
  }

  /** Follow a study the server is processing or forwarding. */
  private async follow(study: Study): Promise<void> {
    if (!study.uploadId) {
      await studyEvent(study.id!, { type: "fail" }, { error: toUserError(null) });
      return;
    }
    // Pushed: the stream says when this study's state changes.
    if (!takeStatusDue(study.uploadId)) return;
    await this.applyStatus(study.id!, await this.status(study));
  }

  private async applyStatus(id: number, status: UploadStatus): Promise<void> {
    const local = fromServerState(status.state);
    if (local === "completed") {
      // The PACS confirmed every instance: nothing of the patient stays on this device.
      const before = await db.studies.get(id);
      const completedAt = Date.now();
      await studyScrub(id, {
        state: "completed",
        serverState: status.state,
        waitNote: null,
        completedAt,
        error: before?.state === "cancelling" ? ALREADY_DELIVERED : null,
        summary: finishedSummary(status, before, completedAt),
      });
      return;
    }
    if (local === "cancelled") {
      await studyScrub(id, { state: "cancelled", serverState: status.state, error: null, waitNote: null });
      return;
    }
    let error: UserError | null = status.error ? plainError({ code: status.error.code, message: status.error.message, hint: status.error.hint ?? "" }) : null;
    if (!error && status.state === "needs_confirmation") {
      error = {
        code: "needs_confirmation",
        message: status.warnings.join(" ") || "The server asks you to check this study before it is sent.",
        hint: "Check the patient, then press “Confirm and send”, or cancel the study.",
      };
    }
    if (!error && status.state === "failed") {
      error = { code: "failed", message: "The server could not send this study to the PACS.", hint: "Press Retry; if it fails again, tell your administrator." };
    }
    const verdicts = serverFilesOf(status);
    const patch: Partial<Study> = { serverState: status.state, error };
    if (status.state !== "processing" && (verdicts.length || status.studies?.length)) {
      patch.serverFiles = verdicts;
      patch.serverSeries = seriesOf(status.studies ?? []);
      patch.serverImages = (status.studies ?? []).reduce((n, st) => n + st.instances, 0);
    }
    await studyEvent(id, { type: "server", state: status.state }, patch);
  }
}

/** The server's verdict on each file it does not send. */
export function serverFilesOf(status: Pick<UploadStatus, "rejected_files" | "skipped_files">): ServerFile[] {
  return [
    ...(status.rejected_files ?? []).map((f) => ({ name: f.name, verdict: "rejected" as const, reason: f.reason })),
    ...(status.skipped_files ?? []).map((f) => ({ name: f.name, verdict: "skipped" as const, reason: f.reason })),
  ];
}

function seriesLabel(s: { series_number: number | null; description: string }): string {
  return [s.series_number !== null ? `Series ${s.series_number}` : "A series", s.description].filter(Boolean).join(" · ");
}

/** "Series 2 · Axial: 118 of 120 images" for each series the server found. */
export function seriesOf(studies: StatusStudy[]): string[] {
  return studies.flatMap((st) =>
    st.series.map((s) => `${seriesLabel(s)}: ${s.expected_instances > s.instances ? `${s.instances} of ${s.expected_instances}` : s.instances} images`),
  );
}

/** What a delivered study keeps: nothing that identifies the patient. */
export function finishedSummary(
  status: UploadStatus,
  before: Pick<Study, "studyName" | "fields" | "sentAt"> | undefined,
  fallbackReceivedAt: number,
): FinishedSummary {
  const studies = status.studies ?? [];
  const received = status.completed_at ? Date.parse(status.completed_at) : NaN;
  const sentAt = before?.sentAt ?? null;
  return {
    modality: [...new Set(studies.flatMap((s) => s.modalities))].join("/") || before?.fields?.modality || "",
    // The name the technician gave it, else the headers' description.
    studyDescription: before?.studyName || studies.map((s) => s.study_description).filter(Boolean).join("; ") || before?.fields?.studyDescription || "",
    series: studies.reduce((n, s) => n + s.series.length, 0),
    images: studies.reduce((n, s) => n + s.instances, 0),
    skipped: (status.skipped_files ?? []).length + status.rejected_files.length,
    sentAt,
    receivedAt: isNaN(received) ? fallbackReceivedAt : received,
    report: "",
  };
}

/** Ask whoever runs the uploader (this tab, another tab) to look at the queue now. */
export function wakeUploaders(): void {
  if (typeof BroadcastChannel !== "undefined") {
    const channel = new BroadcastChannel(WAKE_CHANNEL);
    channel.postMessage("wake");
    channel.close();
  }
}
