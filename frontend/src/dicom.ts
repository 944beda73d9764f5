/** Read the study's identifying fields from a DICOM file on the device, reading only the
 * first bytes of the file (Blob.slice), never the pixel data. */
import dicomParser, { type DataSet } from "dicom-parser";
import { parseWithoutPreamble } from "./classify";

export interface DicomHeader {
  patientName: string;
  patientId: string;
  patientBirthDate: string;
  patientSex: string;
  studyDate: string; // YYYYMMDD as in the header
  modality: string;
  studyDescription: string;
  accessionNumber: string;
  studyInstanceUid: string;
  sopInstanceUid: string;
  seriesNumber: string;
  seriesDescription: string;
}

// Most headers end well within 64 KiB; a few (private tags, big overlays, icons) need more.
export const FIRST_READ_BYTES = 64 * 1024;
// Past this we give up rather than read a whole image into memory to find a name.
export const MAX_HEADER_BYTES = 4 * 1024 * 1024;

const TAGS: Record<keyof DicomHeader, string> = {
  patientName: "x00100010",
  patientId: "x00100020",
  patientBirthDate: "x00100030",
  patientSex: "x00100040",
  studyDate: "x00080020",
  modality: "x00080060",
  studyDescription: "x00081030",
  accessionNumber: "x00080050",
  studyInstanceUid: "x0020000d",
  sopInstanceUid: "x00080018",
  seriesNumber: "x00200011",
  seriesDescription: "x0008103e",
};

// DICOM Specific Character Set (0008,0005) → WHATWG encoding label.
const CHARSETS: Record<string, string> = {
  "": "windows-1252",
  ISO_IR_6: "windows-1252",
  ISO_IR_100: "iso-8859-1",
  ISO_IR_101: "iso-8859-2",
  ISO_IR_109: "iso-8859-3",
  ISO_IR_110: "iso-8859-4",
  ISO_IR_144: "iso-8859-5",
  ISO_IR_127: "iso-8859-6",
  ISO_IR_126: "iso-8859-7",
  ISO_IR_138: "iso-8859-8",
  ISO_IR_148: "iso-8859-9",
  ISO_IR_166: "windows-874",
  ISO_IR_13: "shift_jis",
  ISO_IR_192: "utf-8",
  GB18030: "gb18030",
  GBK: "gbk",
  ISO_2022_IR_6: "windows-1252",
  ISO_2022_IR_100: "iso-8859-1",
  ISO_2022_IR_13: "shift_jis",
  ISO_2022_IR_87: "iso-2022-jp",
  ISO_2022_IR_149: "euc-kr",
  ISO_2022_IR_58: "gb18030",
  ISO_2022_IR_144: "iso-8859-5",
  ISO_2022_IR_126: "iso-8859-7",
  ISO_2022_IR_138: "iso-8859-8",
};

function decoderFor(dataSet: DataSet): TextDecoder {
  const terms = (dataSet.string("x00080005") ?? "").split("\\").map((t) => t.trim().replace(/ /g, "_"));
  // With several terms (ISO 2022 code extensions) the last one names the extended set.
  const term = terms.filter(Boolean).pop() ?? "";
  try {
    return new TextDecoder(CHARSETS[term] ?? "utf-8");
  } catch {
    return new TextDecoder("utf-8");
  }
}

function read(dataSet: DataSet, tag: string, decoder: TextDecoder): string {
  const element = dataSet.elements[tag];
  if (!element || element.length <= 0) return "";
  const end = element.dataOffset + element.length;
  if (end > dataSet.byteArray.length) return "";
  const bytes = dataSet.byteArray.subarray(element.dataOffset, end);
  // eslint-disable-next-line no-control-regex
  return decoder.decode(bytes).replace(/[\u0000\s]+$/u, "").replace(/^\s+/u, "");
}

export function isPart10(bytes: Uint8Array): boolean {
  return bytes.length >= 132 && bytes[128] === 0x44 && bytes[129] === 0x49 && bytes[130] === 0x43 && bytes[131] === 0x4d;
}

