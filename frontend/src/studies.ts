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
    files: input.files.map((f) => ({ name: fileName(f), size: f.size, type: f.type })),
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

/** Retry: on the server when the server failed it, otherwise send again from this device. */
export async function retryStudy(study: Study, options: { force?: boolean } = {}): Promise<void> {
  const id = study.id!;
  if (study.uploadId && (study.serverState === "failed" || study.serverState === "needs_confirmation")) {
    const action = study.serverState === "failed" ? "retry" : "confirm";
    try {
      await apiFetch(`/upload/${study.uploadId}/${action}`, { method: "POST", token: await accessToken() });
      await db.studies.update(id, { state: "processing", serverState: "processing", error: null });
    } catch (error) {
      await db.studies.update(id, { error: toUserError(error) });
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
