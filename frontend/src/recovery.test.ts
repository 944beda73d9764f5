import { describe, expect, it } from "vitest";
import { homeFor, pieceSizeWords } from "./account";
import { recoveryOf } from "./studies";

const failed = (code: string, extra = {}) => ({ state: "needs_attention" as const, serverState: "failed", error: { code, message: "", hint: "" }, uploadId: "u", retryGone: false, ...extra });

describe("what a failed study offers", () => {
  it("offers Retry only where the server still has the bytes, Send again otherwise", () => {
    for (const code of ["pacs_unreachable", "pacs_unavailable", "pacs_not_listing", "pacs_rejected", "pacs_refused_instances", "no_pacs_configured", "forwarding_failed"]) expect(recoveryOf(failed(code))).toBe("retry");
    for (const code of ["no_dicom_files", "processing_failed", "archive_corrupt", "upload_damaged", "upload_expired"]) expect(recoveryOf(failed(code))).toBe("send_again");
    expect(recoveryOf(failed("invalid_files"))).toBe("send_others");
    // The server said its bytes are gone after all.
    expect(recoveryOf(failed("nothing_to_retry", { retryGone: true }))).toBe("send_again");
    expect(recoveryOf(failed("pacs_unreachable", { retryGone: true }))).toBe("send_again");
    expect(recoveryOf({ ...failed("files_missing"), serverState: "receiving" })).toBe(null);
    expect(recoveryOf({ ...failed("possible_duplicate"), serverState: null })).toBe("send_anyway");
  });
});

describe("each role's start screen", () => {
  it("says what the account does and offers Send only to those who send", () => {
    expect(homeFor({ role: "radiographer", approval: "approved" })).toEqual({ sends: true, text: "", link: null });
    expect(homeFor({ role: "clinician", approval: "pending" }).text).toContain("Your account is waiting for an administrator's approval");
    expect(homeFor({ role: "clinician", approval: "pending" }).sends).toBe(false);
    expect(homeFor({ role: "radiologist" }).sends).toBe(false);
    expect(homeFor({ role: "radiologist" }).text).toContain("worklist");
    expect(homeFor({ role: "auditor" }).text).toContain("audit export");
    expect(homeFor({ role: "admin" }).link?.href).toBe("/admin/");
  });

  it("words the piece size instead of KiB", () => {
    expect(pieceSizeWords(null)).toBe("Chosen for each connection (recommended)");
    expect(pieceSizeWords(256 * 1024)).toBe("Smaller pieces for very weak networks (256 KB)");
    expect(pieceSizeWords(4 * 1024 * 1024)).toBe("Larger pieces for fast, steady networks (4 MB)");
  });
});
