/** A busy server answers chunks with `max_in_flight: 1` (its chunks queue there): the engine
 * then sends one chunk at a time; without it, several at once (the step back up to three is
 * checked on linkTuning's functions). The
 * real engine and the real IndexedDB code, against a stand-in for the server's upload API. */
import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { db } from "./db";
import { adviceFrom, advisedInFlight, SERVER_ADVICE_MS } from "./linkTuning";
import { FakeUploadServer, queuedStudy, sendWithEngine, signInOnDevice } from "./testkit";

const CHUNK = 16;
const CHUNKS = 12;
const SKIPPED_ANSWERS = 3;

/** Upload one study; for each chunk request after the first three were answered, how many
 * other chunk requests were in flight when it was sent. */
async function concurrencyAfterStart(advise: boolean): Promise<number[]> {
  const id = await queuedStudy(CHUNK, CHUNKS);
  const server = new FakeUploadServer(CHUNK, CHUNKS);
  let active = 0;
  let answered = 0;
  const seen: number[] = [];
  vi.stubGlobal("fetch", async (input: string | URL | Request, init: RequestInit = {}) => {
    if ((init.method ?? "GET") !== "PUT" || !String(input).includes("/chunk")) return server.fetch(input, init);
    if (answered >= SKIPPED_ANSWERS) seen.push(active);
    active++;
    try {
      await new Promise((resolve) => setTimeout(resolve, 15)); // the server storing it
      const answer = (await (await server.fetch(input, init)).json()) as Record<string, unknown>;
      return new Response(JSON.stringify(advise ? { ...answer, max_in_flight: 1 } : answer), {
        status: 200,
        headers: { "Content-Type": "application/json" },
      });
    } finally {
      active--;
      answered++;
    }
  });
  await sendWithEngine(id);
  expect(server.received.size).toBe(CHUNKS);
  return seen;
}

describe("a busy server's max_in_flight", () => {
  beforeEach(async () => {
    await Promise.all([db.studies.clear(), db.blobs.clear(), db.ackPages.clear(), db.auth.clear()]);
    await signInOnDevice();
  });
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("makes the engine send one chunk at a time", async () => {
    const seen = await concurrencyAfterStart(true);
    expect(seen.length).toBe(CHUNKS - SKIPPED_ANSWERS);
    expect(Math.max(...seen)).toBe(0);
  }, 60_000);

  it("without it the engine keeps several chunks in flight", async () => {
    const seen = await concurrencyAfterStart(false);
    expect(Math.max(...seen)).toBeGreaterThanOrEqual(2);
  }, 60_000);

  it("holds for a while, then lets the engine step up one chunk at a time", () => {
    const now = 1_000_000;
    const advice = adviceFrom(1, null, now);
    expect(advice).toEqual({ limit: 1, until: now + SERVER_ADVICE_MS });
    expect(advisedInFlight(3, 0.05, advice, now)).toBe(1);
    // Answers without advice keep it until it runs out.
    expect(adviceFrom(undefined, advice, now + SERVER_ADVICE_MS - 1)).toBe(advice);
    expect(advisedInFlight(1, 0.05, advice, now + SERVER_ADVICE_MS - 1)).toBe(1);
    expect(adviceFrom(undefined, advice, now + SERVER_ADVICE_MS)).toBeNull();
    expect(advisedInFlight(1, 0.05, null, now + SERVER_ADVICE_MS)).toBe(2);
    expect(advisedInFlight(2, 0.05, null, now + SERVER_ADVICE_MS)).toBe(3);
    // Nonsense is ignored, a limit above the app's own is capped at it.
    expect(adviceFrom(0, null, now)).toBeNull();
    expect(adviceFrom("1", null, now)).toBeNull();
    expect(adviceFrom(2.5, null, now)).toBeNull();
    expect(adviceFrom(7, null, now)?.limit).toBe(3);
    // A slow link's own step down still applies under the advice.
    expect(advisedInFlight(2, 50, adviceFrom(2, null, now), now)).toBe(1);
  });
});
