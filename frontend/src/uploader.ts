/** The upload engine: sends every queued study of the signed-in user, chunk by chunk, and
 * follows it until the PACS confirms receipt. It runs in the page and in the service worker
 * (Background Sync), one at a time (Web Lock), with the queue in IndexedDB as the truth. */
import { md5 } from "hash-wasm";
import { ApiError, apiFetch, networkError, type InitResponse, type UploadStatus } from "./api";
import { accessToken, currentSession } from "./auth";
import { backoffDelay, sleep } from "./backoff";
import { chunkBlob, chunkRange } from "./chunks";
import { db, studyBlobs, studyScrub, type Study, type StudyFields, type UserError } from "./db";
import { browserLinkEstimate, chunkSizeFor, MAX_IN_FLIGHT, nextInFlight } from "./linkTuning";
import { fromServerState, isActive, transition, type StudyEvent } from "./queueState";

export const UPLOADER_LOCK = "relaypacs-uploader";
export const SYNC_TAG = "relaypacs-upload";
export const WAKE_CHANNEL = "relaypacs-wake";
// While the server processes and forwards, ask for news this often.
export const POLL_MS = 1500;
// A chunk whose bytes were damaged on the way is sent again this many times.
const CHUNK_ATTEMPTS = 4;
// Speed is measured over this window.
const RATE_WINDOW_MS = 10_000;

class ExpiredUpload extends Error {}

function hexToBase64(hex: string): string {
  let binary = "";
  for (let i = 0; i < hex.length; i += 2) binary += String.fromCharCode(parseInt(hex.slice(i, i + 2), 16));
  return btoa(binary);
}

export function toUserError(error: unknown): UserError {
  if (error instanceof ApiError) return { code: error.code, message: error.message, hint: error.hint };
  return {
    code: "app_error",
    message: "Something went wrong in the app while sending this study.",
    hint: "Press Retry; if it happens again, tell your administrator.",
  };
}

