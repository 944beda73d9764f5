import { afterEach, describe, expect, it, vi } from "vitest";
import { checkQuota, formatBytes } from "./studies";

describe("room on the device", () => {
  afterEach(() => vi.unstubAllGlobals());

  function quota(usage: number, total: number) {
    vi.stubGlobal("navigator", { storage: { estimate: async () => ({ usage, quota: total }) } });
  }

  it("refuses a study the browser has no room for, saying how much is needed", async () => {
    quota(900 * 1024 * 1024, 1000 * 1024 * 1024);
    await expect(checkQuota(200 * 1024 * 1024)).rejects.toMatchObject({
      code: "quota_too_small",
      message: "This device has room for 100 MB more, but the study needs 200 MB.",
    });
  });

  it("accepts a study that fits with room to spare", async () => {
    quota(0, 1000 * 1024 * 1024);
    await expect(checkQuota(200 * 1024 * 1024)).resolves.toBeUndefined();
  });

  it("says sizes as people read them", () => {
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(1536)).toBe("1.5 KB");
    expect(formatBytes(20 * 1024 * 1024)).toBe("20 MB");
  });
});
