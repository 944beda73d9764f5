/** The version 3 upgrade of the device's database (the Reports screen's tables): a study
 * queued before the update keeps every field and its acknowledged chunks, and the new
 * tables (saved reports, list times, queued answers) start empty and work. */
import "fake-indexeddb/auto";
import Dexie from "dexie";
import { describe, expect, it } from "vitest";
import { db } from "./db";
import { OWNER } from "./testkit";

async function queueWithVersion2(): Promise<number> {
  // The database exactly as version 2 of the app made it.
  const old = new Dexie("relaypacs");
  old.version(1).stores({ studies: "++id, owner, state, createdAt", blobs: "[studyId+index], studyId", auth: "key" });
  old.version(2).stores({ ackPages: "[studyId+page], studyId" });
  const id = (await old.table("studies").add({
    owner: OWNER,
    createdAt: 1_700_000_000_000,
    state: "queued",
    fields: { patientName: "DOE^JANE", patientId: "P1", patientBirthDate: "", patientSex: "", studyDate: "20261201", modality: "CT", studyDescription: "CT head", accessionNumber: "" },
    studyName: "",
    clinicalNotes: "Fall",
    serviceLevel: "urgent",
    files: [{ name: "IM0001", size: 32, type: "", sha256: "0".repeat(64) }],
    fileCount: 1,
    totalSize: 32,
    hashedBytes: 32,
    forceUpload: false,
    uploadId: "00000000-0000-4000-8000-000000000009",
    uploadToken: "upl_test",
    chunkSize: 16,
    totalChunks: 2,
    bytesAcked: 16,
    rate: 0,
    serverState: "receiving",
    error: null,
    completedAt: null,
  })) as number;
  await old.table("ackPages").add({ studyId: id, page: 0, bits: new Uint8Array([1]) });
  await old.table("blobs").add({ studyId: id, index: 0, blob: new Blob([new Uint8Array(32)]) });
  old.close();
  return id;
}

describe("the version 3 upgrade of the device's database", () => {
  it("keeps the queued study as it was and adds the Reports screen's tables, empty", async () => {
    const id = await queueWithVersion2();
    const study = await db.studies.get(id);
    expect(study).toMatchObject({ state: "queued", serviceLevel: "urgent", uploadId: "00000000-0000-4000-8000-000000000009", bytesAcked: 16, totalChunks: 2 });
    expect(study?.addTo).toBeUndefined();
    expect((await db.ackPages.get([id, 0]))?.bits[0]).toBe(1);
    expect(await db.blobs.where("studyId").equals(id).count()).toBe(1);
    // Version 3 or later (4 adds the dashboard's table, empty too).
    expect(db.verno).toBeGreaterThanOrEqual(3);
    expect(await db.dashboard.count()).toBe(0);
    expect(await db.reports.count()).toBe(0);
    expect(await db.replies.count()).toBe(0);

    await db.reports.put({ id: 1, owner: OWNER, status: "assigned", modality: "CT", studyDescription: "CT head", serviceLevel: "urgent", uploadIds: [], question: "", pdf: false, createdAt: 1, updatedAt: 1 });
    // Two accounts on one device may see the same report: one row each.
    await db.reports.put({ ...(await db.reports.get([OWNER, 1]))!, owner: "other" });
    expect(await db.reports.where("owner").equals(OWNER).count()).toBe(1);
    expect(await db.reports.count()).toBe(2);
    await db.replies.add({ owner: OWNER, reportId: 1, answer: "Yes.", createdAt: 1, state: "queued", error: null });
    expect(await db.replies.where("reportId").equals(1).count()).toBe(1);
  });
});