/** Apply a state-machine event to the stored study, atomically against other writers. */
export async function studyEvent(id: number, event: StudyEvent, patch: Partial<Study> = {}): Promise<Study | undefined> {
  return db.transaction("rw", db.studies, async () => {
    const study = await db.studies.get(id);
    if (!study) return undefined;
    const state = transition(study.state, event);
    await db.studies.update(id, { ...patch, state });
    return { ...study, ...patch, state };
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

function isOnline(): boolean {
  return typeof navigator === "undefined" || navigator.onLine !== false;
}

export class Uploader {
  private wakeUp: (() => void) | null = null;
  private inFlight = MAX_IN_FLIGHT;
  private samples: [number, number][] = [];
  private failures = 0;

  constructor(private readonly owner: string, private readonly signal: AbortSignal) {}

  /** Look at the queue again now (new study, back online, resumed). */
  wake(): void {
    this.wakeUp?.();
  }

  private wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const onAbort = () => done();
      this.signal.addEventListener("abort", onAbort);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUp = () => {
        this.signal.removeEventListener("abort", onAbort);
        done();
      };
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
      const studies = (await db.studies.where("owner").equals(this.owner).sortBy("createdAt")).filter((s) => isActive(s.state));
      const sending = studies.filter((s) => s.state === "queued" || s.state === "uploading");
      if (untilSent && sending.length === 0) return;
      let delay = studies.length ? POLL_MS : 60_000;
      if (!isOnline()) {
        for (const s of sending) await studyEvent(s.id!, { type: "offline" });
        if (untilSent) return;
        await this.wait(60_000);
        continue;
      }
      try {
        for (const study of studies) {
          if (this.signal.aborted) return;
          await this.step(study.id!);
        }
        this.failures = 0;
      } catch (error) {
        if (error instanceof ApiError && (error.transient || error.code === "sign_in_required")) {
          // Offline, server restarting, or sign-in needed: keep the queue, try again later.
          this.failures += 1;
          for (const s of sending) await studyEvent(s.id!, { type: "offline" });
          if (untilSent) return;
          delay = error.code === "sign_in_required" ? 60_000 : backoffDelay(this.failures);
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
    try {
      if (study.state === "queued" || study.state === "uploading") await this.send(study);
      else await this.follow(study);
    } catch (error) {
      if (error instanceof ExpiredUpload) {
        // The server forgot the upload (expired or unknown): start again from the stored files.
        await db.studies.update(id, { uploadId: null, uploadToken: null, acked: [], bytesAcked: 0 });
        return;
      }
      if (error instanceof ApiError && (error.transient || error.code === "sign_in_required")) throw error;
      if ((error as Error).name === "AbortError") throw error;
      await studyEvent(id, { type: "fail" }, { error: toUserError(error) });
    }
  }

  private async init(study: Study): Promise<Study> {
    const token = await accessToken();
    const body = {
      files: study.files.map((f) => ({ name: f.name, size: f.size, ...(f.sha256 ? { sha256: f.sha256 } : {}) })),
      metadata: metadataOf(study.fields, study.studyName),
      clinical_notes: study.clinicalNotes,
      service_level: study.serviceLevel,
      allow_partial: false,
      force_upload: study.forceUpload,
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
      acked: [],
      bytesAcked: 0,
    };
    await db.studies.update(study.id!, patch);
    return { ...study, ...patch };
  }

  /** Call the upload's endpoints with its upload token, getting a fresh one when refused. */
  private async withUploadToken<T>(study: Study, call: (token: string) => Promise<T>): Promise<T> {
    try {
      return await call(study.uploadToken ?? "");
    } catch (error) {
      if (error instanceof ApiError && (error.status === 404 || error.status === 410)) throw new ExpiredUpload();
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
    }
    const access = await accessToken();
    let fresh: { upload_token: string };
    try {
      fresh = await apiFetch(`/upload/${study.uploadId}/token`, { method: "POST", token: access });
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
    if (!study.uploadId) study = await this.init(study);
    const status = await this.status(study);
    if (status.state === "upload_expired" || status.error?.code === "upload_expired") throw new ExpiredUpload();
    if (status.state !== "receiving") {
      await this.applyStatus(study.id!, status);
      return;
    }
    // The server's list of missing chunks is the truth: it never lists an acknowledged chunk.
    const missing = status.missing_chunks;
    const missingSet = new Set(missing);
    const acked = Array.from({ length: study.totalChunks ?? 0 }, (_, i) => i).filter((i) => !missingSet.has(i));
    const started = await studyEvent(study.id!, { type: "start" }, { acked, bytesAcked: status.bytes_received, serverState: "receiving", error: null });
    if (started?.state !== "uploading") return;
    const blobs = await studyBlobs(study.id!);
    if (blobs.length !== study.files.length) {
      throw new ApiError(
        0,
        "files_missing",
        "The files of this study are no longer stored on this device.",
        "Cancel this study and pick the files again.",
      );
    }
    const complete = await this.sendChunks(study, blobs, missing);
    if (!complete) return; // paused, cancelled or offline
    try {
      await this.withUploadToken(study, (token) => apiFetch(`/upload/${study.uploadId}/complete`, { method: "POST", token }));
    } catch (error) {
      if (error instanceof ApiError && error.code === "upload_incomplete") return; // the next step sends the rest
      throw error;
    }
    await studyEvent(study.id!, { type: "sent" }, { serverState: "processing", rate: 0 });
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
      try {
        await this.withUploadToken(study, (token) =>
          apiFetch(`/upload/${study.uploadId}/chunk?index=${index}`, {
            method: "PUT",
            token,
            body,
            headers: { "Content-Type": "application/octet-stream", "Content-MD5": contentMd5 },
            signal: this.signal,
          }),
        );
      } catch (error) {
        // Bytes damaged on the way: the server stored nothing, send them again.
        if (error instanceof ApiError && error.code === "checksum_mismatch" && attempt + 1 < CHUNK_ATTEMPTS) continue;
        if (error instanceof ApiError && error.status >= 500 && error.status !== 507 && attempt + 1 < CHUNK_ATTEMPTS) {
          await sleep(backoffDelay(attempt), this.signal);
          continue;
        }
        throw error;
      }
      this.adapt(Date.now() - began);
      await this.acknowledge(study.id!, index, body.length);
      return;
    }
  }

  private adapt(ms: number): void {
    this.inFlight = nextInFlight(this.inFlight, ms / 1000);
  }

  /** The upload speed measured on recent chunks, if there were enough of them. */
  private measuredRate(): number | null {
    if (this.samples.length < 3) return null;
    const bytes = this.samples.reduce((sum, [, b]) => sum + b, 0);
    const span = (Date.now() - this.samples[0]![0]) / 1000;
    return span > 1 ? bytes / span : null;
  }

  private async acknowledge(id: number, index: number, bytes: number): Promise<void> {
    const now = Date.now();
    this.samples.push([now, bytes]);
    this.samples = this.samples.filter(([t]) => now - t <= RATE_WINDOW_MS);
    const windowBytes = this.samples.reduce((sum, [, b]) => sum + b, 0);
    const span = Math.max(1000, now - this.samples[0]![0]);
    const rate = (windowBytes / span) * 1000;
    await db.studies
      .where("id")
      .equals(id)
      .modify((s) => {
        if (s.acked.includes(index)) return;
        s.acked.push(index);
        s.bytesAcked += bytes;
        s.rate = rate;
      });
  }

  /** Follow a study the server is processing or forwarding. */
  private async follow(study: Study): Promise<void> {
    if (!study.uploadId) {
      await studyEvent(study.id!, { type: "fail" }, { error: toUserError(null) });
      return;
    }
    await this.applyStatus(study.id!, await this.status(study));
  }

  private async applyStatus(id: number, status: UploadStatus): Promise<void> {
    const local = fromServerState(status.state);
    if (local === "completed") {
      // The PACS confirmed every instance: nothing of the patient stays on this device.
      await studyScrub(id, { state: "completed", serverState: status.state, completedAt: Date.now(), error: null });
      return;
    }
    if (local === "cancelled") {
      await studyScrub(id, { state: "cancelled", serverState: status.state, error: null });
      return;
    }
    let error: UserError | null = status.error ? { code: status.error.code, message: status.error.message, hint: status.error.hint ?? "" } : null;
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
    await studyEvent(id, { type: "server", state: status.state }, { serverState: status.state, error });
  }
}

/** Ask whoever runs the uploader (this tab, another tab) to look at the queue now. */
export function wakeUploaders(): void {
  if (typeof BroadcastChannel !== "undefined") {
    const channel = new BroadcastChannel(WAKE_CHANNEL);
    channel.postMessage("wake");
    channel.close();
  }
}
