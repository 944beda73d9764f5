/** The Reports screen's logic: the state in words, what the device keeps of a report (for
 * offline reading, nothing naming the patient), the answers queued until the server took
 * them, and the PDF kept in memory only. Against fake-indexeddb and a stand-in for the
 * report endpoints of docs/reports.md. */
import "fake-indexeddb/auto";
import { readFileSync } from "node:fs";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { db } from "./db";
import { addImagesMetadata, newestFirst, REFUSED_REPLY_KEEP_MS, replyQueue, replyRetry, repliesExpire, repliesForget, repliesSend, reportError, reportPdf, reportRow, reportsForget, reportsRefresh, REPORT_DOWNLOAD_PATH, shownAsOf, type ServerReport } from "./reports";
import { OWNER, queuedStudy, signInOnDevice, until } from "./testkit";
import { leftChoices, leftOnDevice, leftWords } from "./signOut";
import { ApiError } from "./api";
import { namesApiField, REPORT_STATE_WORDS, reportStateWords } from "./words";

const PATIENT = "DOE^JANE";

function serverReport(id: number, patch: Partial<ServerReport> = {}): ServerReport {
  return {
    id,
    status: "assigned",
    upload_ids: [`00000000-0000-4000-8000-00000000000${id}`],
    study_instance_uid: `1.2.3.${id}`,
    service_level: "routine",
    modality: "CT\\SR",
    study_description: "CT head",
    question: "",
    versions: [],
    created_at: `2026-12-0${id}T10:42:00Z`,
    updated_at: `2026-12-0${id}T10:42:00Z`,
    patient_name: PATIENT,
    patient_id: "PID-77",
    study_date: "20261201",
    accession_number: "ACC-9",
    ...patch,
    // Everything else the API sends, which the device must not keep.
    ...({ clinical_notes: "Fell from a ladder", findings: "No fracture.", impression: "Normal.", answer: "", patient_birth_date: "19700101" } as object),
  };
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

/** The report endpoints for the signed-in sender. */
class FakeReportServer {
  reports = new Map<number, ServerReport>();
  calls: string[] = [];
  reachable = true;
  pdf = "%PDF-1.7\n%test\n";

  readonly fetch = async (input: string | URL | Request, init: RequestInit = {}): Promise<Response> => {
    if (!this.reachable) throw new TypeError("Failed to fetch");
    const url = new URL(String(input), "http://relay.test");
    const method = init.method ?? "GET";
    this.calls.push(`${method} ${url.pathname}${url.search}`);
    const path = url.pathname.replace(/^\/api\/v1/, "");
    if (method === "GET" && path === "/reports") return json(200, { count: this.reports.size, results: [...this.reports.values()] });
    const match = /^\/reports\/(\d+)(\/\w+)?$/.exec(path);
    const report = match ? this.reports.get(Number(match[1])) : undefined;
    if (!report) return json(404, { error: { code: "not_found", message: "Not found.", hint: "" } });
    const action = match![2] ?? "";
    if (method === "GET" && action === "") return json(200, report);
    if (method === "GET" && action === "/download") {
      if (!report.versions.some((v) => v.pdf_available)) {
        return json(409, { error: { code: "report_not_ready", message: "This report has no PDF yet: it has not been signed.", hint: "You will be able to download it once the radiologist has signed it." } });
      }
      return new Response(this.pdf, { status: 200, headers: { "Content-Type": "application/pdf", "Cache-Control": "private, no-store" } });
    }
    if (method === "POST" && action === "/reply") {
      const { answer } = JSON.parse(String(init.body)) as { answer: string };
      if (report.status !== "additional_data_required") {
        return json(409, { error: { code: "report_state_conflict", message: "This report is no longer in a state that allows this step.", hint: "Reload the report." } });
      }
      const answered = { ...report, status: "pending", ...({ answer } as object) };
      this.reports.set(report.id, answered);
      return json(200, answered);
    }
    return json(405, {});
  };
}

let server: FakeReportServer;

beforeEach(async () => {
  await Promise.all([db.reports.clear(), db.reportViews.clear(), db.replies.clear()]);
  await signInOnDevice();
  server = new FakeReportServer();
  vi.stubGlobal("fetch", server.fetch);
});

afterEach(() => {
  vi.unstubAllGlobals();
});

describe("a report's state in words", () => {
  it("has the clinic's words for every state the API has, and none of its codes", () => {
    const models = readFileSync(new URL("../../reports/models.py", import.meta.url), "utf8");
    const block = models.slice(models.indexOf("class ReportStatus"), models.indexOf("# Reports still waiting"));
    const statuses = [...block.matchAll(/=\s*"([a-z_]+)",/g)].map((m) => m[1]!);
    expect(statuses).toHaveLength(6);
    expect(Object.keys(REPORT_STATE_WORDS).sort()).toEqual([...statuses].sort());
    for (const status of statuses) expect(namesApiField(reportStateWords(status))).toBe(false);
    expect(reportStateWords("ready")).toBe("Report ready");
    expect(reportStateWords("additional_data_required")).toBe("The radiologist has a question");
    expect(reportStateWords("something_new")).not.toContain("something_new");
  });

  it("says every failure of the report endpoints in words with a way out", () => {
    const offline = reportError(new ApiError(0, "network_unavailable", "The server cannot be reached.", "The study stays queued."));
    expect(offline.hint).toContain("Refresh");
    const conflict = reportError(new ApiError(409, "report_state_conflict", "This report is no longer in a state that allows this step.", "Reload the report."));
    expect(conflict.hint).toContain("your answer is kept");
    const gone = reportError(new ApiError(404, "not_found", "Not found.", ""));
    expect(gone.message).toBe("This report is no longer open to this account.");
    const jargon = reportError(new ApiError(400, "invalid_request", "answer: field_required", "see error_fields"));
    expect(namesApiField(`${jargon.message} ${jargon.hint}`)).toBe(false);
    expect(jargon.hint).not.toBe("");
    const unknown = reportError(new ApiError(500, "http_500", "", ""));
    expect(unknown.message).not.toBe("");
    expect(unknown.hint).not.toBe("");
  });
});

describe("what the device keeps of a report", () => {
  it("keeps the state and what tells studies apart, never what names the patient", () => {
    const row = reportRow(OWNER, serverReport(1, { status: "ready", versions: [{ pdf_available: true }] }));
    expect(row).toMatchObject({ id: 1, owner: OWNER, status: "ready", modality: "CT/SR", studyDescription: "CT head", pdf: true, uploadIds: ["00000000-0000-4000-8000-000000000001"] });
    const text = JSON.stringify(row);
    for (const phi of [PATIENT, "PID-77", "20261201", "ACC-9", "1.2.3.1", "ladder", "fracture", "Normal.", "19700101"]) expect(text).not.toContain(phi);
  });

  it("keeps the radiologist's question only while it waits for the answer", () => {
    expect(reportRow(OWNER, serverReport(1, { status: "additional_data_required", question: "Any prior CT?" })).question).toBe("Any prior CT?");
    for (const status of ["pending", "ready", "amended", "cancelled"]) expect(reportRow(OWNER, serverReport(1, { status, question: "Any prior CT?" })).question).toBe("");
  });

  it("lists the newest first", () => {
    const rows = [1, 3, 2].map((id) => reportRow(OWNER, serverReport(id)));
    expect(newestFirst(rows).map((r) => r.id)).toEqual([3, 2, 1]);
  });

  it("keeps what was loaded for offline reading, with when, and drops what the server no longer lists", async () => {
    server.reports.set(1, serverReport(1));
    server.reports.set(2, serverReport(2, { status: "ready", versions: [{ pdf_available: true }] }));
    await reportsRefresh(OWNER, 1_000);
    expect(server.calls).toEqual(["GET /api/v1/reports?sort=-date"]);
    server.reachable = false;
    await expect(reportsRefresh(OWNER, 2_000)).rejects.toMatchObject({ code: "network_unavailable" });
    // Offline: what was loaded is still there, marked with when it was loaded.
    expect((await db.reports.where("owner").equals(OWNER).toArray()).map((r) => r.status).sort()).toEqual(["assigned", "ready"]);
    expect((await db.reportViews.get(OWNER))?.fetchedAt).toBe(1_000);
    server.reachable = true;
    server.reports.delete(1);
    await reportsRefresh(OWNER, 3_000);
    expect((await db.reports.toArray()).map((r) => r.id)).toEqual([2]);
    expect(JSON.stringify(await db.reports.toArray())).not.toContain(PATIENT);
    await reportsForget(OWNER);
    expect(await db.reports.count()).toBe(0);
    expect(await db.reportViews.count()).toBe(0);
  });

  it("says when the list was loaded: the time today, the day too before", () => {
    const at = new Date(2026, 11, 1, 10, 42).getTime();
    expect(shownAsOf(at, new Date(2026, 11, 1, 18, 0).getTime())).toMatch(/10.42/);
    expect(shownAsOf(at, new Date(2026, 11, 3, 9, 0).getTime())).not.toBe(shownAsOf(at, at));
  });
});

describe("answers to the radiologist's question", () => {
  it("are kept on the device while offline and sent once the network is back", async () => {
    server.reports.set(4, serverReport(4, { status: "additional_data_required", question: "Any prior CT?" }));
    await reportsRefresh(OWNER);
    server.reachable = false;
    await replyQueue({ owner: OWNER, reportId: 4, answer: "  Prior CT from 2024 is on its way.  " });
    await until(async () => (await repliesSend(OWNER)) === 0);
    const queued = await db.replies.toArray();
    expect(queued).toMatchObject([{ owner: OWNER, reportId: 4, answer: "Prior CT from 2024 is on its way.", state: "queued", error: null }]);

    server.reachable = true;
    expect(await repliesSend(OWNER)).toBe(1);
    expect(server.calls.filter((c) => c.startsWith("POST"))).toEqual(["POST /api/v1/reports/4/reply"]);
    expect(await db.replies.count()).toBe(0);
    const row = await db.reports.get([OWNER, 4]);
    expect(row?.status).toBe("pending");
    expect(row?.question).toBe(""); // answered: the question leaves the device
    // Nothing left to send: no second request.
    expect(await repliesSend(OWNER)).toBe(0);
    expect(server.calls.filter((c) => c.startsWith("POST"))).toHaveLength(1);
  });

  it("one the server refuses is kept with words and a way out, and can be sent again", async () => {
    server.reports.set(5, serverReport(5, { status: "pending" }));
    const id = await replyQueue({ owner: OWNER, reportId: 5, answer: "Here it is." });
    await until(async () => (await db.replies.get(id))?.state === "refused");
    const refused = (await db.replies.get(id))!;
    expect(refused.error?.code).toBe("report_state_conflict");
    expect(refused.error?.hint).toContain("Refresh");
    // The question is open again (asked a second time): "Send again" sends it.
    server.reports.set(5, serverReport(5, { status: "additional_data_required", question: "And the prior report?" }));
    await replyRetry(refused);
    await until(async () => (await db.replies.count()) === 0);
    expect((await db.reports.get([OWNER, 5]))?.status).toBe("pending");
  });

  it("refuses an empty answer in words", async () => {
    const error = await replyQueue({ owner: OWNER, reportId: 1, answer: "   " }).catch((e: unknown) => reportError(e));
    expect(error).toMatchObject({ code: "invalid_request" });
    expect((error as { message: string }).message).not.toBe("");
    expect(await db.replies.count()).toBe(0);
  });
});

describe("answers left on the device", () => {
  const DAY = 24 * 3600 * 1000;

  it("signing out warns of unsent answers, queued or refused, and deleting them leaves none of the owner's", async () => {
    await db.studies.clear();
    server.reachable = false;
    await db.replies.bulkAdd([
      { owner: OWNER, reportId: 1, answer: "The wound is on the left knee.", createdAt: 1, state: "queued", error: null },
      { owner: OWNER, reportId: 2, answer: "Prior CT attached.", createdAt: 2, state: "refused", error: null, refusedAt: 3 },
      { owner: "other", reportId: 3, answer: "Not mine.", createdAt: 3, state: "queued", error: null },
    ]);
    const left = await leftOnDevice(OWNER);
    expect(left).toEqual({ studies: 0, replies: 2 });
    expect(leftWords(left)).toEqual(["2 answers to the radiologist are not yet sent; signing out deletes them from this device."]);
    expect(leftChoices(left)).toEqual({ stay: "Stay signed in and send them", discard: "Delete them and sign out" });
    await repliesForget(OWNER);
    expect(await leftOnDevice(OWNER)).toEqual({ studies: 0, replies: 0 });
    expect((await db.replies.toArray()).map((r) => r.owner)).toEqual(["other"]);
  });

  it("the warning names unfinished studies and answers together, in the words studies had", async () => {
    await db.studies.clear();
    await queuedStudy(16, 1);
    await db.replies.add({ owner: OWNER, reportId: 1, answer: "Yes.", createdAt: 1, state: "queued", error: null });
    const left = await leftOnDevice(OWNER);
    expect(left).toEqual({ studies: 1, replies: 1 });
    expect(leftWords(left)).toEqual(["1 study is not yet received by the PACS.", "1 answer to the radiologist is not yet sent; signing out deletes it from this device."]);
    expect(leftWords({ studies: 1, replies: 0 })).toEqual(["1 study is not yet received by the PACS."]);
    expect(leftChoices({ studies: 1, replies: 0 })).toEqual({ stay: "Stay signed in and finish them", discard: "Discard them and sign out" });
    await db.studies.clear();
    await db.blobs.clear();
  });

  it("a refused answer is deleted at start-up a week after the refusal; queued ones and fresh refusals stay", async () => {
    const now = 1_900_000_000_000;
    await db.replies.bulkAdd([
      { owner: OWNER, reportId: 1, answer: "old refused", createdAt: now - 30 * DAY, state: "refused", error: null, refusedAt: now - 8 * DAY },
      { owner: "other", reportId: 2, answer: "old refused, no refusal time", createdAt: now - 8 * DAY, state: "refused", error: null },
      { owner: OWNER, reportId: 3, answer: "refused yesterday", createdAt: now - 30 * DAY, state: "refused", error: null, refusedAt: now - DAY },
      { owner: OWNER, reportId: 4, answer: "queued long ago", createdAt: now - 30 * DAY, state: "queued", error: null },
    ]);
    expect(REFUSED_REPLY_KEEP_MS).toBe(7 * DAY);
    expect(await repliesExpire(now)).toBe(2);
    expect((await db.replies.toArray()).map((r) => r.answer).sort()).toEqual(["queued long ago", "refused yesterday"]);
  });

  it("a refusal is dated, and sending again clears the date", async () => {
    server.reports.set(5, serverReport(5, { status: "pending" }));
    const before = Date.now();
    const id = await replyQueue({ owner: OWNER, reportId: 5, answer: "Here it is." });
    await until(async () => (await db.replies.get(id))?.state === "refused");
    const refused = (await db.replies.get(id))!;
    expect(refused.refusedAt).toBeGreaterThanOrEqual(before);
    server.reachable = false;
    await replyRetry(refused);
    expect((await db.replies.get(id))?.refusedAt).toBeNull();
  });
});

describe("the report's PDF", () => {
  it("is fetched with the bearer token into memory, never into IndexedDB", async () => {
    server.reports.set(6, serverReport(6, { status: "ready", versions: [{ pdf_available: true }] }));
    const seen: RequestInit[] = [];
    vi.stubGlobal("fetch", (input: string, init: RequestInit = {}) => {
      seen.push(init);
      return server.fetch(input, init);
    });
    const blob = await reportPdf(6);
    expect(blob.type).toBe("application/pdf");
    expect(new TextDecoder().decode(await blob.slice(0, 5).arrayBuffer())).toBe("%PDF-");
    expect((seen[0]!.headers as Record<string, string>).Authorization).toMatch(/^Bearer /);
    expect(seen[0]!.cache).toBe("no-store");
    for (const table of db.tables) expect(JSON.stringify(await table.toArray()), table.name).not.toContain("%PDF");
  });

  it("says when it is not ready, and refuses what is not a PDF", async () => {
    server.reports.set(7, serverReport(7, { status: "pending" }));
    await expect(reportPdf(7)).rejects.toMatchObject({ status: 409, code: "report_not_ready" });
    server.reports.set(7, serverReport(7, { status: "ready", versions: [{ pdf_available: true }] }));
    server.pdf = "<html>login</html>";
    const error = await reportPdf(7).catch((e: unknown) => reportError(e));
    expect(error).toMatchObject({ code: "bad_pdf", message: "The server sent something that is not a PDF." });
  });

  it("its path is the one the service worker sends to the network only", () => {
    expect(REPORT_DOWNLOAD_PATH.test("/api/v1/reports/12/download")).toBe(true);
    expect(REPORT_DOWNLOAD_PATH.test("/api/v1/reports/12")).toBe(false);
    const sw = readFileSync(new URL("./sw.ts", import.meta.url), "utf8");
    // Registered before anything else can route it (precache, runtime caching).
    expect(sw.indexOf("REPORT_DOWNLOAD_PATH.test")).toBeGreaterThan(0);
    expect(sw.indexOf("REPORT_DOWNLOAD_PATH.test")).toBeLessThan(sw.indexOf("precacheAndRoute("));
    expect(sw).toContain('cache: "no-store"');
  });
});

describe("images added to a report's study", () => {
  it("carry the study's UID, and for photos the report's patient, read at send time", () => {
    const report = serverReport(8);
    expect(addImagesMetadata(report, false)).toEqual({ study_instance_uid: "1.2.3.8" });
    expect(addImagesMetadata(report, true)).toEqual({
      study_instance_uid: "1.2.3.8",
      patient_name: PATIENT,
      patient_id: "PID-77",
      study_date: "20261201",
      accession_number: "ACC-9",
      study_description: "CT head",
    });
  });
});
