/** A complete the server answers 503 `storage_unavailable` (its disk refused to flush the
 * upload, so it forgot every chunk): the engine waits before it sends the study again,
 * instead of sending it at once, forever, to a failing disk. The real engine and the real
 * IndexedDB code, against a stand-in for the server's upload API. */
import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { BACKOFF_BASE_MS } from "./backoff";
import { db } from "./db";
import { FakeUploadServer, queuedStudy, sendWithEngine, signInOnDevice } from "./testkit";

const CHUNK = 16;
const CHUNKS = 4;

describe("a complete refused with 503 storage_unavailable", () => {
  beforeEach(async () => {
    await Promise.all([db.studies.clear(), db.blobs.clear(), db.ackPages.clear(), db.auth.clear()]);
    await signInOnDevice();
  });
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("is followed by a wait before the chunks are sent again, then the study goes through", async () => {
    const id = await queuedStudy(CHUNK, CHUNKS);
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    let refusedAt = 0;
    let resentAt = 0;
    vi.stubGlobal("fetch", async (input: string | URL | Request, init: RequestInit = {}) => {
      const url = String(input);
      if (!refusedAt && (init.method ?? "GET") === "POST" && url.endsWith("/complete")) {
        refusedAt = performance.now();
        server.received.clear(); // the server forgot every chunk
        return new Response(
          JSON.stringify({ error: { code: "storage_unavailable", message: "The disk failed.", hint: "" } }),
          { status: 503, headers: { "Content-Type": "application/json", "Retry-After": "1" } },
        );
      }
      if (refusedAt && !resentAt && url.includes("/chunk")) resentAt = performance.now();
      return server.fetch(input, init);
    });
    await sendWithEngine(id);

    expect(refusedAt).toBeGreaterThan(0);
    // The first retry waits at least half of twice the base delay (backoffDelay(1)).
    expect(resentAt - refusedAt).toBeGreaterThanOrEqual(BACKOFF_BASE_MS - 50);
    expect(server.chunkRequests.length).toBe(2 * CHUNKS);
  }, 60_000);
});
