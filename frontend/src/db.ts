/** The device's queue in IndexedDB (Dexie): study records and the original file Blobs. */
import Dexie, { type EntityTable } from "dexie";
import type { StudyState } from "./queueState";

export interface UserError {
  code: string;
  message: string;
  hint: string;
}

export interface StoredFile {
  name: string; // with its relative path for folders
  size: number;
  type: string;
  sha256?: string;
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
  /** Chunks the server acknowledged. */
  acked: number[];
  bytesAcked: number;
  /** Recent speed, bytes per second, while uploading. */
  rate: number;
  serverState: string | null;
  error: UserError | null;
  completedAt: number | null;
}

export interface StoredBlob {
  studyId: number;
  index: number;
  blob: Blob;
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
  auth!: EntityTable<AuthSession, "key">;

  constructor(name = "relaypacs") {
    super(name);
    this.version(1).stores({
      studies: "++id, owner, state, createdAt",
      blobs: "[studyId+index], studyId",
      auth: "key",
    });
  }
}

export const db = new RelayDb();

export async function studyBlobs(studyId: number): Promise<Blob[]> {
  const rows = await db.blobs.where("studyId").equals(studyId).sortBy("index");
  return rows.map((r) => r.blob);
}

/** Forget everything that identifies the patient (fields, notes, file names, Blobs) once
 * the PACS has the study or it was cancelled; what stays is a non-identifying history line:
 * date, size, number of files and state. */
export async function studyScrub(studyId: number, patch: Partial<Study>): Promise<void> {
  await db.transaction("rw", db.studies, db.blobs, async () => {
    await db.blobs.where("studyId").equals(studyId).delete();
    await db.studies.update(studyId, {
      ...patch,
      fields: null,
      studyName: "",
      clinicalNotes: "",
      files: [],
      uploadToken: null,
      acked: [],
    });
  });
}
