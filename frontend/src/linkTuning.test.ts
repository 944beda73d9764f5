import { describe, expect, it } from "vitest";
import { chunkSizeFor, DEFAULT_CHUNK, MAX_CHUNK, MIN_CHUNK, nextInFlight } from "./linkTuning";

describe("tuning to the link", () => {
  it("keeps chunks small on a slow link and bigger on a fast one", () => {
    expect(chunkSizeFor(null)).toBe(DEFAULT_CHUNK);
    expect(chunkSizeFor(125_000)).toBe(MIN_CHUNK); // 1 Mbit/s
    expect(chunkSizeFor(1_250_000)).toBe(2 * 1024 * 1024); // 10 Mbit/s
    expect(chunkSizeFor(1e9)).toBe(MAX_CHUNK);
    expect(chunkSizeFor(1000)).toBe(MIN_CHUNK);
  });

  it("comes down to two chunks in flight on a slow link, one on a crawl, back to three", () => {
    expect(nextInFlight(3, 9)).toBe(2); // 3 s a chunk
    expect(nextInFlight(2, 6)).toBe(2);
    expect(nextInFlight(2, 50)).toBe(1); // 25 s a chunk
    expect(nextInFlight(1, 0.5)).toBe(2);
    expect(nextInFlight(2, 0.5)).toBe(3);
    expect(nextInFlight(3, 0.5)).toBe(3);
  });
});
