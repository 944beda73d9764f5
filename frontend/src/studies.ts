/** Putting a study in the queue and acting on it: the page's side of the queue. */
import { ApiError, apiFetch } from "./api";
import { accessToken } from "./auth";
import { db, studyBlobs, type ServiceLevel, type Study, type StudyFields } from "./db";
import { hashFiles } from "./fileWork";
import { requestBackgroundSync, wakeUploads } from "./runtime";
import { studyCancelSend, studyEvent, toUserError, wakeUploaders } from "./uploader";

// Room kept free beyond the study itself, for the browser's own bookkeeping.
const QUOTA_MARGIN_BYTES = 50 * 1024 * 1024;

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export interface NewStudy {
  owner: string;
  files: File[];
  fields: StudyFields;
  studyName: string;
  clinicalNotes: string;
  serviceLevel: ServiceLevel;
  /** Each file's series, when its header was read on the device. */
  series?: (string | undefined)[];
  /** Images added to a report's study (Reports, "Add images"). */
  addTo?: Study["addTo"];
}

export function fileName(file: File): string {
  return file.webkitRelativePath || file.name;
}

/** Refuse clearly when the browser will not give the room a study needs. */
export async function checkQuota(totalSize: number): Promise<void> {
  const estimate = await navigator.storage?.estimate?.();
  if (!estimate?.quota) return;
  const free = estimate.quota - (estimate.usage ?? 0);
  if (free < totalSize + QUOTA_MARGIN_BYTES) {
    throw new ApiError(
      0,
      "quota_too_small",
      `This device has room for ${formatBytes(Math.max(0, free))} more, but the study needs ${formatBytes(totalSize)}.`,
      "Free some space on the device (or wait until the queued studies are sent), or send the study in smaller parts.",
    );
  }
}

/** Store the study and its files (the Blobs themselves) in the queue, then hash and send. */
export async function queueStudy(input: NewStudy): Promise<number> {
  const totalSize = input.files.reduce((sum, f) => sum + f.size, 0);
  await checkQuota(totalSize);
  void navigator.storage?.persist?.();
  const study: Study = {
    owner: input.owner,
    createdAt: Date.now(),
    state: "preparing",
    fields: input.fields,
    studyName: input.studyName,
    clinicalNotes: input.clinicalNotes,
    serviceLevel: input.serviceLevel,
    files: input.files.map((f, i) => ({ name: fileName(f), size: f.size, type: f.type, ...(input.series?.[i] ? { series: input.series[i] } : {}) })),
    fileCount: input.files.length,
    totalSize,
    hashedBytes: 0,
    forceUpload: false,
    uploadId: null,
    uploadToken: null,
    chunkSize: null,
    totalChunks: null,
    bytesAcked: 0,
    rate: 0,
    serverState: null,
    error: null,
    completedAt: null,
    ...(input.addTo ? { addTo: input.addTo } : {}),
  };
  let id = 0;
  try {
    id = await db.transaction("rw", db.studies, db.blobs, async () => {
      const newId = (await db.studies.add(study)) as number;
      await db.blobs.bulkAdd(input.files.map((blob, index) => ({ studyId: newId, index, blob })));
      return newId;
    });
  } catch (error) {
    if ((error as Error).name === "QuotaExceededError" || (error as { inner?: Error }).inner?.name === "QuotaExceededError") {
      throw new ApiError(0, "quota_too_small", "This device ran out of storage while saving the study.", "Free some space on the device, or send the study in smaller parts.");
    }
    throw error;
  }
  void prepareStudy(id);
  return id;
}

const preparing = new Set<number>();

/** Hash the study's files (in a Web Worker), then hand it to the uploader. */
export async function prepareStudy(id: number): Promise<void> {
  if (preparing.has(id)) return;
  preparing.add(id);
  try {
    const blobs = await studyBlobs(id);
    let lastWrite = 0;
    const sha256 = await hashFiles(blobs, (bytes) => {
      if (Date.now() - lastWrite > 250) {
        lastWrite = Date.now();
        void db.studies.update(id, { hashedBytes: bytes });
      }
    });
    await db.transaction("rw", db.studies, async () => {
      const study = await db.studies.get(id);
      if (!study || study.state !== "preparing") return;
      await db.studies.update(id, {
        files: study.files.map((f, i) => ({ ...f, sha256: sha256[i] })),
        hashedBytes: study.totalSize,
      });
    });
    await studyEvent(id, { type: "prepared" });
    wakeAll();
  } catch (error) {
    await studyEvent(id, { type: "fail" }, { error: toUserError(error) });
  } finally {
    preparing.delete(id);
  }
}

/** On start: finish hashing studies whose page was closed while hashing. */
export async function resumePreparation(owner: string): Promise<void> {
  const studies = await db.studies.where("owner").equals(owner).toArray();
  for (const s of studies) if (s.state === "preparing") void prepareStudy(s.id!);
}

function wakeAll(): void {
  wakeUploads();
  wakeUploaders();
  void requestBackgroundSync();
}

export async function pauseStudy(id: number): Promise<void> {
  await studyEvent(id, { type: "pause" });
}

