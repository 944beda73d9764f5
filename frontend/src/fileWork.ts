/** The page's side of files.worker.ts. */
import type { PickedFile } from "./pickedFiles";
import type { WorkerReply, WorkerRequest } from "./files.worker";

let worker: Worker | null = null;
let nextId = 1;
const pending = new Map<number, { resolve: (r: WorkerReply) => void; onProgress?: (r: WorkerReply & { kind: "progress" }) => void }>();

function getWorker(): Worker {
  if (worker) return worker;
  worker = new Worker(new URL("./files.worker.ts", import.meta.url), { type: "module" });
  worker.onmessage = (event: MessageEvent<WorkerReply>) => {
    const reply = event.data;
    const entry = pending.get(reply.id);
    if (!entry) return;
    if (reply.kind === "progress") {
      entry.onProgress?.(reply);
      return;
    }
    pending.delete(reply.id);
    entry.resolve(reply);
  };
  return worker;
}

function ask(request: Omit<WorkerRequest, "id">, onProgress?: (r: WorkerReply & { kind: "progress" }) => void): Promise<WorkerReply> {
  const id = nextId++;
  return new Promise((resolve) => {
    pending.set(id, { resolve, onProgress });
    getWorker().postMessage({ ...request, id } as WorkerRequest);
  });
}

export async function readPickedFiles(files: Blob[], onProgress?: (done: number) => void): Promise<PickedFile[]> {
  const reply = await ask({ kind: "parse", files }, (p) => onProgress?.(p.done));
  if (reply.kind !== "parsed") throw new Error(reply.kind === "error" ? reply.message : "unexpected reply");
  return reply.files;
}

export async function hashFiles(files: Blob[], onBytes?: (bytes: number) => void): Promise<string[]> {
  const reply = await ask({ kind: "hash", files }, (p) => onBytes?.(p.bytes));
  if (reply.kind !== "hashed") throw new Error(reply.kind === "error" ? reply.message : "unexpected reply");
  return reply.sha256;
}
