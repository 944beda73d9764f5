import { describe, expect, it } from "vitest";
import { anythingToSend, classifyHead, countPicked, describeCounts, zipDirectory, zipEntries } from "./classify";
import { parseHeaderBytes } from "./dicom";

const ascii = (s: string) => Uint8Array.from([...s].map((c) => c.charCodeAt(0)));

function element(group: number, el: number, vr: string, value: string): number[] {
  const v = [...value].map((c) => c.charCodeAt(0));
  if (v.length % 2) v.push(vr === "UI" ? 0 : 0x20);
  return [group & 0xff, group >> 8, el & 0xff, el >> 8, vr.charCodeAt(0), vr.charCodeAt(1), v.length & 0xff, v.length >> 8, ...v];
}

/** A dataset in explicit VR little endian with the UIDs the server needs, no preamble. */
function rawDataset(): Uint8Array {
  return Uint8Array.from([
    ...element(0x0008, 0x0016, "UI", "1.2.840.10008.5.1.4.1.1.2"),
    ...element(0x0008, 0x0018, "UI", "1.2.3.4.5"),
    ...element(0x0008, 0x0060, "CS", "CT"),
    ...element(0x0010, 0x0010, "PN", "DOE^JANE"),
    ...element(0x0010, 0x0020, "LO", "ID42"),
    ...element(0x0020, 0x000d, "UI", "1.2.3.4"),
    ...element(0x0020, 0x000e, "UI", "1.2.3.4.1"),
    ...element(0x0020, 0x0011, "IS", "3"),
  ]);
}

function part10(mediaClass: string): Uint8Array {
  const meta = element(0x0002, 0x0002, "UI", mediaClass).concat(element(0x0002, 0x0010, "UI", "1.2.840.10008.1.2.1"));
  return Uint8Array.from([...new Array(128).fill(0), ...ascii("DICM"), ...meta, ...rawDataset()]);
}

describe("the device classifies files as the server does", () => {
  it("knows archives, photos, DICOM, DICOMDIR and the rest by their first bytes", () => {
    expect(classifyHead(ascii("PK\x03\x04rest"), 100).kind).toBe("zip");
    expect(classifyHead(ascii("PK\x05\x06"), 22).kind).toBe("zip");
    expect(classifyHead(ascii("Rar!\x1a\x07\x01\x00"), 100).kind).toBe("rar");
    expect(classifyHead(ascii("Rar!\x1a\x07\x00"), 100).kind).toBe("rar");
    expect(classifyHead(Uint8Array.from([0xff, 0xd8, 0xff, 0xe0]), 100).kind).toBe("photo");
    expect(classifyHead(ascii("\x89PNG\r\n\x1a\n"), 100).kind).toBe("photo");
    expect(classifyHead(part10("1.2.840.10008.5.1.4.1.1.2"), 400).kind).toBe("dicom");
    expect(classifyHead(part10("1.2.840.10008.1.3.10"), 400)).toEqual({ kind: "dicomdir", reason: "DICOMDIR (a CD index, not an image)" });
    expect(classifyHead(ascii("%PDF-1.7 ".repeat(20)), 180)).toEqual({ kind: "other", reason: "a PDF document, not a DICOM image" });
    expect(classifyHead(ascii("hello world, some notes ".repeat(10)), 240)).toEqual({ kind: "other", reason: "a text file, not a DICOM image" });
    expect(classifyHead(new Uint8Array(0), 0).reason).toBe("empty file");
  });

  it("accepts a dataset without the Part 10 header, as the server re-wraps it, and reads its patient", () => {
    const raw = rawDataset();
    expect(classifyHead(raw, raw.length).kind).toBe("dicom");
    const parsed = parseHeaderBytes(raw);
    expect(parsed?.header.patientId).toBe("ID42");
    expect(parsed?.header.seriesNumber).toBe("3");
  });

  it("counts a ZIP's entries from its central directory", () => {
    // Two entries, one a folder: a central directory and its end record, built by hand.
    const entry = (name: string) => {
      const n = ascii(name);
      const h = new Uint8Array(46 + n.length);
      const v = new DataView(h.buffer);
      v.setUint32(0, 0x02014b50, true);
      v.setUint16(28, n.length, true);
      h.set(n, 46);
      return h;
    };
    const cd = Uint8Array.from([...entry("CD/"), ...entry("CD/IM1.dcm"), ...entry("CD/IM2.dcm")]);
    const end = new Uint8Array(22);
    const v = new DataView(end.buffer);
    v.setUint32(0, 0x06054b50, true);
    v.setUint16(10, 3, true);
    v.setUint32(12, cd.length, true);
    v.setUint32(16, 0, true);
    expect(zipDirectory(end)).toEqual({ entries: 3, offset: 0, size: cd.length });
    expect(zipEntries(cd).filter((e) => !e.directory).map((e) => e.name)).toEqual(["CD/IM1.dcm", "CD/IM2.dcm"]);
  });

  it("says what the server will do with what was picked", () => {
    const counts = countPicked([
      { kind: "zip", entries: 15 },
      { kind: "rar", entries: null },
      { kind: "other", entries: null },
    ]);
    expect(describeCounts(counts)).toBe("1 ZIP archive (15 entries), 1 RAR archive (contents checked by the server), 1 not DICOM (not sent)");
    expect(anythingToSend(counts)).toBe(true);
    expect(anythingToSend(countPicked([{ kind: "other", entries: null }, { kind: "dicomdir", entries: null }]))).toBe(false);
  });
});
