/** "Add images" on a report with a question: the upload goes through the device's queue
 * like any other, and its init names the report's study (and for photos the report's
 * patient, read from the server as the upload starts and never stored on the device). */
import "fake-indexeddb/auto";
import { afterEach, describe, expect, it, vi } from "vitest";
import { db } from "./db";
import { FakeUploadServer, OWNER, queuedStudy, signInOnDevice } from "./testkit";
import { Uploader } from "./uploader";

const REPORT = {
  id: 9,
  status: "additional_data_required",
  upload_ids: ["00000000-0000-4000-8000-00000000000a"],
  study_instance_uid: "1.2.826.0.1.3680043.8.498.1",
  service_level: "urgent",
  modality: "CT",
  study_description: "CT head",
  question: "Is there a wound?",
  versions: [],
  created_at: "2026-12-01T10:42:00Z",
  updated_at: "2026-12-01T10:42:00Z",
  patient_name: "DOE^JANE",
  patient_id: "PID-77",
  study_date: "20261201",
  accession_number: "ACC-9",
};

const PHOTO_FIELDS = { patientName: "", patientId: "", patientBirthDate: "", patientSex: "", studyDate: "", modality: "XC", studyDescription: "", accessionNumber: "" };

function serverWithReport(reportStatus = 200) {
  const upload = new FakeUploadServer(16, 2);
  const inits: Record<string, unknown>[] = [];
  const fetch = async (input: string | URL | Request, init: RequestInit = {}) => {
    const path = new URL(String(input), "http://relay.test").pathname;
    if (path === "/api/v1/reports/9") {
      return new Response(JSON.stringify(reportStatus === 200 ? REPORT : { error: { code: "not_found", message: "Not found.", hint: "" } }), { status: reportStatus });
    }
    if (path === "/api/v1/upload/init") inits.push(JSON.parse(String(init.body)) as Record<string, unknown>);
    return upload.fetch(input, init);
  };
  return { upload, inits, fetch };
}

describe("images added to a report's study", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("are sent as an upload into the report's study, with its patient for photos, nothing of it stored", async () => {
    const { inits, fetch } = serverWithReport();
    await signInOnDevice();
    vi.stubGlobal("fetch", fetch);
    const id = await queuedStudy(16, 2, { fields: { ...PHOTO_FIELDS, studyDescription: "Images for: CT head" }, addTo: { reportId: 9 } });
    await new Uploader(OWNER, new AbortController().signal).run({ untilSent: true });
    expect(inits).toHaveLength(1);
    expect(inits[0]!.metadata).toEqual({
      study_instance_uid: REPORT.study_instance_uid,
      patient_name: "DOE^JANE",
      patient_id: "PID-77",
      study_date: "20261201",
      accession_number: "ACC-9",
      modality: "XC",
      // The study's own description, not the card's name on this device.
      study_description: "CT head",
    });
    expect(inits[0]!.force_upload).toBe(true);
    const study = await db.studies.get(id);
    expect(study?.state).toBe("processing");
    expect(JSON.stringify(study)).not.toContain("DOE^JANE");
    expect(JSON.stringify(study)).not.toContain("PID-77");
  });

  it("say so in words when the report is no longer open to the account", async () => {
    const { inits, fetch } = serverWithReport(404);
    await signInOnDevice();
    vi.stubGlobal("fetch", fetch);
    const id = await queuedStudy(16, 2, { fields: PHOTO_FIELDS, addTo: { reportId: 9 } });
    await new Uploader(OWNER, new AbortController().signal).run({ untilSent: true });
    expect(inits).toHaveLength(0);
    const study = await db.studies.get(id);
    expect(study?.state).toBe("needs_attention");
    expect(study?.error).toMatchObject({ code: "report_gone", message: "The report these images were added to is no longer open to this account." });
    expect(study?.error?.hint).toContain("Cancel this upload");
  });

  it("take the report's patient and study fields over those typed on this device", async () => {
    const { inits, fetch } = serverWithReport();
    await signInOnDevice();
    vi.stubGlobal("fetch", fetch);
    const typed = { ...PHOTO_FIELDS, patientName: "SMITH^JOHN", patientId: "LOCAL-1", studyDate: "20200101", accessionNumber: "ACC-LOCAL", patientSex: "M" };
    await queuedStudy(16, 2, { fields: typed, studyName: "Typed name", addTo: { reportId: 9 } });
    await new Uploader(OWNER, new AbortController().signal).run({ untilSent: true });
    expect(inits).toHaveLength(1);
    expect(inits[0]!.metadata).toMatchObject({
      study_instance_uid: REPORT.study_instance_uid,
      patient_name: "DOE^JANE",
      patient_id: "PID-77",
      study_date: "20261201",
      accession_number: "ACC-9",
      study_description: "CT head",
      modality: "XC",
    });
  });
});
