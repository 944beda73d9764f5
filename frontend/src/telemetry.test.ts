/** The network figures of one upload (docs/upload-api.md, telemetry): measured by the real
 * engine against a stand-in for the upload API, sent once the chunks are all acknowledged,
 * and never in the upload's way when the server does not take them. */
import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { db } from "./db";
import { NetworkMeter } from "./telemetry";
import { FakeUploadServer, OWNER, queuedStudy, signInOnDevice, until } from "./testkit";
import { Uploader } from "./uploader";

describe("the network meter", () => {
  it("adds up bytes with retries, sending time, outages and their time, and chunks sent again", () => {
    const meter = new NetworkMeter();
    meter.sending(1_000);
    meter.chunkSent(0, 100);
    meter.chunkSent(1, 100);
    meter.chunkSent(1, 100); // sent again
    meter.offline(3_000); // 2 s of sending, then cut off
    meter.offline(4_000); // still the same outage
    meter.sending(8_500); // back after 5.5 s
    meter.chunkSent(2, 50);
    meter.idle(9_000);
    expect(meter.report(20_000)).toEqual({ bytes_sent: 350, active_seconds: 2.5, outages: 1, offline_seconds: 5.5, retried_chunks: 1 });
    meter.offline(20_000);
    expect(meter.report(21_000)).toMatchObject({ outages: 2, offline_seconds: 6.5, active_seconds: 2.5 });
  });
});

describe("the upload's network report", () => {
  let now = 1_800_000_000_000;

  beforeEach(async () => {
    await Promise.all([db.studies.clear(), db.blobs.clear(), db.ackPages.clear(), db.auth.clear()]);
    await signInOnDevice();
    now = 1_800_000_000_000;
    vi.spyOn(Date, "now").mockImplementation(() => now);
  });
  afterEach(() => {
    vi.restoreAllMocks();
    vi.unstubAllGlobals();
  });

  it("is sent once the chunks are all acknowledged, with what the engine measured", async () => {
    const server = new FakeUploadServer(16, 4);
    vi.stubGlobal("fetch", server.fetch);
    server.damagedOnce.add(2);
    server.onChunkRequest = () => {
      now += 250;
    };
    const id = await queuedStudy(16, 4);
    const uploader = new Uploader(OWNER, new AbortController().signal);
    // First the network is gone for 30 s: one outage.
    server.reachable = false;
    await uploader.run({ untilSent: true });
    expect((await db.studies.get(id))?.state).toBe("queued");
    now += 30_000;
    server.reachable = true;
    await uploader.run({ untilSent: true });
    expect((await db.studies.get(id))?.state).toBe("processing");
    await until(() => server.telemetry.length === 1);
    const [report] = server.telemetry;
    // 4 chunks of 16 bytes, one sent twice; 5 requests of 250 ms each (clock per request).
    expect(report).toMatchObject({ bytes_sent: 80, outages: 1, retried_chunks: 1 });
    expect(report!.offline_seconds).toBeGreaterThanOrEqual(30);
    expect(report!.offline_seconds).toBeLessThan(31);
    expect(report!.active_seconds).toBeCloseTo(1.25, 5);
    const telemetryCall = `POST /upload/${server.uploadId}/telemetry`;
    expect(server.calls.filter((c) => c === telemetryCall)).toHaveLength(1);
    // Sent when the chunks were all acknowledged, before `complete`.
    expect(server.calls.indexOf(telemetryCall)).toBeLessThan(server.calls.indexOf(`POST /upload/${server.uploadId}/complete`));
  });

  it("that the server does not take is tried once more, then dropped, and the upload goes on", async () => {
    const server = new FakeUploadServer(16, 2);
    vi.stubGlobal("fetch", server.fetch);
    server.telemetryAnswer = 500;
    const errors = vi.spyOn(console, "error");
    const id = await queuedStudy(16, 2);
    await new Uploader(OWNER, new AbortController().signal).run({ untilSent: true });
    const study = await db.studies.get(id);
    expect(study?.state).toBe("processing");
    expect(study?.error).toBeNull();
    await until(() => server.telemetry.length === 2, 10_000);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(server.telemetry).toHaveLength(2);
    expect((await db.studies.get(id))?.state).toBe("processing");
    expect(errors).not.toHaveBeenCalled();
  });

  it("that cannot reach the server is dropped without touching the upload", async () => {
    const server = new FakeUploadServer(16, 2);
    const fetch = (input: string | URL | Request, init?: RequestInit) =>
      String(input).endsWith("/telemetry") ? Promise.reject(new TypeError("Failed to fetch")) : server.fetch(input, init);
    vi.stubGlobal("fetch", fetch);
    const id = await queuedStudy(16, 2);
    const stop = new AbortController();
    await new Uploader(OWNER, stop.signal).run({ untilSent: true });
    expect((await db.studies.get(id))?.state).toBe("processing");
    expect(server.calls).toContain(`POST /upload/${server.uploadId}/complete`);
    stop.abort(); // the second try (after a pause) ends with the engine
  });
});
