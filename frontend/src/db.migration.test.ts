/** A study queued by the app before the update (acknowledged chunks as an array on the study
 * record, database version 1) is carried over to the bitmap pages and still resumes. */
import "fake-indexeddb/auto";
import Dexie from "dexie";
import { afterEach, describe, expect, it, vi } from "vitest";
import { ackPageOf, db } from "./db";
import { FakeUploadServer, OWNER, signInOnDevice } from "./testkit";
import { Uploader } from "./uploader";

const CHUNK = 16;
const CHUNKS = 1030; // two bitmap pages
const ACKED = [0, 1, 2, 5, 1023, 1024];

async function queueWithVersion1(uploadId: string): Promise<number> {
  // The database exactly as version 1 of the app made it.
  const old = new Dexie("relaypacs");
  old.version(1).stores({ studies: "++id, owner, state, createdAt", blobs: "[studyId+index], studyId", auth: "key" });
  const size = CHUNK * CHUNKS;
  const id = (await old.table("studies").add({
    owner: OWNER,
    createdAt: Date.now(),
    state: "queued",
    fields: null,
    studyName: "",
    clinicalNotes: "",
    serviceLevel: "routine",
    files: [{ name: "IM0001", size, type: "", sha256: "0".repeat(64) }],
    fileCount: 1,
    totalSize: size,
    hashedBytes: size,
    forceUpload: false,
    uploadId,
    uploadToken: "upl_test",
    chunkSize: CHUNK,
    totalChunks: CHUNKS,
    acked: ACKED,
    bytesAcked: ACKED.length * CHUNK,
    rate: 0,
    serverState: "receiving",
    error: null,
    completedAt: null,
  })) as number;
  await old.table("blobs").add({ studyId: id, index: 0, blob: new Blob([new Uint8Array(size).fill(7)]) });
  old.close();
  return id;
}

describe("the version 2 upgrade of the device's queue", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("moves acknowledged chunks to bitmap pages, and the study queued before still resumes", async () => {
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    const id = await queueWithVersion1(server.uploadId);
    for (const index of ACKED) server.received.add(index);

    const study = (await db.studies.get(id)) as Record<string, unknown> | undefined;
    expect(study).toBeDefined();
    expect(study).not.toHaveProperty("acked");
    const pages = await db.ackPages.where("studyId").equals(id).toArray();
    expect(pages.map((p) => p.page)).toEqual([0, 1]);
    const acked: number[] = [];
    for (let i = 0; i < CHUNKS; i++) {
      const { page, byte, mask } = ackPageOf(i);
      if (pages[page]!.bits[byte]! & mask) acked.push(i);
    }
    expect(acked).toEqual(ACKED);

    await signInOnDevice();
    vi.stubGlobal("fetch", server.fetch);
    await new Uploader(OWNER, new AbortController().signal).run({ untilSent: true });
    // Resumed on the same upload: no new one, only the chunks the server lacked, then complete.
    expect(server.calls).not.toContain("POST /upload/init");
    expect(new Set(server.chunkRequests)).toEqual(new Set(Array.from({ length: CHUNKS }, (_, i) => i).filter((i) => !ACKED.includes(i))));
    expect(server.chunkRequests).toHaveLength(CHUNKS - ACKED.length);
    expect(server.calls.at(-1)).toBe(`POST /upload/${server.uploadId}/complete`);
    const after = await db.studies.get(id);
    expect(after?.state).toBe("processing");
    expect(after?.bytesAcked).toBe(CHUNK * CHUNKS);
  }, 60_000);
});
