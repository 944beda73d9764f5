/** What each picked file is, by its first bytes, with the server's rules
 * (uploads/services/processing.py, uploads/dicom.py, uploads/archives.py, uploads/imaging.py),
 * so that the confirm screen says before sending what the server will do after. */
import dicomParser, { type DataSet } from "dicom-parser";

export type FileKind = "dicom" | "dicomdir" | "photo" | "zip" | "rar" | "other";

export interface Classified {
  kind: FileKind;
  /** Why a file is not sent ("other", "dicomdir"), in the server's words. */
  reason: string;
}

const DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10";
const RAW_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"];

function startsWith(bytes: Uint8Array, magic: number[], at = 0): boolean {
  if (bytes.length < at + magic.length) return false;
  return magic.every((b, i) => bytes[at + i] === b);
}

const ascii = (s: string) => [...s].map((c) => c.charCodeAt(0));
const ZIP_MAGIC = [ascii("PK\x03\x04"), ascii("PK\x05\x06")];
const RAR_MAGIC = [ascii("Rar!\x1a\x07\x01\x00"), ascii("Rar!\x1a\x07\x00")];
const JPEG_MAGIC = [0xff, 0xd8, 0xff];
const PNG_MAGIC = ascii("\x89PNG\r\n\x1a\n");

export function archiveKind(head: Uint8Array): "zip" | "rar" | null {
  if (ZIP_MAGIC.some((m) => startsWith(head, m))) return "zip";
  if (RAR_MAGIC.some((m) => startsWith(head, m))) return "rar";
  return null;
}

export function photoKind(head: Uint8Array): "jpeg" | "png" | null {
  if (startsWith(head, JPEG_MAGIC)) return "jpeg";
  if (startsWith(head, PNG_MAGIC)) return "png";
  return null;
}

export function hasDicmPrefix(bytes: Uint8Array): boolean {
  return startsWith(bytes, ascii("DICM"), 128);
}

/** The server's words for a file it skips (uploads/dicom.py `sniff_reason`). */
export function sniffReason(head: Uint8Array): string {
  if (startsWith(head, ascii("%PDF"))) return "a PDF document, not a DICOM image";
  if (startsWith(head, [0xd0, 0xcf, 0x11, 0xe0])) return "an office document or other archive, not a DICOM image";
  const first = head.subarray(0, 64);
  if (first.every((b) => b > 0 && b < 0x80)) return "a text file, not a DICOM image";
  return "not a DICOM file";
}

/** A dataset without the Part 10 header that the server gives one (it needs the SOP, study
 * and series UIDs), parsed from its first bytes; null when it is not one. */
export function parseWithoutPreamble(bytes: Uint8Array): DataSet | null {
  const group = [bytes[0], bytes[1]].join(",");
  // The server reads only datasets starting in group 0002 or 0008, in either byte order.
  if (!["2,0", "0,2", "8,0", "0,8"].includes(group)) return null;
  for (const syntax of RAW_SYNTAXES) {
    let dataSet: DataSet | undefined;
    try {
      dataSet = dicomParser.parseDicom(bytes, { TransferSyntaxUID: syntax, untilTag: "x7fe00010" } as dicomParser.ParseDicomOptions);
    } catch (error) {
      dataSet = (error as { dataSet?: DataSet }).dataSet;
    }
    if (dataSet && ["x00080018", "x0020000d", "x0020000e"].every((tag) => (dataSet.string(tag) ?? "").trim())) return dataSet;
  }
  return null;
}

/** The kind of a file from its size and its first bytes (at least 132 of them, 64 KiB for a
 * header-less dataset), as the server will classify it. */
export function classifyHead(head: Uint8Array, size: number): Classified {
  if (size === 0) return { kind: "other", reason: "empty file" };
  const archive = archiveKind(head);
  if (archive) return { kind: archive, reason: "" };
  if (photoKind(head)) return { kind: "photo", reason: "" };
  if (size < 132) return { kind: "other", reason: "not a DICOM file (too small to hold a DICOM header)" };
  if (hasDicmPrefix(head)) {
    let mediaClass = "";
    try {
      mediaClass = dicomParser.readPart10Header(head).string("x00020002") ?? "";
    } catch {
      // A damaged meta header: the server rejects it, but it is still a DICOM file.
    }
    if (mediaClass.replace(/\0/g, "").trim() === DICOMDIR_SOP_CLASS) return { kind: "dicomdir", reason: "DICOMDIR (a CD index, not an image)" };
    return { kind: "dicom", reason: "" };
  }
  if (parseWithoutPreamble(head)) return { kind: "dicom", reason: "" };
  return { kind: "other", reason: sniffReason(head) };
}

