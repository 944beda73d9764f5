import { describe, expect, it } from "vitest";
import { BACKOFF_MAX_MS, backoffDelay } from "./backoff";

describe("backoff with jitter", () => {
  it("doubles the ceiling with each attempt", () => {
    expect(backoffDelay(0, () => 1)).toBe(1000);
    expect(backoffDelay(1, () => 1)).toBe(2000);
    expect(backoffDelay(3, () => 1)).toBe(8000);
  });

  it("stays between half the ceiling and the ceiling", () => {
    expect(backoffDelay(2, () => 0)).toBe(2000);
    for (let i = 0; i < 100; i++) {
      const delay = backoffDelay(2);
      expect(delay).toBeGreaterThanOrEqual(2000);
      expect(delay).toBeLessThanOrEqual(4000);
    }
  });

  it("never waits longer than the maximum", () => {
    expect(backoffDelay(50, () => 1)).toBe(BACKOFF_MAX_MS);
  });
});
