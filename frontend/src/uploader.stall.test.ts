/** A chunk request that stalls (neither answered nor failed: a connection dropped without a
 * reset) is given up after chunkStallMs and sent again, so the upload goes on by itself
 * instead of waiting on it for good. The real engine and the real IndexedDB code, against
 * a stand-in for the server's upload API; the stall time is shortened to keep the test fast. */
import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { BACKOFF_BASE_MS } from "./backoff";
import { db } from "./db";
import { chunkStallMs, CHUNK_STALL_BASE_MS, SLOWEST_LINK_BYTES_PER_SECOND } from "./linkTuning";
import { whenLinkLost } from "./pushState";
import { FakeUploadServer, OWNER, queuedStudy, sendWithEngine, signInOnDevice, until } from "./testkit";
import { Uploader } from "./uploader";

const STALL_MS = 300;
// The bytes each chunk attempt's stall time was asked for.
const stallAsked = vi.hoisted(() => [] as number[]);
vi.mock("./linkTuning", async (original) => ({
  ...(await original<typeof import("./linkTuning")>()),
  chunkStallMs: (bytes: number) => {
    stallAsked.push(bytes);
    return STALL_MS;
  },
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
    whenLinkLost(null);
    stallAsked.length = 0;
  });

  /** fetch for `server` where the first request for chunk 1 is never answered: only its
   * abort ends it. Every chunk request's start time is kept in `puts`. */
  function stallFirstChunk1(server: FakeUploadServer, othersAnsweredAfterMs = 0) {
    const stalled: { at: number; aborted: number | null }[] = [];
    const puts: { index: string; at: number }[] = [];
    vi.stubGlobal("fetch", async (input: string | URL | Request, init: RequestInit = {}) => {
      const index = /chunk\?index=(\d+)/.exec(String(input))?.[1];
      if ((init.method ?? "GET") === "PUT" && index) puts.push({ index, at: Date.now() });
      if (index !== undefined && index !== "0" && index !== "1" && othersAnsweredAfterMs) {
        await new Promise((resolve) => setTimeout(resolve, othersAnsweredAfterMs));
      }
      if (index !== "1" || stalled.length > 0) return server.fetch(input, init);
      const entry = { at: Date.now(), aborted: null as number | null };
      stalled.push(entry);
      return new Promise<Response>((_resolve, reject) => {
        init.signal?.addEventListener("abort", () => {
          entry.aborted = Date.now();
          reject(new DOMException("The operation was aborted.", "AbortError"));
        });
      });
    });
    return { stalled, puts };
  }

  it("is given up, said to be a lost connection, and sent again after the wait", async () => {
    const id = await queuedStudy(CHUNK, CHUNKS);
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    const { stalled, puts } = stallFirstChunk1(server);
    let linkLost = 0; // the live stream hears of it (it rechecks its own connection)
    whenLinkLost(() => linkLost++);
    const controller = new AbortController();
    const running = new Uploader(OWNER, controller.signal).run();
    let note: string | undefined;
    try {
      // The study says why it waits: the connection, not an unreadable answer.
      await until(async () => {
        note = (await db.studies.get(id))?.waitNote?.message;
        return note !== undefined;
      }, 30_000);
      await until(async () => (await db.studies.get(id))?.state === "processing", 30_000);
    } finally {
      controller.abort();
      await running;
    }
    expect(note).toBe("The server cannot be reached.");
    expect(linkLost).toBe(1);
    expect(stalled).toHaveLength(1);
    expect(stalled[0]!.aborted).not.toBeNull();
    // Given up by the stall timer (the note and linkLost above say it was the stall path),
    // not at once. Node starts a timer from the event loop's cached time, which lags
    // Date.now() by however long the loop's turn has run, so the timer can end "early"
    // against the fetch's own timestamp (8 ms in a CI run with four test files at once).
    expect(stalled[0]!.aborted! - stalled[0]!.at).toBeGreaterThanOrEqual(STALL_MS / 2);
    // Sent again only after the engine's wait (at least half of the backoff's first step).
    const retry = puts.filter((p) => p.index === "1")[1];
    expect(retry).toBeDefined();
    // The engine's wait after one failure: at least BACKOFF_BASE_MS (half of its 2 s step).
    expect(retry!.at - stalled[0]!.aborted!).toBeGreaterThanOrEqual(BACKOFF_BASE_MS - 5);
    // Each attempt's stall time counts the chunks in flight beside it (all of CHUNK bytes),
    // and after the stall the engine goes on with one chunk at a time.
    expect(stallAsked.every((bytes) => bytes % CHUNK === 0 && bytes >= CHUNK)).toBe(true);
    expect(Math.max(...stallAsked)).toBeGreaterThan(CHUNK);
    expect(stallAsked.at(-1)).toBe(CHUNK);
    expect(server.received.size).toBe(CHUNKS);
  }, 60_000);

  it("keeps to one chunk after a stall, whatever the chunks sent beside the stalled one answer later", async () => {
    const id = await queuedStudy(CHUNK, CHUNKS);
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    // Chunks 2 and 3 are answered only after chunk 1 was given up: quick answers, which
    // would raise the in-flight count again if they counted.
    stallFirstChunk1(server, STALL_MS + 200);
    await sendWithEngine(id);
    expect(server.received.size).toBe(CHUNKS);
    expect(Math.max(...stallAsked)).toBeGreaterThan(CHUNK); // several were in flight at first
    // Chunks 0, 1 and 2 first (two in flight), then, after the stall and the wait, the next
    // attempt goes alone: chunk 2's late answer did not raise the count again. (Chunk 1's
    // answer then does: the engine grows again once chunks are answered.)
    expect(stallAsked.slice(0, 4)).toEqual([CHUNK, 2 * CHUNK, 2 * CHUNK, CHUNK]);
  }, 60_000);

  it("leaves the engine stoppable during the wait that follows: nothing more is sent", async () => {
    const id = await queuedStudy(CHUNK, CHUNKS);
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    const { stalled, puts } = stallFirstChunk1(server);
    const controller = new AbortController();
    const running = new Uploader(OWNER, controller.signal).run();
    await until(async () => (await db.studies.get(id))?.waitNote != null, 30_000);
    const stoppedAt = Date.now();
    controller.abort();
    await running;
    // The engine ended at once, not after its wait, and sent nothing after the stop.
    expect(Date.now() - stoppedAt).toBeLessThan(BACKOFF_BASE_MS / 2);
    expect(stalled[0]!.aborted).not.toBeNull();
    await new Promise((resolve) => setTimeout(resolve, BACKOFF_BASE_MS * 2));
    expect(puts.filter((p) => p.at >= stoppedAt)).toHaveLength(0);
    // Still waiting on this device for the next run, not sent.
    expect(["queued", "uploading"]).toContain((await db.studies.get(id))?.state);
  }, 60_000);

  it("is waited for as long as a chunk takes on the slowest link, plus a minute", async () => {
    const { chunkStallMs: real } = await vi.importActual<typeof import("./linkTuning")>("./linkTuning");
    expect(chunkStallMs(1)).toBe(STALL_MS); // the mock above
    expect(real(1024 * 1024)).toBe(CHUNK_STALL_BASE_MS + Math.ceil(((1024 * 1024) / SLOWEST_LINK_BYTES_PER_SECOND) * 1000));
    expect(real(256 * 1024)).toBeGreaterThan(CHUNK_STALL_BASE_MS + 30_000);
    // 1 MiB: a minute, plus 131 s at 64 kbit/s.
    expect(real(1024 * 1024)).toBe(191_072);
  });
});
