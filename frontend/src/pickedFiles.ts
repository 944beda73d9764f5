/** What the confirm screen knows of each picked file before anything is sent: its kind by
 * the server's rules (classify.ts), the DICOM header when there is one, and for a ZIP the
 * number of entries and the header of its first DICOM entry, read without unpacking it. */
import { classifyHead, zipDirectory, zipEntries, type FileKind } from "./classify";
import { FIRST_READ_BYTES, parseHeaderBytes, readHeader, type DicomHeader } from "./dicom";

export interface PickedFile {
  kind: FileKind;
  reason: string;
  header: DicomHeader | null;
  /** Files in a ZIP (its central directory); null when unknown (RAR, ZIP64, damaged). */
  entries: number | null;
}

// The end record of a ZIP sits within its last 64 KiB (a comment is at most 65,535 bytes).
const ZIP_TAIL_BYTES = 65_557;
// A central directory bigger than this is not read on the device: the server counts it.
const MAX_CENTRAL_DIRECTORY_BYTES = 8 * 1024 * 1024;
// Entries tried, in order, for one that is DICOM.
const ENTRIES_TRIED = 8;
// Compressed bytes read of an entry: enough for its header.
const ENTRY_READ_BYTES = 1024 * 1024;

async function bytesOf(blob: Blob, start: number, end: number): Promise<Uint8Array> {
  return new Uint8Array(await blob.slice(start, end).arrayBuffer());
}

/** Up to `limit` bytes of a deflated stream, stopping early (the rest is never inflated). */
async function inflateStart(compressed: Uint8Array, limit: number): Promise<Uint8Array> {
  const stream = new Blob([compressed as BlobPart]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  const reader = stream.getReader();
  const parts: Uint8Array[] = [];
  let length = 0;
  try {
    while (length < limit) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      length += value.length;
    }
  } catch {
    // The slice ends mid-stream: what came out so far is what we wanted.
  } finally {
    void reader.cancel().catch(() => undefined);
  }
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

async function readZip(file: Blob): Promise<{ entries: number | null; header: DicomHeader | null }> {
  const tail = await bytesOf(file, Math.max(0, file.size - ZIP_TAIL_BYTES), file.size);
  const directory = zipDirectory(tail);
  if (!directory || directory.size > MAX_CENTRAL_DIRECTORY_BYTES) return { entries: null, header: null };
  const entries = zipEntries(await bytesOf(file, directory.offset, directory.offset + directory.size)).filter((e) => !e.directory);
  let header: DicomHeader | null = null;
  for (const entry of entries.slice(0, ENTRIES_TRIED)) {
    if (entry.method !== 0 && entry.method !== 8) continue;
    const local = await bytesOf(file, entry.localHeaderOffset, entry.localHeaderOffset + 30);
    if (local.length < 30) continue;
    const view = new DataView(local.buffer);
    if (view.getUint32(0, true) !== 0x04034b50) continue;
    const start = entry.localHeaderOffset + 30 + view.getUint16(26, true) + view.getUint16(28, true);
    const compressed = await bytesOf(file, start, start + Math.min(entry.compressedSize, ENTRY_READ_BYTES));
    const head = entry.method === 0 ? compressed.subarray(0, FIRST_READ_BYTES * 4) : await inflateStart(compressed, FIRST_READ_BYTES * 4);
    if (classifyHead(head, head.length).kind !== "dicom") continue;
    header = parseHeaderBytes(head)?.header ?? null;
    if (header) break;
  }
  return { entries: entries.length, header };
}

export async function readPickedFile(file: Blob): Promise<PickedFile> {
  const head = await bytesOf(file, 0, FIRST_READ_BYTES);
  const { kind, reason } = classifyHead(head, file.size);
  if (kind === "dicom") {
    // Most headers are complete in the bytes already read; only the others are read again, longer.
    const parsed = parseHeaderBytes(head);
    const header = parsed && (parsed.complete || head.length >= file.size) ? parsed.header : await readHeader(file).catch(() => null);
    return { kind, reason, header, entries: null };
  }
  if (kind === "zip") {
    const zip = await readZip(file).catch(() => ({ entries: null, header: null }));
    return { kind, reason, ...zip };
  }
  return { kind, reason, header: null, entries: null };
}
