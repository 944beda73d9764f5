import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { displayDate, displayName, FIRST_READ_BYTES, parseHeaderBytes, readHeader, summarise } from "./dicom";

// pydicom's bundled test files, from the project's virtualenv (installed by `make test`).
function pydicomData(): string | null {
  const lib = join(__dirname, "..", "..", ".venv", "lib");
  if (!existsSync(lib)) return null;
  for (const python of readdirSync(lib)) {
    const dir = join(lib, python, "site-packages", "pydicom", "data");
    if (existsSync(dir)) return dir;
  }
  return null;
}

const DATA = pydicomData();
const file = (name: string) => new Blob([readFileSync(join(DATA!, name))]);

describe.skipIf(DATA === null)("DICOM headers read on the device (pydicom test files)", () => {
  it("reads the study fields of a CT", async () => {
    const header = await readHeader(file("test_files/CT_small.dcm"));
    expect(header).toMatchObject({
      patientName: "CompressedSamples^CT1",
      patientId: "1CT1",
      studyDate: "20040119",
      modality: "CT",
      studyDescription: "e+1",
      studyInstanceUid: "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
      sopInstanceUid: "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
    });
  });

  it("reads only the first bytes of a big file", async () => {
    const big = file("test_files/examples_palette.dcm");
    let read = 0;
    const spy = new Proxy(big, {
      get(target, prop) {
        if (prop === "slice")
          return (start?: number, end?: number) => {
            read = Math.max(read, (end ?? target.size) - (start ?? 0));
            return target.slice(start, end);
          };
        const value = Reflect.get(target, prop);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const header = await readHeader(spy);
    expect(header?.modality).toBe("US");
    expect(read).toBeLessThanOrEqual(FIRST_READ_BYTES);
    expect(big.size).toBeGreaterThan(FIRST_READ_BYTES);
  });

  it("reads big endian and decodes non-ASCII character sets", async () => {
    expect((await readHeader(file("test_files/ExplVR_BigEnd.dcm")))?.modality).toBeTruthy();
    expect((await readHeader(file("charset_files/chrRuss.dcm")))?.patientName).toBe("Люкceмбypг");
    expect((await readHeader(file("charset_files/chrGreek.dcm")))?.patientName).toBe("Διονυσιος");
    expect((await readHeader(file("charset_files/chrX1.dcm")))?.patientName).toBe("Wang^XiaoDong=王^小東=");
  });

  it("says a file is not DICOM", async () => {
    expect(parseHeaderBytes(new TextEncoder().encode("not a dicom file at all"))).toBeNull();
    expect(await readHeader(new Blob([new Uint8Array(4096)]))).toBeNull();
  });

  it("summarises a study and notices several patients", async () => {
    const headers = await Promise.all(["test_files/CT_small.dcm", "test_files/MR_small.dcm"].map((n) => readHeader(file(n))));
    const summary = summarise([...headers, null]);
    expect(summary.dicomFiles).toBe(2);
    expect(summary.otherFiles).toBe(1);
    expect(summary.modality).toBe("CT/MR");
    expect(summary.patientCount).toBe(2);
  });
});

describe("display", () => {
  it("shows person names and dates for people", () => {
    expect(displayName("DOE^JOHN^^^")).toBe("DOE, JOHN");
    expect(displayName("Wang^XiaoDong=王^小東")).toBe("Wang, XiaoDong");
    expect(displayName("")).toBe("");
    expect(displayDate("20240131")).toBe("2024-01-31");
    expect(displayDate("")).toBe("");
  });
});
