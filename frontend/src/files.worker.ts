/// <reference lib="webworker" />
/** Off the page's thread: say what each file is and read DICOM headers (first bytes only) and hash files (SHA-256,
 * incrementally, a slice at a time), so a CD of 2,000 files does not freeze the page. */
import { createSHA256 } from "hash-wasm";
import { readPickedFile, type PickedFile } from "./pickedFiles";

export type WorkerRequest =
  | { id: number; kind: "parse"; files: Blob[] }
  | { id: number; kind: "hash"; files: Blob[] };

export type WorkerReply =
  | { id: number; kind: "progress"; done: number; bytes: number }
  | { id: number; kind: "parsed"; files: PickedFile[] }
  | { id: number; kind: "hashed"; sha256: string[] }
  | { id: number; kind: "error"; message: string };

// Big enough to keep hashing fast, small enough to keep memory flat.
const HASH_SLICE_BYTES = 4 * 1024 * 1024;

declare const self: DedicatedWorkerGlobalScope;

async function hashFile(blob: Blob, onBytes: (n: number) => void): Promise<string> {
  const hasher = await createSHA256();
  hasher.init();
  for (let offset = 0; offset < blob.size; offset += HASH_SLICE_BYTES) {
    const slice = new Uint8Array(await blob.slice(offset, offset + HASH_SLICE_BYTES).arrayBuffer());
    hasher.update(slice);
    onBytes(slice.length);
  }
  return hasher.digest("hex");
}

self.onmessage = async (event: MessageEvent<WorkerRequest>) => {
  const { id, kind, files } = event.data;
  try {
    if (kind === "parse") {
      const picked: PickedFile[] = [];
      for (const [i, file] of files.entries()) {
        picked.push(await readPickedFile(file).catch(() => ({ kind: "other" as const, reason: "the file could not be read on this device", header: null, entries: null })));
        if (i % 50 === 49) self.postMessage({ id, kind: "progress", done: i + 1, bytes: 0 } satisfies WorkerReply);
      }
      self.postMessage({ id, kind: "parsed", files: picked } satisfies WorkerReply);
    } else {
      const sha256: string[] = [];
      let bytes = 0;
      for (const [i, file] of files.entries()) {
        sha256.push(
          await hashFile(file, (n) => {
            bytes += n;
            self.postMessage({ id, kind: "progress", done: i, bytes } satisfies WorkerReply);
          }),
        );
      }
      self.postMessage({ id, kind: "hashed", sha256 } satisfies WorkerReply);
    }
  } catch (error) {
    self.postMessage({ id, kind: "error", message: String(error) } satisfies WorkerReply);
  }
};
