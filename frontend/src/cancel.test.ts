/** Cancel is queued like an upload: the device keeps the study until the server confirmed
 * the cancel, so a cancel tapped offline reaches the server when the network is back. */
import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { db } from "./db";
import { cancelStudy } from "./studies";
import { FakeUploadServer, OWNER, queuedStudy, signInOnDevice, until } from "./testkit";
import { Uploader } from "./uploader";

const CHUNK = 16;
const CHUNKS = 8;

async function onServer(server: FakeUploadServer): Promise<number> {
  // A study whose upload the server has begun receiving.
  server.received.add(0);
  return queuedStudy(CHUNK, CHUNKS, { uploadId: server.uploadId, uploadToken: "upl_test", chunkSize: CHUNK, totalChunks: CHUNKS, serverState: "receiving" });
}

function runUploader(): Promise<void> {
  return new Uploader(OWNER, new AbortController().signal).run({ untilSent: true });
}

const blobsOf = (id: number) => db.blobs.where("studyId").equals(id).count();
const deletes = (server: FakeUploadServer) => server.calls.filter((c) => c.startsWith("DELETE"));

describe("cancelling a study", () => {
  let server: FakeUploadServer;

  beforeEach(async () => {
    await Promise.all([db.studies.clear(), db.blobs.clear(), db.ackPages.clear(), db.auth.clear()]);
    await signInOnDevice();
    server = new FakeUploadServer(CHUNK, CHUNKS);
    vi.stubGlobal("fetch", server.fetch);
  });
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("tapped offline, stays queued with the study kept, and is sent when the network is back", async () => {
    const id = await onServer(server);
    server.reachable = false;
    await cancelStudy(id);
    expect((await db.studies.get(id))?.state).toBe("cancelling");
    expect(await blobsOf(id)).toBe(1);

    await runUploader(); // still offline: nothing is lost, nothing is sent
    expect((await db.studies.get(id))?.state).toBe("cancelling");
    expect(await blobsOf(id)).toBe(1);
    expect(server.state).toBe("receiving");

    server.reachable = true;
    await runUploader();
    const study = await db.studies.get(id);
    expect(study?.state).toBe("cancelled");
    expect(study?.fields).toBeNull();
    expect(await blobsOf(id)).toBe(0);
    expect(server.state).toBe("cancelled");
    expect(deletes(server)).toEqual([`DELETE /upload/${server.uploadId}`]);
    expect(server.chunkRequests).toEqual([]); // a cancelled study is never sent on
  });

  it("ends cancelled when the server says the upload is gone (404 or 410)", async () => {
    for (const answer of [404, 410]) {
      await db.studies.clear();
      const id = await onServer(server);
      server.cancelAnswer = answer;
      await cancelStudy(id);
      expect((await db.studies.get(id))?.state).toBe("cancelled");
      expect(await blobsOf(id)).toBe(0);
    }
  });

  it("says so when the PACS already has the study (409)", async () => {
    const id = await onServer(server);
    server.cancelAnswer = 409;
    await cancelStudy(id);
    const study = await db.studies.get(id);
    expect(study?.state).toBe("completed");
    expect(study?.error?.message).toBe("This study was already delivered to the PACS and cannot be cancelled.");
    expect(await blobsOf(id)).toBe(0);
  });

  it("tapped during the upload, stops new chunks and is confirmed by the server", async () => {
    const id = await queuedStudy(CHUNK, 40);
    server = new FakeUploadServer(CHUNK, 40);
    vi.stubGlobal("fetch", server.fetch);
    server.hold = (index) => index >= 5;
    const done = runUploader();
    await until(() => server.held.length > 0);
    await cancelStudy(id);
    const inFlight = server.chunkRequests.length;
    server.hold = () => false;
    server.answerAll();
    await done;
    expect(server.chunkRequests).toHaveLength(inFlight); // no chunk after the cancel
    expect(server.calls).not.toContain(`POST /upload/${server.uploadId}/complete`);
    expect(server.state).toBe("cancelled");
    const study = await db.studies.get(id);
    expect(study?.state).toBe("cancelled");
    expect(study?.error).toBeNull();
    expect(await blobsOf(id)).toBe(0);
    expect(await db.ackPages.where("studyId").equals(id).count()).toBe(0);
  });

  it("reaches the upload the server started while the cancel was tapped", async () => {
    const id = await queuedStudy(CHUNK, CHUNKS);
    // The cancel is tapped while `init` is on its way: the device had no upload id yet.
    server.beforeInit = () => cancelStudy(id);
    await runUploader();
    expect(server.calls).toContain("POST /upload/init");
    expect(deletes(server)).toEqual([`DELETE /upload/${server.uploadId}`]);
    expect(server.chunkRequests).toEqual([]);
    expect(server.state).toBe("cancelled");
    expect((await db.studies.get(id))?.state).toBe("cancelled");
  });
});
