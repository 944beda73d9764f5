/** The device's queue in IndexedDB (Dexie): study records and the original file Blobs. */
import Dexie, { type EntityTable } from "dexie";
import type { KeptStats } from "./dashboard";
import type { StudyState } from "./queueState";

export interface UserError {
  code: string;
  message: string;
  hint: string;
}

/** Why a queued study waits although the device is online: the server answered the last try
 * with a passing error (503, unreachable). In the app's words (words.ts), and when the
 * engine tries again. */
export interface WaitNote {
  message: string;
  hint: string;
  /** When the engine's wait ends (ms since the epoch). */
  retryAt: number;
}

export interface StoredFile {
  name: string; // with its relative path for folders
  size: number;
  type: string;
  sha256?: string;
  /** The series it belongs to ("Series 2 · Axial"), when its header was read on the device. */
  series?: string;
}

/** The server's verdict on a file it does not send (status `rejected_files`,
 * `skipped_files`); names can carry patient data, so it goes with the study's fields. */
export interface ServerFile {
  name: string;
  verdict: "rejected" | "skipped";
  reason: string;
}

/** What a finished study keeps once its patient data is removed: nothing that identifies
 * the patient (no name, ID, birth date, file names). */
export interface FinishedSummary {
  modality: string;
  studyDescription: string;
  series: number;
  images: number;
  skipped: number;
  sentAt: number | null;
  receivedAt: number | null;
  /** The report's state in words ("Report ready", words.ts), once a report exists. */
  report: string;
}

export interface StudyFields {
  patientName: string;
  patientId: string;
  patientBirthDate: string;
  patientSex: string;
  studyDate: string; // YYYYMMDD
  modality: string;
  studyDescription: string;
  accessionNumber: string;
}

export type ServiceLevel = "routine" | "urgent" | "emergency" | "stat";

export interface Study {
  id?: number;
  owner: string;
  createdAt: number;
  state: StudyState;
  /** Patient and study fields; emptied once the PACS has the study (no PHI left behind). */
  fields: StudyFields | null;
  studyName: string;
  clinicalNotes: string;
  serviceLevel: ServiceLevel;
  files: StoredFile[];
  fileCount: number;
  totalSize: number;
  hashedBytes: number;
  forceUpload: boolean;
  uploadId: string | null;
  uploadToken: string | null;
  chunkSize: number | null;
  totalChunks: number | null;
  /** Bytes the server acknowledged; which chunks it acknowledged is in `ackPages`. Written at
   * most once a second while uploading (the record carries the file list, so a write per
   * chunk would cost the whole list every chunk). */
  bytesAcked: number;
  /** Recent speed, bytes per second, while uploading. */
  rate: number;
  serverState: string | null;
  error: UserError | null;
  /** Only while queued or uploading (queueState.ts `keepsWaitNote`); none offline, where
   * the offline banner says why. Not indexed: no schema version. */
  waitNote?: WaitNote | null;
  completedAt: number | null;
  /** Send again with damaged files left out (`allow_partial`). */
  allowPartial?: boolean;
  /** When every byte was on the server. */
  sentAt?: number | null;
  serverFiles?: ServerFile[];
  /** The files' series as the server found them ("Series 1: 14 images"), for the choices. */
  serverSeries?: string[];
  /** DICOM images the server found sound (sent when damaged files are left out). */
  serverImages?: number;
  summary?: FinishedSummary | null;
  /** Off the queue's list (the history still shows it). */
  dismissed?: boolean;
  /** The server said it can no longer retry (its bytes are gone). */
  retryGone?: boolean;
  /** Images added to a report's study (Reports, "Add images"): the report, whose study
   * (Study Instance UID) the upload names at init, read from the server then. */
  addTo?: { reportId: number } | null;
}

export interface StoredBlob {
  studyId: number;
  index: number;
  blob: Blob;
}

/** Which chunks of a study the server acknowledged: a bitmap in fixed-size pages, so that
 * recording a chunk writes one small row whatever the chunk's index (a growing array of
 * indexes was rewritten whole for every chunk: quadratic in the number of chunks). */
export interface AckPage {
  studyId: number;
  page: number;
  /** Bit `i % ACK_PAGE_CHUNKS` of byte `⌊i / 8⌋ % ACK_PAGE_BYTES` is chunk `i`. */
  bits: Uint8Array;
}

export const ACK_PAGE_BYTES = 128;
export const ACK_PAGE_CHUNKS = ACK_PAGE_BYTES * 8;

export function ackPageOf(index: number): { page: number; byte: number; mask: number } {
  const bit = index % ACK_PAGE_CHUNKS;
  return { page: Math.floor(index / ACK_PAGE_CHUNKS), byte: bit >> 3, mask: 1 << (bit & 7) };
}