/** Parse a header from the first bytes of a file; null when the bytes are neither Part 10
 * DICOM nor a dataset without the Part 10 header that the server accepts. */
export function parseHeaderBytes(bytes: Uint8Array): { header: DicomHeader; complete: boolean } | null {
  let dataSet: DataSet;
  let complete = true;
  if (!isPart10(bytes)) {
    const raw = parseWithoutPreamble(bytes);
    if (!raw) return null;
    dataSet = raw;
  } else {
    try {
      dataSet = dicomParser.parseDicom(bytes, {
        untilTag: "x7fe00010",
        inflater: () => {
          throw new Error("deflated");
        },
      } as dicomParser.ParseDicomOptions);
    } catch (error) {
      const partial = (error as { dataSet?: DataSet }).dataSet;
      if (!partial) return null;
      dataSet = partial;
      complete = false;
    }
  }
  const decoder = decoderFor(dataSet);
  const header = Object.fromEntries(
    Object.entries(TAGS).map(([key, tag]) => [key, read(dataSet, tag, decoder)]),
  ) as unknown as DicomHeader;
  // Got what we came for even though the buffer ended early.
  if (!complete && header.studyInstanceUid && header.sopInstanceUid && header.patientId) complete = true;
  return { header, complete };
}

/** Read the header of a file, growing the read until the header is complete. */
export async function readHeader(file: Blob): Promise<DicomHeader | null> {
  let length = FIRST_READ_BYTES;
  for (;;) {
    const bytes = new Uint8Array(await file.slice(0, length).arrayBuffer());
    const parsed = parseHeaderBytes(bytes);
    if (parsed === null) return null;
    if (parsed.complete || length >= file.size || length >= MAX_HEADER_BYTES) return parsed.header;
    length *= 4;
  }
}

/** "DOE^JOHN^^^" → "DOE, JOHN"; other groups (ideographic, phonetic) dropped for display. */
export function displayName(personName: string): string {
  const alphabetic = personName.split("=")[0] ?? "";
  const [family = "", given = "", middle = "", prefix = "", suffix = ""] = alphabetic.split("^");
  const rest = [prefix, given, middle, suffix].filter(Boolean).join(" ");
  if (!family) return rest || personName.replace(/[=^]/g, " ").trim();
  return rest ? `${family}, ${rest}` : family;
}

/** "20240131" → "2024-01-31"; anything else is shown as it is. */
export function displayDate(dicomDate: string): string {
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(dicomDate.trim());
  return m ? `${m[1]}-${m[2]}-${m[3]}` : dicomDate;
}

export interface StudySummary {
  patientName: string;
  patientId: string;
  patientBirthDate: string;
  patientSex: string;
  studyDate: string;
  modality: string; // modalities joined with "/"
  studyDescription: string;
  accessionNumber: string;
  dicomFiles: number;
  otherFiles: number;
  studyCount: number;
  patientCount: number;
}

/** The fields the confirm screen shows, from the headers of every DICOM file picked. */
export function summarise(headers: ReadonlyArray<DicomHeader | null>): StudySummary {
  const dicom = headers.filter((h): h is DicomHeader => h !== null);
  const first = dicom[0];
  const modalities = [...new Set(dicom.map((h) => h.modality).filter(Boolean))];
  return {
    patientName: first?.patientName ?? "",
    patientId: first?.patientId ?? "",
    patientBirthDate: first?.patientBirthDate ?? "",
    patientSex: first?.patientSex ?? "",
    studyDate: first?.studyDate ?? "",
    modality: modalities.join("/"),
    studyDescription: first?.studyDescription ?? "",
    accessionNumber: first?.accessionNumber ?? "",
    dicomFiles: dicom.length,
    otherFiles: headers.length - dicom.length,
    studyCount: new Set(dicom.map((h) => h.studyInstanceUid).filter(Boolean)).size,
    patientCount: new Set(dicom.map((h) => `${h.patientName}|${h.patientId}`)).size,
  };
}
