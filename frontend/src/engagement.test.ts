import { describe, expect, it } from "vitest";
import { installOfferDue } from "./engagement";

describe("the add-to-home-screen offer", () => {
  it("waits for engagement: a second visit or 30 s on the page, and never after a dismissal", () => {
    const base = { available: true, dismissed: false, visits: 1, msOnPage: 0 };
    expect(installOfferDue(base)).toBe(false);
    expect(installOfferDue({ ...base, msOnPage: 29_999 })).toBe(false);
    expect(installOfferDue({ ...base, msOnPage: 30_000 })).toBe(true);
    expect(installOfferDue({ ...base, visits: 2 })).toBe(true);
    expect(installOfferDue({ ...base, visits: 5, dismissed: true })).toBe(false);
    expect(installOfferDue({ ...base, visits: 5, available: false })).toBe(false);
  });
});