/** The pages that say "every chunk of `totalChunks` but `missing` is acknowledged". */
export function ackPagesFor(studyId: number, totalChunks: number, missing: Iterable<number>): AckPage[] {
  const pages: AckPage[] = [];
  for (let page = 0; page * ACK_PAGE_CHUNKS < totalChunks; page++) {
    const bits = new Uint8Array(ACK_PAGE_BYTES);
    const first = page * ACK_PAGE_CHUNKS;
    const last = Math.min(totalChunks, first + ACK_PAGE_CHUNKS);
    for (let i = first; i < last; i++) bits[(i - first) >> 3]! |= 1 << ((i - first) & 7);
    pages.push({ studyId, page, bits });
  }
  for (const index of missing) {
    if (index < 0 || index >= totalChunks) continue;
    const { page, byte, mask } = ackPageOf(index);
    pages[page]!.bits[byte]! &= ~mask;
  }
  return pages;
}

/** A report as this device keeps it to show offline (reports.ts `reportRow`): nothing that
 * names the patient (no name, ID, birth date, accession number, clinical notes, findings).
 * The radiologist's question is kept only while it waits for an answer. */
export interface CachedReport {
  id: number;
  owner: string;
  status: string;
  modality: string;
  studyDescription: string;
  serviceLevel: string;
  uploadIds: string[];
  /** Only while `status` is `additional_data_required`. */
  question: string;
  /** A PDF can be asked for (a signed version's PDF exists). */
  pdf: boolean;
  createdAt: number;
  updatedAt: number;
}

/** When this device last had the owner's list of reports from the server. */
export interface ReportListView {
  owner: string;
  fetchedAt: number;
}

/** An answer to a radiologist's question, kept until the server took it (sent when online). */
export interface QueuedReply {
  id?: number;
  owner: string;
  reportId: number;
  answer: string;
  createdAt: number;
  /** "queued": sent when the network is back; "refused": the server said no (`error`). */
  state: "queued" | "refused";
  error: UserError | null;
  /** When the server refused it: a refused answer is deleted 7 days later (`repliesExpire`). */
  refusedAt?: number | null;
}

export interface AuthSession {
  key: "current";
  username: string;
  access: string;
  refresh: string;
  /** True when the refresh token was refused: the queue waits until the user signs in again. */
  expired: boolean;
}

export class RelayDb extends Dexie {
  studies!: EntityTable<Study, "id">;
  blobs!: Dexie.Table<StoredBlob, [number, number]>;
  ackPages!: Dexie.Table<AckPage, [number, number]>;
  auth!: EntityTable<AuthSession, "key">;
  reports!: Dexie.Table<CachedReport, [string, number]>;
  reportViews!: EntityTable<ReportListView, "owner">;
  replies!: EntityTable<QueuedReply, "id">;
  dashboard!: Dexie.Table<KeptStats, [string, string]>;

  constructor(name = "relaypacs") {
    super(name);
    this.version(1).stores({
      studies: "++id, owner, state, createdAt",
      blobs: "[studyId+index], studyId",
      auth: "key",
    });
    // Version 2: acknowledged chunks move from the study record (`acked`, an array of
    // indexes) to bitmap pages. A study queued before the update keeps what it had.
    this.version(2)
      .stores({ ackPages: "[studyId+page], studyId" })
      .upgrade(async (tx) => {
        const studies = tx.table<Study & { acked?: number[] }, number>("studies");
        const pages = tx.table<AckPage, [number, number]>("ackPages");
        for (const study of await studies.toArray()) {
          const acked = new Set(study.acked ?? []);
          if (!acked.size || !study.totalChunks || study.id === undefined) continue;
          const missing: number[] = [];
          for (let i = 0; i < study.totalChunks; i++) if (!acked.has(i)) missing.push(i);
          await pages.bulkPut(ackPagesFor(study.id, study.totalChunks, missing));
        }
        await studies.toCollection().modify((study) => {
          delete study.acked;
        });
      });
    // Version 3: the Reports screen's offline copy and the answers waiting for the network.
    // Nothing to carry over: the tables start empty and studies keep every field they had.
    this.version(3).stores({
      reports: "[owner+id], owner",
      reportViews: "owner",
      replies: "++id, owner, reportId",
    });
    // Version 4: the dashboard's last figures per period (aggregate numbers only), for the
    // offline "cached" badge. A new table: nothing to carry over.
    this.version(4).stores({ dashboard: "[owner+period], owner" });
  }
}

export const db = new RelayDb();

export async function studyBlobs(studyId: number): Promise<Blob[]> {
  const rows = await db.blobs.where("studyId").equals(studyId).sortBy("index");
  return rows.map((r) => r.blob);
}

/** Forget everything that identifies the patient (fields, notes, file names, Blobs) once
 * the PACS has the study or it was cancelled; what stays is a non-identifying history line:
 * date, size, number of files, state and `summary` (modality, description, counts, times). */
export async function studyScrub(studyId: number, patch: Partial<Study>): Promise<void> {
  await db.transaction("rw", db.studies, db.blobs, db.ackPages, async () => {
    await db.blobs.where("studyId").equals(studyId).delete();
    await db.ackPages.where("studyId").equals(studyId).delete();
    await db.studies.update(studyId, {
      ...patch,
      fields: null,
      studyName: "",
      clinicalNotes: "",
      files: [],
      serverFiles: [],
      serverSeries: [],
      uploadToken: null,
    });
  });
}
