/** For the Vitest units only (never imported by the app): a stand-in for the upload API of
 * docs/upload-api.md, answering the engine's fetch calls the way the server does, and a
 * counter of the writes the engine makes to IndexedDB (fake-indexeddb in Node). */
import { serialize } from "node:v8";
import { db, type Study } from "./db";
import { Uploader } from "./uploader";

export const OWNER = "tech";

function json(status: number, body: unknown): Response {
  return new Response(status === 204 ? null : JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

function jwt(exp: number): string {
  const payload = btoa(JSON.stringify({ exp }));
  return `h.${payload.replace(/=+$/, "")}.s`;
}

export async function signInOnDevice(): Promise<void> {
  // An access token valid in 2096: the tests move the clock.
  await db.auth.put({ key: "current", username: OWNER, access: jwt(4_000_000_000), refresh: "r", expired: false });
}

/** A queued study of `chunks` chunks of `chunkSize` bytes, its one file stored as a Blob. */
export async function queuedStudy(chunkSize: number, chunks: number, patch: Partial<Study> = {}): Promise<number> {
  const size = chunkSize * chunks;
  const study: Study = {
    owner: OWNER,
    createdAt: Date.now(),
    state: "queued",
    fields: null,
    studyName: "",
    clinicalNotes: "",
    serviceLevel: "routine",
    files: [{ name: "IM0001", size, type: "", sha256: "0".repeat(64) }],
    fileCount: 1,
    totalSize: size,
    hashedBytes: size,
    forceUpload: false,
    uploadId: null,
    uploadToken: null,
    chunkSize: null,
    totalChunks: null,
    bytesAcked: 0,
    rate: 0,
    serverState: null,
    error: null,
    completedAt: null,
    ...patch,
  };
  const id = (await db.studies.add(study)) as number;
  await db.blobs.add({ studyId: id, index: 0, blob: new Blob([new Uint8Array(size).fill(7)]) });
  return id;
}

interface HeldChunk {
  index: number;
  answer: () => void;
}

/** The upload API for one upload: init, status, chunk, complete and cancel. */
export class FakeUploadServer {
  readonly uploadId = "00000000-0000-4000-8000-000000000001";
  readonly received = new Set<number>();
  readonly chunkRequests: number[] = [];
  readonly calls: string[] = [];
  state = "receiving";
  /** Chunk answers are held while this says so, until `answer` is called. */
  hold: (index: number) => boolean = () => false;
  readonly held: HeldChunk[] = [];
  /** Called as each chunk request arrives, before it is answered or held. */
  onChunkRequest: (index: number) => void = () => undefined;
  /** What DELETE answers (the server's status code). */
  cancelAnswer = 204;
  /** False: every request fails as fetch fails without a network. */
  reachable = true;
  /** The network reports (`POST …/telemetry` bodies) received, and what it answers. */
  readonly telemetry: Record<string, unknown>[] = [];
  telemetryAnswer = 204;
  /** Chunks whose first request arrives damaged (a 400 `checksum_mismatch`, sent again). */
  readonly damagedOnce = new Set<number>();
  /** Awaited before `init` answers (to cancel while it is on its way). */
  beforeInit: () => Promise<void> | void = () => undefined;

  constructor(
    readonly chunkSize: number,
    readonly totalChunks: number,
  ) {}

  readonly fetch = async (input: string | URL | Request, init: RequestInit = {}): Promise<Response> => {
    const url = new URL(String(input), "http://relay.test");
    const method = init.method ?? "GET";
    const path = url.pathname.replace(/^\/api\/v1/, "");
    if (!this.reachable) throw new TypeError("Failed to fetch");
    this.calls.push(`${method} ${path}`);
    if (method === "POST" && path === "/upload/init") {
      await this.beforeInit();
      return json(201, {
        upload_id: this.uploadId,
        upload_token: "upl_test",
        chunk_size: this.chunkSize,
        total_size: this.chunkSize * this.totalChunks,
        total_chunks: this.totalChunks,
        expires_at: new Date(Date.now() + 86_400_000).toISOString(),
      });
    }
    if (!path.startsWith(`/upload/${this.uploadId}`)) return json(404, { error: { code: "not_found", message: "Not found.", hint: "" } });
    const action = path.slice(`/upload/${this.uploadId}`.length);
    if (method === "GET" && action === "/status") {
      const missing: number[] = [];
      for (let i = 0; i < this.totalChunks; i++) if (!this.received.has(i)) missing.push(i);
      return json(200, {
        upload_id: this.uploadId,
        state: this.state,
        bytes_received: this.received.size * this.chunkSize,
        total_size: this.chunkSize * this.totalChunks,
        missing_chunks: this.state === "receiving" ? missing : [],
        error: null,
        pacs: { acknowledged_instances: 0, pending_instances: 0, next_retry_at: null },
        rejected_files: [],
        warnings: [],
      });
    }
    if (method === "PUT" && action === "/chunk") {
      const index = Number(url.searchParams.get("index"));
      this.chunkRequests.push(index);
      this.onChunkRequest(index);
      if (this.hold(index)) await new Promise<void>((answer) => this.held.push({ index, answer }));
      if (this.damagedOnce.delete(index)) return json(400, { error: { code: "checksum_mismatch", message: "The chunk arrived damaged.", hint: "" } });
      this.received.add(index);
      return json(200, { index, received: true });
    }
    if (method === "POST" && action === "/complete") {
      if (this.received.size < this.totalChunks) return json(409, { error: { code: "upload_incomplete", message: "Chunks are missing.", hint: "" } });
      this.state = "processing";
      return json(202, { upload_id: this.uploadId, state: this.state });
    }
    if (method === "POST" && action === "/telemetry") {
      this.telemetry.push(JSON.parse(String(init.body)) as Record<string, unknown>);
      if (this.telemetryAnswer !== 204) return json(this.telemetryAnswer, { error: { code: "server_error", message: "The server had a problem.", hint: "" } });
      return json(204, null);
    }
    if (method === "DELETE" && action === "") {
      if (this.cancelAnswer === 204) this.state = "cancelled";
      if (this.cancelAnswer === 409) {
        return json(409, {
          error: {
            code: "upload_completed",
            message: "This study was already delivered to the PACS and cannot be cancelled.",
            hint: "Ask the PACS administrator if the study must be removed there.",
          },
        });
      }
      return json(this.cancelAnswer, {});
    }
    return json(405, {});
  };

  /** Answer the held chunk `index`. */
  answer(index: number): void {
    const at = this.held.findIndex((h) => h.index === index);
    if (at < 0) throw new Error(`chunk ${index} is not held`);
    this.held.splice(at, 1)[0]!.answer();
  }

  answerAll(): void {
    for (const h of this.held.splice(0)) h.answer();
  }
}

export interface IdbWrite {
  store: string;
  op: string;
  bytes: number;
}

function sizeOf(value: unknown): number {
  // The structured-clone bytes, as Chromium's IndexedDB stores a value (V8's serializer).
  return value === undefined ? 0 : serialize(value).length;
}

/** Every write that reaches IndexedDB (put, add, delete, clear, cursor update/delete),
 * with the structured-clone size of what it writes. */
export function countIdbWrites(): { writes: IdbWrite[]; stop: () => void } {
  const writes: IdbWrite[] = [];
  const restore: (() => void)[] = [];
  const wrap = (proto: Record<string, unknown>, op: string, storeOf: (self: unknown) => string, bytesOf: (args: unknown[]) => number) => {
    const original = proto[op] as (...args: unknown[]) => unknown;
    proto[op] = function (this: unknown, ...args: unknown[]) {
      writes.push({ store: storeOf(this), op, bytes: bytesOf(args) });
      return original.apply(this, args);
    };
    restore.push(() => {
      proto[op] = original;
    });
  };
  const store = (self: unknown) => (self as IDBObjectStore).name;
  const cursorStore = (self: unknown) => ((self as IDBCursor).source as IDBObjectStore).name;
  const stores = IDBObjectStore.prototype as unknown as Record<string, unknown>;
  const cursors = IDBCursor.prototype as unknown as Record<string, unknown>;
  wrap(stores, "put", store, ([value, key]) => sizeOf(value) + sizeOf(key));
  wrap(stores, "add", store, ([value, key]) => sizeOf(value) + sizeOf(key));
  wrap(stores, "delete", store, ([key]) => sizeOf(key instanceof IDBKeyRange ? [key.lower, key.upper] : key));
  wrap(stores, "clear", store, () => 0);
  wrap(cursors, "update", cursorStore, ([value]) => sizeOf(value));
  wrap(cursors, "delete", cursorStore, () => 0);
  return { writes, stop: () => restore.forEach((r) => r()) };
}

/** Resolve once `check` holds, polling; fails after `ms` (of real time: tests may stop `Date`). */
export async function until(check: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error("timed out waiting");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Run an upload engine for OWNER until study `id` was sent whole (the server processes
 * it), then stop it and wait for it to end. */
export async function sendWithEngine(id: number, ms = 30_000): Promise<void> {
  const controller = new AbortController();
  const running = new Uploader(OWNER, controller.signal).run();
  try {
    await until(async () => (await db.studies.get(id))?.state === "processing", ms);
  } finally {
    controller.abort();
    await running;
  }
}