export async function resumeStudy(id: number): Promise<void> {
  await studyEvent(id, { type: "resume" });
  wakeAll();
}

// Failures of delivery: the server keeps the checked study's bytes and can send it again
// (docs/upload-api.md, "The bytes"; uploads/services/transitions.py DELIVERY_FAILURE_CODES).
// After any other failure its bytes are deleted.
export const SERVER_RETRIES = new Set(["pacs_unreachable", "pacs_unavailable", "pacs_not_listing", "pacs_rejected", "pacs_refused_instances", "no_pacs_configured", "forwarding_failed"]);

/** What a study that needs attention offers: the server's retry where it can, a new upload
 * from the files still on this device otherwise ("send again"; "send the others" leaves
 * the damaged files out), or nothing but picking the files again. */
export function recoveryOf(study: Pick<Study, "state" | "serverState" | "error" | "uploadId" | "retryGone">): "retry" | "confirm" | "send_anyway" | "send_others" | "send_again" | null {
  if (study.state !== "needs_attention") return null;
  const code = study.error?.code ?? "";
  if (code === "possible_duplicate") return "send_anyway";
  if (code === "files_missing" || code === "files_changed") return null;
  if (study.serverState === "needs_confirmation") return "confirm";
  if (study.serverState === "failed" || study.serverState === "upload_expired" || code === "upload_expired") {
    if (code === "invalid_files") return "send_others";
    return SERVER_RETRIES.has(code) && !study.retryGone ? "retry" : "send_again";
  }
  return "retry";
}

/** Send the study again as a new upload, from the files still on this device; with
 * `allowPartial` the server leaves out the damaged files and sends the rest. Says plainly
 * when the files are no longer here. */
export async function sendAgain(study: Study, options: { allowPartial?: boolean } = {}): Promise<void> {
  const id = study.id!;
  const blobs = await db.blobs.where("studyId").equals(id).count();
  if (blobs !== study.files.length || study.files.length === 0) {
    await db.studies.update(id, {
      error: { code: "files_missing", message: "The files of this study are no longer on this device.", hint: "Cancel this study and pick its files again." },
    });
    return;
  }
  await db.transaction("rw", db.studies, db.ackPages, async () => {
    await db.ackPages.where("studyId").equals(id).delete();
    await studyEvent(
      id,
      { type: "retry" },
      {
        uploadId: null,
        uploadToken: null,
        chunkSize: null,
        totalChunks: null,
        bytesAcked: 0,
        serverState: null,
        serverFiles: [],
        serverSeries: [],
        error: null,
        retryGone: false,
        allowPartial: options.allowPartial ?? study.allowPartial ?? false,
      },
    );
  });
  wakeAll();
}

/** Take a finished study off the queue's list; the history keeps it. */
export async function dismissStudy(id: number): Promise<void> {
  await db.studies.update(id, { dismissed: true });
}

/** Retry: on the server when the server failed it, otherwise send again from this device. */
export async function retryStudy(study: Study, options: { force?: boolean } = {}): Promise<void> {
  const id = study.id!;
  if (study.uploadId && (study.serverState === "failed" || study.serverState === "needs_confirmation")) {
    const action = study.serverState === "failed" ? "retry" : "confirm";
    try {
      await apiFetch(`/upload/${study.uploadId}/${action}`, { method: "POST", token: await accessToken() });
      await db.studies.update(id, { state: "processing", serverState: "processing", error: null });
    } catch (error) {
      // The server's bytes are gone: the choice left is a new upload from this device.
      const gone = error instanceof ApiError && error.code === "nothing_to_retry";
      await db.studies.update(id, { error: toUserError(error), ...(gone ? { retryGone: true } : {}) });
    }
    wakeAll();
    return;
  }
  await studyEvent(id, { type: "retry" }, { error: null, ...(options.force ? { forceUpload: true } : {}) });
  wakeAll();
}

/** Cancel: queued on the device like an upload ("cancelling") and sent now if the server can
 * be reached, otherwise as soon as it can (the uploader's turn: start, back online, page
 * visible, Background Sync). The study and its files stay on the device until the server
 * confirmed, so a cancel tapped offline cannot be lost while the server goes on to deliver. */
export async function cancelStudy(id: number): Promise<void> {
  const study = await studyEvent(id, { type: "cancel" }, { error: null });
  if (study?.state !== "cancelling") return;
  wakeAll();
  try {
    await studyCancelSend(id);
  } catch {
    // Not confirmed yet (offline, server down, signed out): it stays queued.
  }
}

/** Studies of this user that still hold data on the device. */
export async function unfinishedStudies(owner: string): Promise<Study[]> {
  const studies = await db.studies.where("owner").equals(owner).toArray();
  return studies.filter((s) => s.state !== "completed" && s.state !== "cancelled");
}

/** Cancel every unfinished study of this user (before signing out). Cancels the server cannot
 * confirm now stay queued and are sent when this user next signs in on this device. */
export async function discardAll(owner: string): Promise<void> {
  for (const study of await unfinishedStudies(owner)) await cancelStudy(study.id!);
}
