/** A chunk request that stalls (neither answered nor failed: a connection dropped without a
 * reset) is given up after chunkStallMs and sent again, so the upload goes on by itself
 * instead of waiting on it for good. The real engine and the real IndexedDB code, against
 * a stand-in for the server's upload API; the stall time is shortened to keep the test fast. */
import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { db } from "./db";
import { chunkStallMs, CHUNK_STALL_BASE_MS, SLOWEST_LINK_BYTES_PER_SECOND } from "./linkTuning";
import { FakeUploadServer, OWNER, queuedStudy, signInOnDevice, until } from "./testkit";
import { Uploader } from "./uploader";

const STALL_MS = 300;
vi.mock("./linkTuning", async (original) => ({
  ...(await original<typeof import("./linkTuning")>()),
  chunkStallMs: () => STALL_MS,
}));

const CHUNK = 16;
const CHUNKS = 4;

describe("a stalled chunk request", () => {
  beforeEach(async () => {
    await Promise.all([db.studies.clear(), db.blobs.clear(), db.ackPages.clear(), db.auth.clear()]);
    await signInOnDevice();
  });
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("is given up and sent again, and the study is delivered", async () => {
    const id = await queuedStudy(CHUNK, CHUNKS);
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    const stalled: { at: number; aborted: number | null }[] = [];
    vi.stubGlobal("fetch", async (input: string | URL | Request, init: RequestInit = {}) => {
      const isChunk = (init.method ?? "GET") === "PUT" && String(input).includes("/chunk?index=1");
      if (!isChunk || stalled.length > 0) return server.fetch(input, init);
      // The first request for chunk 1 never gets an answer: only its abort ends it.
      const entry = { at: Date.now(), aborted: null as number | null };
      stalled.push(entry);
      return new Promise<Response>((_resolve, reject) => {
        init.signal?.addEventListener("abort", () => {
          entry.aborted = Date.now();
          reject(new DOMException("The operation was aborted.", "AbortError"));
        });
      });
    });
    const controller = new AbortController();
    const running = new Uploader(OWNER, controller.signal).run();
    try {
      await until(async () => (await db.studies.get(id))?.state === "processing", 30_000);
    } finally {
      controller.abort();
      await running;
    }
    expect(stalled).toHaveLength(1);
    expect(stalled[0]!.aborted).not.toBeNull();
    expect(stalled[0]!.aborted! - stalled[0]!.at).toBeGreaterThanOrEqual(STALL_MS - 5);
    expect(server.received.size).toBe(CHUNKS);
  }, 60_000);

  it("is waited for as long as a chunk takes on the slowest link, plus a minute", async () => {
    const { chunkStallMs: real } = await vi.importActual<typeof import("./linkTuning")>("./linkTuning");
    expect(chunkStallMs(1)).toBe(STALL_MS); // the mock above
    expect(real(1024 * 1024)).toBe(CHUNK_STALL_BASE_MS + Math.ceil(((1024 * 1024) / SLOWEST_LINK_BYTES_PER_SECOND) * 1000));
    expect(real(256 * 1024)).toBeGreaterThan(CHUNK_STALL_BASE_MS + 30_000);
  });
});
