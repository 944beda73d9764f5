/** Why a queued study waits while the device is online: after a passing server error (503,
 * unreachable) the engine backs off, and the study says so in the app's words with the
 * time of the next try; "Try now" ends the wait. The real engine, the real runtime wiring
 * and the real IndexedDB code, against a stand-in for the server's upload API. */
import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { RETRY_AFTER_MAX_MS, retryAfterMs } from "./api";
import { db, type WaitNote } from "./db";
import { keepsWaitNote, type StudyState } from "./queueState";
import { startUploads, stopUploads, tryUploadsNow } from "./runtime";
import { FakeUploadServer, OWNER, queuedStudy, signInOnDevice, until } from "./testkit";
import { studyEvent, Uploader } from "./uploader";
import { APP_WORDS } from "./words";

const CHUNK = 16;
const CHUNKS = 4;
const STALE: WaitNote = { message: "The server cannot be reached.", hint: "", retryAt: 1 };

function refused(code: string, message: string, retryAfter: string): Response {
  return new Response(JSON.stringify({ error: { code, message, hint: "" } }), {
    status: 503,
    headers: { "Content-Type": "application/json", "Retry-After": retryAfter },
  });
}

async function noteOf(id: number): Promise<WaitNote | null> {
  return (await db.studies.get(id))?.waitNote ?? null;
}

describe("Retry-After", () => {
  it("is read as seconds or as an HTTP date, and ignored when it is neither", () => {
    const now = Date.parse("2026-12-02T04:00:00Z");
    expect(retryAfterMs("60", now)).toBe(60_000);
    expect(retryAfterMs(" 5 ", now)).toBe(5_000);
    expect(retryAfterMs("Wed, 02 Dec 2026 04:01:30 GMT", now)).toBe(90_000);
    expect(retryAfterMs("Wed, 02 Dec 2026 03:00:00 GMT", now)).toBe(0);
    expect(retryAfterMs("soon", now)).toBeNull();
    expect(retryAfterMs("-5", now)).toBeNull();
    expect(retryAfterMs(null, now)).toBeNull();
  });
});

describe("the wait note of a study the server answered with a passing error", () => {
  beforeEach(async () => {
    await Promise.all([db.studies.clear(), db.blobs.clear(), db.ackPages.clear(), db.auth.clear()]);
    await signInOnDevice();
  });
  afterEach(() => {
    stopUploads();
    vi.unstubAllGlobals();
  });

  // The server's own Retry-After for a disk that refused (uploads/services/ingest.py), and
  // one far too long, which the app caps.
  for (const [retryAfter, waits] of [
    ["60", 60_000],
    ["86400", RETRY_AFTER_MAX_MS],
  ] as const) {
    it(`says in the app's words why the study waits and when it goes again (Retry-After ${retryAfter}), and is gone once it went`, async () => {
      const id = await queuedStudy(CHUNK, CHUNKS);
      const server = new FakeUploadServer(CHUNK, CHUNKS);
      let refusedAt = 0;
      vi.stubGlobal("fetch", async (input: string | URL | Request, init: RequestInit = {}) => {
        if (!refusedAt && (init.method ?? "GET") === "POST" && String(input).endsWith("/complete")) {
          refusedAt = Date.now();
          server.received.clear(); // the disk refused to flush: the server forgot every chunk
          // An API name in the server's words: the app must say it in its own.
          return refused("storage_unavailable", "Flush failed; see missing_chunks.", retryAfter);
        }
        return server.fetch(input, init);
      });
      const controller = new AbortController();
      const uploader = new Uploader(OWNER, controller.signal);
      const running = uploader.run();
      let note: WaitNote | null = null;
      try {
        await until(async () => (note = await noteOf(id)) !== null);
        expect((await db.studies.get(id))?.state).toBe("queued");
        // The wait itself is the note's time (checked below), not slept out here.
        uploader.wake(); // what "Try now" does, in the tab that sends
        await until(async () => (await db.studies.get(id))?.state === "processing", 30_000);
      } finally {
        controller.abort();
        await running;
      }

      const words = APP_WORDS.storage_unavailable!;
      expect(note).toEqual({ message: words.message, hint: words.hint, retryAt: expect.any(Number) });
      expect(note!.retryAt).toBeGreaterThanOrEqual(refusedAt + waits);
      expect(note!.retryAt).toBeLessThan(refusedAt + waits + 1000);
      expect(server.chunkRequests.length).toBe(2 * CHUNKS);
      expect(await noteOf(id)).toBeNull();
    }, 60_000);
  }

  it("is not written when the browser is offline, and an old one goes", async () => {
    const id = await queuedStudy(CHUNK, CHUNKS, { waitNote: STALE });
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    const browser = { onLine: true };
    let chunkTried = false;
    vi.stubGlobal("navigator", browser);
    vi.stubGlobal("fetch", async (input: string | URL | Request, init: RequestInit = {}) => {
      if (String(input).includes("/chunk")) {
        chunkTried = true;
        // The network drops as the first chunk goes: fetch fails, the browser says offline.
        browser.onLine = false;
        throw new TypeError("Failed to fetch");
      }
      return server.fetch(input, init);
    });
    const controller = new AbortController();
    const running = new Uploader(OWNER, controller.signal).run();
    try {
      // Uploading as the chunk went, queued again once the engine gave up for now.
      await until(async () => chunkTried && (await db.studies.get(id))?.state === "queued");
    } finally {
      controller.abort();
      await running;
    }
    expect(await noteOf(id)).toBeNull();
  }, 30_000);

  it("wakes the engine at once when the technician presses Try now", async () => {
    const id = await queuedStudy(CHUNK, CHUNKS);
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    let unreachable = 2; // twice: the second wait is 2 to 4 s (backoffDelay(2))
    let triedAt = 0;
    vi.stubGlobal("navigator", { onLine: true });
    vi.stubGlobal("window", new EventTarget());
    vi.stubGlobal("document", Object.assign(new EventTarget(), { visibilityState: "visible" }));
    vi.stubGlobal("fetch", async (input: string | URL | Request, init: RequestInit = {}) => {
      if (String(input).endsWith("/status")) {
        triedAt = Date.now();
        // The server cannot be reached although the browser says online.
        if (unreachable > 0) {
          unreachable -= 1;
          throw new TypeError("Failed to fetch");
        }
      }
      return server.fetch(input, init);
    });
    startUploads(OWNER);
    let note: WaitNote | null = null;
    // The second try's note (the first one's time is the second try's).
    await until(async () => unreachable === 0 && ((note = await noteOf(id))?.retryAt ?? 0) > triedAt, 10_000);
    const waitEnds = note!.retryAt;
    expect(note!.message).toBe("The server cannot be reached.");
    expect(waitEnds - Date.now()).toBeGreaterThan(1000);

    const pressedAt = Date.now();
    tryUploadsNow();
    await until(async () => (await db.studies.get(id))?.state === "processing", 10_000);
    stopUploads();
    // It went at once, not at the time the note said.
    expect(triedAt).toBeGreaterThanOrEqual(pressedAt);
    expect(triedAt).toBeLessThan(waitEnds - 500);
    expect(await noteOf(id)).toBeNull();
  }, 30_000);

  it("never stays through an event that ends the wait, nor on a study no longer waiting", async () => {
    const waiting: StudyState[] = ["queued", "uploading"];
    for (const next of waiting) expect(keepsWaitNote({ type: "offline" }, next)).toBe(true);
    expect(keepsWaitNote({ type: "offline" }, "paused")).toBe(false);
    expect(keepsWaitNote({ type: "offline" }, "cancelling")).toBe(false);
    for (const type of ["start", "pause", "resume", "sent", "fail", "retry", "cancel", "prepared"] as const) {
      expect(keepsWaitNote({ type }, "queued")).toBe(false);
    }

    const paused = await queuedStudy(CHUNK, CHUNKS, { waitNote: STALE });
    await studyEvent(paused, { type: "pause" });
    expect(await db.studies.get(paused)).toMatchObject({ state: "paused", waitNote: null });
    // A late backoff of a round that began before the pause writes no note on it.
    await studyEvent(paused, { type: "offline" }, { waitNote: STALE });
    expect(await noteOf(paused)).toBeNull();

    const cancelled = await queuedStudy(CHUNK, CHUNKS, { waitNote: STALE });
    await studyEvent(cancelled, { type: "cancel" });
    expect(await db.studies.get(cancelled)).toMatchObject({ state: "cancelling", waitNote: null });
  });
});

