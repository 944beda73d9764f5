/** The notification centre's state, and the polling switch: while the stream is connected
 * the upload engine asks no status of studies the server is working on; the stream's
 * events move them; when it drops, polling comes back by itself. */
import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ApiError } from "./api";
import { db } from "./db";
import { uploadEventApply } from "./live";
import type { ServerNotification } from "./liveStream";
import { Centre, centreActionOf, centreReduce, EMPTY_CENTRE, type CentreState } from "./notifications";
import { setStreamLive, statusDue } from "./pushState";
import { notificationTarget } from "./Notifications";
import { FakeUploadServer, OWNER, queuedStudy, signInOnDevice, until } from "./testkit";
import { Uploader } from "./uploader";

function note(id: number, minute: number, patch: Partial<ServerNotification> = {}): ServerNotification {
  return {
    id,
    kind: "upload_completed",
    title: `CT study sent 10:${String(minute).padStart(2, "0")} was received by the PACS`,
    body: "The PACS confirmed every image; the study can be read there.",
    upload_id: `u${id}`,
    report_id: null,
    created_at: `2026-12-01T10:${String(minute).padStart(2, "0")}:00+00:00`,
    read: false,
    read_at: null,
    ...patch,
  };
}

const loaded = (items: ServerNotification[], unreadCount: number): CentreState =>
  centreReduce(EMPTY_CENTRE, { type: "loaded", items, unreadCount, more: false });

describe("the notification centre's state", () => {
  it("lists newest first whatever order they come in, and adds a new one on top with the server's count", () => {
    let state = loaded([note(1, 1), note(3, 3, { read: true }), note(2, 2)], 2);
    expect(state.items.map((n) => n.id)).toEqual([3, 2, 1]);
    state = centreReduce(state, centreActionOf({ type: "upload.completed", id: 50, notification: note(4, 4), unread_count: 3 })!);
    expect(state.items.map((n) => n.id)).toEqual([4, 3, 2, 1]);
    expect(state.unreadCount).toBe(3);
    // The same one again (a reload raced the stream): not twice.
    state = centreReduce(state, { type: "arrived", notification: note(4, 4), unreadCount: 3 });
    expect(state.items).toHaveLength(4);
  });

  it("counts a new unread one when the message has no count", () => {
    const state = centreReduce(loaded([note(1, 1)], 1), { type: "arrived", notification: note(2, 2) });
    expect(state.unreadCount).toBe(2);
  });

  it("marks read and unread, from this device or another (the stream's notifications.read)", () => {
    let state = loaded([note(1, 1), note(2, 2)], 5); // 3 more unread on pages not loaded
    state = centreReduce(state, { type: "marked", ids: [2], read: true });
    expect(state.items.find((n) => n.id === 2)?.read).toBe(true);
    expect(state.unreadCount).toBe(4);
    state = centreReduce(state, centreActionOf({ type: "notifications.unread", id: 60, notification_ids: [2], unread_count: 5 })!);
    expect(state.items.find((n) => n.id === 2)?.read).toBe(false);
    expect(state.unreadCount).toBe(5);
    state = centreReduce(state, centreActionOf({ type: "notifications.read", id: 61, notification_ids: [1, 2], unread_count: 3 })!);
    expect(state.items.every((n) => n.read)).toBe(true);
    expect(state.unreadCount).toBe(3);
  });

  it("marks all read", () => {
    const state = centreReduce(loaded([note(1, 1), note(2, 2)], 2), { type: "allRead", at: "2026-12-01T11:00:00Z" });
    expect(state.unreadCount).toBe(0);
    expect(state.items.every((n) => n.read && n.read_at === "2026-12-01T11:00:00Z")).toBe(true);
  });

  it("ignores stream messages that change nothing in it", () => {
    expect(centreActionOf({ type: "upload.forwarding", id: 3, state: "forwarding" })).toBeNull();
    expect(centreActionOf({ type: "heartbeat" })).toBeNull();
  });

  it("opens the report for a report's notification and the study for an upload's", () => {
    expect(notificationTarget({ upload_id: null, report_id: 12 })).toEqual({ screen: "reports", focus: 12 });
    expect(notificationTarget({ upload_id: "7790129d", report_id: null })).toEqual({ screen: "study", uploadId: "7790129d" });
    expect(notificationTarget({ upload_id: null, report_id: null })).toBeNull();
  });

  it("shows a change at once, takes the server's answer, and undoes it with the app's words when refused", async () => {
    const calls: string[] = [];
    let refuse = false;
    const fetcher = (async (path: string, options: { method?: string } = {}) => {
      calls.push(`${options.method ?? "GET"} ${path}`);
      if (refuse) throw new ApiError(0, "network_unavailable", "The server cannot be reached.", "x");
      if (path.startsWith("/notifications?")) return { results: [note(1, 1), note(2, 2)], unread_count: 2, next: null };
      if (path === "/notifications/2/read") return { notification: note(2, 2, { read: true, read_at: "2026-12-01T11:00:00Z" }), unread_count: 1 };
      if (path === "/notifications/read-all") return { marked: 1, unread_count: 0 };
      throw new Error(path);
    }) as unknown as ConstructorParameters<typeof Centre>[0];
    const centre = new Centre(fetcher);
    await centre.load();
    expect(centre.get().items.map((n) => n.id)).toEqual([2, 1]);
    await centre.mark(2, true);
    expect(centre.get().items[0]?.read_at).toBe("2026-12-01T11:00:00Z");
    expect(centre.get().unreadCount).toBe(1);
    refuse = true;
    await centre.mark(1, true);
    expect(centre.get().items[1]?.read).toBe(false);
    expect(centre.get().unreadCount).toBe(1);
    expect(centre.get().error?.message).toBe("The server cannot be reached, so the notifications cannot be brought up to date.");
    await centre.markAllRead();
    expect(centre.get().unreadCount).toBe(1); // undone
    refuse = false;
    await centre.markAllRead();
    expect(centre.get().unreadCount).toBe(0);
    expect(calls).toEqual([
      "GET /notifications?page_size=50",
      "POST /notifications/2/read",
      "POST /notifications/1/read",
      "POST /notifications/read-all",
      "POST /notifications/read-all",
    ]);
  });
});