export const KIND_WORDS: Record<FileKind, string> = {
  dicom: "DICOM image",
  dicomdir: "CD index (DICOMDIR), not sent",
  photo: "photo (JPEG or PNG)",
  zip: "ZIP archive",
  rar: "RAR archive",
  other: "not DICOM, not sent",
};

/** Where the end-of-central-directory record of a ZIP is, in its last bytes (`tail`). */
function findEocd(tail: Uint8Array): number {
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tail[i] === 0x50 && tail[i + 1] === 0x4b && tail[i + 2] === 0x05 && tail[i + 3] === 0x06) return i;
  }
  return -1;
}

export interface ZipEntry {
  name: string;
  method: number;
  compressedSize: number;
  localHeaderOffset: number;
  directory: boolean;
}

/** The entries of a ZIP from its central directory (`cd`, the bytes it names in the
 * end record `tail`), or null when it cannot be read cheaply (ZIP64, damaged). */
export function zipDirectory(tail: Uint8Array): { entries: number; offset: number; size: number } | null {
  const at = findEocd(tail);
  if (at < 0) return null;
  const view = new DataView(tail.buffer, tail.byteOffset + at, 22);
  const entries = view.getUint16(10, true);
  const size = view.getUint32(12, true);
  const offset = view.getUint32(16, true);
  if (entries === 0xffff || size === 0xffffffff || offset === 0xffffffff) return null;
  return { entries, offset, size };
}

export function zipEntries(cd: Uint8Array): ZipEntry[] {
  const entries: ZipEntry[] = [];
  const view = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
  let p = 0;
  while (p + 46 <= cd.length && view.getUint32(p, true) === 0x02014b50) {
    const method = view.getUint16(p + 10, true);
    const compressedSize = view.getUint32(p + 20, true);
    const nameLength = view.getUint16(p + 28, true);
    const extraLength = view.getUint16(p + 30, true);
    const commentLength = view.getUint16(p + 32, true);
    const localHeaderOffset = view.getUint32(p + 42, true);
    const name = new TextDecoder().decode(cd.subarray(p + 46, p + 46 + nameLength));
    entries.push({ name, method, compressedSize, localHeaderOffset, directory: name.endsWith("/") });
    p += 46 + nameLength + extraLength + commentLength;
  }
  return entries;
}

export interface PickedCounts {
  dicom: number;
  dicomdir: number;
  photo: number;
  zip: number;
  rar: number;
  other: number;
  /** Entries of the ZIPs whose central directory was read. */
  zipEntries: number;
  /** ZIPs whose entries could not be counted on the device. */
  zipUncounted: number;
}

export function countPicked(files: ReadonlyArray<{ kind: FileKind; entries: number | null }>): PickedCounts {
  const counts: PickedCounts = { dicom: 0, dicomdir: 0, photo: 0, zip: 0, rar: 0, other: 0, zipEntries: 0, zipUncounted: 0 };
  for (const f of files) {
    counts[f.kind] += 1;
    if (f.kind === "zip") {
      if (f.entries === null) counts.zipUncounted += 1;
      else counts.zipEntries += f.entries;
    }
  }
  return counts;
}

const plural = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`;

/** "15 DICOM images, 1 ZIP archive (15 entries), 1 RAR archive (contents checked by the
 * server), 2 not DICOM (not sent)": what the server will do with what was picked. */
export function describeCounts(c: PickedCounts): string {
  const parts: string[] = [];
  if (c.dicom) parts.push(plural(c.dicom, "DICOM image", "DICOM images"));
  if (c.photo) parts.push(plural(c.photo, "photo", "photos"));
  if (c.zip) {
    const entries = c.zipUncounted === c.zip ? "contents checked by the server" : plural(c.zipEntries, "entry", "entries") + (c.zipUncounted ? " and more the server counts" : "");
    parts.push(`${plural(c.zip, "ZIP archive", "ZIP archives")} (${entries})`);
  }
  if (c.rar) parts.push(`${plural(c.rar, "RAR archive", "RAR archives")} (contents checked by the server)`);
  if (c.dicomdir) parts.push(`${plural(c.dicomdir, "CD index", "CD indexes")} (DICOMDIR, not sent)`);
  if (c.other) parts.push(`${c.other} not DICOM (not sent)`);
  return parts.join(", ");
}

/** Whether the server has anything to send in what was picked. */
export function anythingToSend(c: PickedCounts): boolean {
  return c.dicom + c.photo + c.zip + c.rar > 0;
}
