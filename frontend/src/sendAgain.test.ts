import "fake-indexeddb/auto";
import { beforeEach, describe, expect, it } from "vitest";
import { db, type Study } from "./db";
import { sendAgain } from "./studies";

function failedStudy(): Study {
  return {
    owner: "tech", createdAt: 1, state: "needs_attention", fields: null, studyName: "", clinicalNotes: "", serviceLevel: "routine",
    files: [{ name: "a.dcm", size: 3, type: "" }], fileCount: 1, totalSize: 3, hashedBytes: 3, forceUpload: false,
    uploadId: "old", uploadToken: "t", chunkSize: 262144, totalChunks: 1, bytesAcked: 3, rate: 0, serverState: "failed",
    error: { code: "no_dicom_files", message: "", hint: "" }, completedAt: null,
  };
}

describe("sending a failed study again", () => {
  beforeEach(async () => {
    await db.studies.clear();
    await db.blobs.clear();
  });

  it("starts a new upload from the files still on this device, partial when asked", async () => {
    const id = (await db.studies.add(failedStudy())) as number;
    await db.blobs.add({ studyId: id, index: 0, blob: new Blob(["abc"]) });
    await sendAgain((await db.studies.get(id))!, { allowPartial: true });
    const study = (await db.studies.get(id))!;
    expect(study).toMatchObject({ state: "queued", uploadId: null, uploadToken: null, bytesAcked: 0, allowPartial: true, error: null });
  });

  it("says plainly when the files are gone from this device", async () => {
    const id = (await db.studies.add(failedStudy())) as number;
    await sendAgain((await db.studies.get(id))!);
    const study = (await db.studies.get(id))!;
    expect(study.state).toBe("needs_attention");
    expect(study.error).toEqual({ code: "files_missing", message: "The files of this study are no longer on this device.", hint: "Cancel this study and pick its files again." });
  });
});
