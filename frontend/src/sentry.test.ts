import { describe, expect, it } from "vitest";
import type { ErrorEvent } from "@sentry/browser";
import { FILTERED, scrubBreadcrumb, scrubEvent, sentryStart } from "./sentry";

const PATIENT = "QUIXOTE^DULCINEA";
const FILE = "KNEE_QUIXOTE_LEFT_001.dcm";

describe("the Sentry scrubber", () => {
  it("sends an error without its message, locals, body, user, file or patient names", () => {
    const event = scrubEvent({
      type: undefined,
      message: `could not read ${FILE}`,
      exception: {
        values: [
          {
            type: "TypeError",
            value: `cannot parse ${FILE} of ${PATIENT}`,
            stacktrace: { frames: [{ function: "readDicom", vars: { patientName: PATIENT, path: FILE } }] },
          },
        ],
      },
      request: {
        url: `https://relay.example.org/?name=${PATIENT}`,
        data: { files: [{ name: FILE }] },
        cookies: { s: "x" },
        headers: { Authorization: "Bearer x", "User-Agent": "phone" },
      },
      extra: { entry: "CD/IMG001", count: 3, where: `/uploads/${FILE}` },
      user: { ip_address: "10.0.0.1" },
      breadcrumbs: [
        { category: "console", message: `picked ${FILE}` },
        { category: "upload", message: `added ${FILE}`, data: { fileName: FILE } },
        { category: "upload", message: "upload queued", data: { count: 2 } },
      ],
    } as ErrorEvent);
    const sent = JSON.stringify(event);
    expect(sent).not.toContain("QUIXOTE");
    expect(sent).not.toContain("DULCINEA");
    expect(sent).not.toContain("CD/IMG001");
    expect(event.exception?.values?.[0].type).toBe("TypeError");
    expect(event.exception?.values?.[0].value).toBe(FILTERED);
    expect(event.exception?.values?.[0].stacktrace?.frames?.[0].function).toBe("readDicom");
    expect(event.request).toEqual({ url: "https://relay.example.org/", headers: { "User-Agent": "phone" } });
    expect(event.extra).toEqual({ entry: FILTERED, count: 3, where: FILTERED });
    expect(event.user).toBeUndefined();
    expect(event.breadcrumbs?.map((c) => c.message)).toEqual([FILTERED, "upload queued"]);
  });

  it("drops console and click breadcrumbs", () => {
    expect(scrubBreadcrumb({ category: "ui.click", message: "button.send" })).toBeNull();
    expect(scrubBreadcrumb({ category: "fetch", data: { url: "/api/v1/upload/1/chunk?index=2", status_code: 200 } })).toEqual({
      category: "fetch",
      data: { url: FILTERED, status_code: 200 },
    });
  });

  it("starts nothing without a DSN built in", async () => {
    expect(await sentryStart()).toBe(false);
  });
});
