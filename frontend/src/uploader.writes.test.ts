/** What the engine writes to IndexedDB per acknowledged chunk must not grow with the chunk's
 * index (issue 9, item 12): the same writes, of the same size, at chunk 10 and at chunk 2,000
 * of one upload. The real engine and the real IndexedDB code (Dexie over fake-indexeddb),
 * against a stand-in for the server's upload API. */
import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { db } from "./db";
import { countIdbWrites, FakeUploadServer, OWNER, queuedStudy, signInOnDevice, until, type IdbWrite } from "./testkit";
import { MAX_IN_FLIGHT } from "./linkTuning";
import { PROGRESS_WRITE_MS, Uploader } from "./uploader";

// Small chunks keep 2,100 of them quick; the engine takes the size the server gives.
const CHUNK = 16;
const CHUNKS = 2100;
const PROBES = [10, 2000];

describe("IndexedDB writes per acknowledged chunk", () => {
  let counter: ReturnType<typeof countIdbWrites> | null = null;

  beforeEach(async () => {
    await Promise.all([db.studies.clear(), db.blobs.clear(), db.ackPages.clear(), db.auth.clear()]);
    await signInOnDevice();
  });
  afterEach(() => {
    counter?.stop();
    counter = null;
    vi.restoreAllMocks();
    vi.unstubAllGlobals();
  });

  it("are the same at chunk 10 and at chunk 2,000 of one upload: one bitmap page of fixed size", async () => {
    const id = await queuedStudy(CHUNK, CHUNKS);
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    vi.stubGlobal("fetch", server.fetch);
    // Time stands still: chunks seem instant, so three stay in flight, and the once-a-second
    // progress write stays out of both samples.
    vi.spyOn(Date, "now").mockReturnValue(1_800_000_000_000);
    counter = countIdbWrites();
    const writes = counter.writes;
    const probes = [...PROBES];
    const perChunk = new Map<number, IdbWrite[]>();
    let sampling: { index: number; from: number } | null = null;
    // From the probe on, chunk answers wait: the probe chunk is then answered alone, and
    // what the engine writes until it asks for its next chunk is that chunk's writes.
    server.hold = (index) => probes.length > 0 && index >= probes[0]!;
    server.onChunkRequest = () => {
      if (!sampling) return;
      perChunk.set(sampling.index, writes.slice(sampling.from));
      sampling = null;
      probes.shift();
    };

    const done = new Uploader(OWNER, new AbortController().signal).run({ untilSent: true });
    for (const probe of PROBES) {
      // The probe and the two after it wait: every chunk before it is done, writes included
      // (the engine asks for a chunk only when one of the chunks in flight is done).
      await until(() => server.held.length === MAX_IN_FLIGHT && server.held.some((h) => h.index === probe));
      sampling = { index: probe, from: writes.length };
      server.answer(probe);
      await until(() => perChunk.has(probe));
      server.answerAll();
    }
    await done;

    expect(server.received.size).toBe(CHUNKS);
    expect((await db.studies.get(id))?.state).toBe("processing");
    const [early, late] = PROBES.map((p) => perChunk.get(p)!);
    // The same writes, to the same stores, of the same sizes in bytes.
    expect(late).toEqual(early);
    expect(early).toEqual([{ store: "ackPages", op: "put", bytes: expect.any(Number) }]);
  }, 120_000);

  it("write the study record at most once a second, and its progress is right at the end", async () => {
    const id = await queuedStudy(CHUNK, CHUNKS);
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    vi.stubGlobal("fetch", server.fetch);
    // 10 ms pass per chunk: 2,100 chunks take 21 s.
    let now = 1_800_000_000_000;
    vi.spyOn(Date, "now").mockImplementation(() => now);
    server.onChunkRequest = () => {
      now += 10;
    };
    counter = countIdbWrites();
    await new Uploader(OWNER, new AbortController().signal).run({ untilSent: true });

    const seconds = (CHUNKS * 10) / PROGRESS_WRITE_MS;
    const studyWrites = counter.writes.filter((w) => w.store === "studies");
    const pageWrites = counter.writes.filter((w) => w.store === "ackPages" && w.op === "put");
    // Besides the progress: init, start, sent, and the fresh token's record.
    expect(studyWrites.length).toBeLessThanOrEqual(seconds + 6);
    // One page per chunk, and the pages written once at the start (from the server's list).
    expect(pageWrites.length).toBe(CHUNKS + Math.ceil(CHUNKS / 1024));
    expect(new Set(pageWrites.map((w) => w.bytes)).size).toBe(1);
    const study = await db.studies.get(id);
    expect(study?.state).toBe("processing");
    expect(study?.bytesAcked).toBe(CHUNK * CHUNKS);
  }, 120_000);
});