describe("polling and the live stream", () => {
  let server: FakeUploadServer;
  const statusCalls = () => server.calls.filter((c) => c.endsWith("/status")).length;

  beforeEach(async () => {
    await Promise.all([db.studies.clear(), db.blobs.clear(), db.ackPages.clear(), db.auth.clear()]);
    await signInOnDevice();
    server = new FakeUploadServer(16, 1);
    server.received.add(0);
    server.state = "processing";
    vi.stubGlobal("fetch", server.fetch);
  });
  afterEach(() => {
    setStreamLive(false);
    vi.unstubAllGlobals();
  });

  it("stops while connected, moves the study by push, asks once at the end, and polls again by itself when the stream is down", async () => {
    const id = await queuedStudy(16, 1, { state: "processing", uploadId: server.uploadId, uploadToken: "upl_test", chunkSize: 16, totalChunks: 1, serverState: "processing" });
    setStreamLive(true);
    const controller = new AbortController();
    const uploader = new Uploader(OWNER, controller.signal);
    const running = uploader.run();
    try {
      // Connected: no status request in three polling periods.
      await new Promise((resolve) => setTimeout(resolve, 4000));
      expect(statusCalls()).toBe(0);
      await uploadEventApply(OWNER, { type: "upload.forwarding", id: 12, upload_id: server.uploadId, state: "forwarding" });
      expect((await db.studies.get(id))?.state).toBe("forwarding");
      expect(statusCalls()).toBe(0);

      // The stream is down: the engine polls again (the page wakes it when it drops).
      setStreamLive(false);
      uploader.wake();
      await until(() => statusCalls() >= 1, 5000);
      setStreamLive(true);
      const before = statusCalls();

      // Completed by push: one status request, for the summary, then the study is done.
      server.state = "completed";
      await uploadEventApply(OWNER, { type: "upload.completed", id: 13, upload_id: server.uploadId, state: "completed" });
      uploader.wake();
      await until(async () => (await db.studies.get(id))?.state === "completed", 5000);
      expect(statusCalls()).toBe(before + 1);
    } finally {
      controller.abort();
      uploader.wake();
      await running;
    }
  }, 20_000);

  it("asks once for a study that was due even while connected", async () => {
    await queuedStudy(16, 1, { state: "processing", uploadId: server.uploadId, uploadToken: "upl_test", chunkSize: 16, totalChunks: 1, serverState: "processing" });
    setStreamLive(true);
    statusDue(server.uploadId);
    const controller = new AbortController();
    const uploader = new Uploader(OWNER, controller.signal);
    const running = uploader.run();
    await until(() => statusCalls() === 1, 5000);
    await new Promise((resolve) => setTimeout(resolve, 2000));
    expect(statusCalls()).toBe(1);
    controller.abort();
    uploader.wake();
    await running;
  }, 20_000);
});

describe("events written late", () => {
  it("applies an upload's current state and ignores an event older than one applied", async () => {
    const { freshEvent } = await import("./live");
    expect(freshEvent("late-1", "2026-12-01T10:00:02Z")).toBe(true);
    expect(freshEvent("late-1", "2026-12-01T10:00:01Z")).toBe(false);
    expect(freshEvent("late-1", "2026-12-01T10:00:02Z")).toBe(true);
    expect(freshEvent("late-1", undefined)).toBe(true);
    expect(freshEvent("late-2", "2026-12-01T09:00:00Z")).toBe(true);
  });

  it("marks read the pool's offer another radiologist took (report.claimed)", () => {
    const state = centreReduce(loaded([note(1, 1, { kind: "report_assigned", report_id: 4, upload_id: null })], 1), centreActionOf({ type: "report.claimed", id: 9, notification_ids: [1], unread_count: 0 })!);
    expect(state.items[0]?.read).toBe(true);
    expect(state.unreadCount).toBe(0);
  });
});