describe("a chunk the server refuses with Retry-After", () => {
  beforeEach(async () => {
    await Promise.all([db.studies.clear(), db.blobs.clear(), db.ackPages.clear(), db.auth.clear()]);
    await signInOnDevice();
  });
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("is sent again after a short Retry-After, and a long one is the engine's wait with the note", async () => {
    const id = await queuedStudy(CHUNK, CHUNKS);
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    const times: Record<number, number[]> = {};
    vi.stubGlobal("fetch", async (input: string | URL | Request, init: RequestInit = {}) => {
      const match = /\/chunk\?index=(\d+)/.exec(String(input));
      if ((init.method ?? "GET") === "PUT" && match) {
        const index = Number(match[1]);
        (times[index] ??= []).push(Date.now());
        // Chunk 0: busy once, for a second. Chunk 1: a failing disk, for a minute.
        if (index === 0 && times[0]!.length === 1) return refused("server_busy", "Busy.", "1");
        if (index === 1) return refused("storage_unavailable", "The bucket is gone.", "60");
      }
      return server.fetch(input, init);
    });
    const controller = new AbortController();
    const running = new Uploader(OWNER, controller.signal).run();
    let note: WaitNote | null = null;
    try {
      await until(async () => (note = await noteOf(id)) !== null, 30_000);
    } finally {
      controller.abort();
      await running;
    }
    // server_busy's second was waited by the chunk itself (not the backoff's half second).
    // (Less a little: Node's timers start from the event loop's cached time, which can lag
    // the Date.now() taken in this turn.)
    expect(times[0]!.length).toBe(2);
    expect(times[0]![1]! - times[0]![0]!).toBeGreaterThanOrEqual(1000 - 50);
    // storage_unavailable's minute was not retried chunk by chunk: the engine waits it out.
    expect(times[1]!.length).toBe(1);
    expect(note!.retryAt - times[1]![0]!).toBeGreaterThanOrEqual(60_000);
  }, 60_000);

  it("leaves the note on the study that failed, not on the others waiting", async () => {
    const first = await queuedStudy(CHUNK, CHUNKS);
    const second = await queuedStudy(CHUNK, CHUNKS, { waitNote: STALE });
    const server = new FakeUploadServer(CHUNK, CHUNKS);
    vi.stubGlobal("fetch", async (input: string | URL | Request, init: RequestInit = {}) => {
      if ((init.method ?? "GET") === "PUT" && String(input).includes("/chunk")) return refused("storage_unavailable", "The bucket is gone.", "60");
      return server.fetch(input, init);
    });
    const controller = new AbortController();
    const running = new Uploader(OWNER, controller.signal).run();
    try {
      await until(async () => (await noteOf(first)) !== null, 30_000);
    } finally {
      controller.abort();
      await running;
    }
    expect(await noteOf(second)).toBeNull();
  }, 60_000);
});
