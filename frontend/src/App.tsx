import { useLiveQuery } from "dexie-react-hooks";
import { useEffect, useState, type FormEvent } from "react";
import { getPreferences, getProfile, homeFor, offersConfirmationResend, SERVICE_LEVELS, signedInFetch, type Home } from "./account";
import { ForgotPassword, Register, ResendVerification, ResetPassword, VerifyEmail } from "./AccountScreens";
import { ApiError, type UploadStatus } from "./api";
import { currentSession, signIn, signOut } from "./auth";
import { anythingToSend, countPicked, describeCounts, KIND_WORDS } from "./classify";
import { db, type ServiceLevel, type Study, type StudyFields, type UserError, type WaitNote } from "./db";
import { displayDate, displayName, summarise, type DicomHeader, type StudySummary } from "./dicom";
import { useInstallOffer } from "./engagement";
import { readPickedFiles } from "./fileWork";
import type { PickedFile } from "./pickedFiles";
import { Dashboard } from "./Dashboard";
import { statsForget } from "./dashboard";
import { forgetLastId, liveFor, useListsVersion } from "./live";
import { NotificationCentre, NotificationsButton, Toasts } from "./Notifications";
import { fromServerState, stateLabel } from "./queueState";
import { startUploads, stopUploads, tryUploadsNow } from "./runtime";
import {
  cancelStudy,
  discardAll,
  dismissStudy,
  fileName,
  formatBytes,
  pauseStudy,
  queueStudy,
  recoveryOf,
  resumePreparation,
  resumeStudy,
  retryStudy,
  sendAgain,
} from "./studies";
import { toUserError } from "./uploader";
import { History } from "./History";
import { Reports } from "./Reports";
import { repliesExpire, repliesForget, repliesSend, reportsForget, shownAsOf } from "./reports";
import { deviceForget, leftChoices, leftOnDevice, leftWords, somethingLeft, type LeftOnDevice } from "./signOut";
import { reportStateWords, STUDY_WORDS } from "./words";
import { navigate, useRoute } from "./router";
import { INSECURE_NOTICE } from "./secure";
import { Settings } from "./Settings";
import { followServiceWorker } from "./push";
import { PushOffer } from "./PushOffer";
import { ErrorBox } from "./ui";
import { VirtualList } from "./VirtualList";

function useOnline(): boolean {
  const [online, setOnline] = useState(navigator.onLine);
  useEffect(() => {
    const update = () => setOnline(navigator.onLine);
    window.addEventListener("online", update);
    window.addEventListener("offline", update);
    return () => {
      window.removeEventListener("online", update);
      window.removeEventListener("offline", update);
    };
  }, []);
  return online;
}

function SignIn({ expiredUser }: { expiredUser?: string }) {
  const [username, setUsername] = useState(expiredUser ?? "");
  const [password, setPassword] = useState("");
  const [otp, setOtp] = useState<string | null>(null);
  const [error, setError] = useState<UserError | null>(null);
  const [busy, setBusy] = useState(false);
  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await signIn(username.trim(), password, otp ?? undefined);
    } catch (e) {
      if (e instanceof ApiError && (e.code === "otp_required" || e.code === "invalid_otp")) setOtp(otp ?? "");
      setError(
        e instanceof ApiError && e.status === 0
          ? { code: e.code, message: "Signing in needs the network, and the server cannot be reached.", hint: "Connect to the clinic network or mobile data and try again." }
          : toUserError(e),
      );
    } finally {
      setBusy(false);
    }
  }
  return (
    <main className="screen narrow">
      <h1>RelayPACS</h1>
      {expiredUser && <p className="note">Your session has ended. Sign in again; your queued studies are kept.</p>}
      <form onSubmit={submit} className="form">
        <label>
          Username
          <input name="username" autoComplete="username" value={username} onChange={(e) => setUsername(e.target.value)} required autoCapitalize="none" />
        </label>
        <label>
          Password
          <input name="password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} required />
        </label>
        {otp !== null && (
          <label>
            One-time code
            <input name="otp" inputMode="numeric" autoComplete="one-time-code" value={otp} onChange={(e) => setOtp(e.target.value)} required autoFocus />
          </label>
        )}
        <ErrorBox error={error} />
        <button className="primary" type="submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
      <div className="links">
        <a href="/#/forgot-password">Forgot your password?</a>
        <a href="/#/register">Create an account</a>
      </div>
      {offersConfirmationResend(error?.code, username) && <ResendVerification intro="This account was created on this device and its email address is not confirmed yet. No email, or its link expired?" />}
    </main>
  );
}

interface Picked {
  files: File[];
  kind: "dicom" | "photos";
  /** What each file is (classify.ts), once read on the device. */
  info: PickedFile[] | null;
  parsed: number;
}

// The folder picker keeps relative paths (File.webkitRelativePath); React has no prop for it.
const FOLDER_PICKER = { webkitdirectory: "", directory: "" } as Record<string, string>;

function UploadButton({ onPick }: { onPick: (files: File[], kind: Picked["kind"]) => void }) {
  const [open, setOpen] = useState(false);
  const pick = (kind: Picked["kind"]) => (e: React.ChangeEvent<HTMLInputElement>) => {
    const files = Array.from(e.target.files ?? []);
    e.target.value = "";
    setOpen(false);
    if (files.length) onPick(files, kind);
  };
  return (
    <div className="upload">
      <button className="primary big" onClick={() => setOpen(!open)} aria-expanded={open}>
        Upload study
      </button>
      {open && (
        <div className="choices">
          <label className="choice">
            DICOM files
            <input type="file" multiple data-testid="pick-files" onChange={pick("dicom")} />
          </label>
          <label className="choice">
            A folder (CD, USB)
            <input type="file" multiple {...FOLDER_PICKER} data-testid="pick-folder" onChange={pick("dicom")} />
          </label>
          <label className="choice">
            Photos
            <input type="file" multiple accept="image/jpeg,image/png" capture="environment" data-testid="pick-photos" onChange={pick("photos")} />
          </label>
        </div>
      )}
    </div>
  );
}

function seriesLabel(header: DicomHeader | null): string | undefined {
  if (!header || (!header.seriesNumber && !header.seriesDescription)) return undefined;
  return [header.seriesNumber ? `Series ${header.seriesNumber}` : "A series", header.seriesDescription].filter(Boolean).join(" · ");
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

function Confirm({ owner, picked, onDone }: { owner: string; picked: Picked; onDone: () => void }) {
  const headers = picked.info?.map((i) => i.header) ?? null;
  const readable = headers?.some((h) => h !== null) ?? false;
  const summary: StudySummary | null = headers && readable ? summarise(headers) : null;
  const counts = picked.info ? countPicked(picked.info) : null;
  const totalSize = picked.files.reduce((s, f) => s + f.size, 0);
  const isPhotos = picked.kind === "photos";
  // Typed by hand when no DICOM header could be read on the device (photos, a RAR).
  const typedPatient = isPhotos || (counts !== null && summary === null);
  const notPhotos = isPhotos && picked.info ? picked.files.filter((_, i) => picked.info![i]!.kind !== "photo") : [];
  const [typed, setTyped] = useState({ patientName: "", patientId: "", studyDate: "" });
  const [studyName, setStudyName] = useState<string | null>(null);
  const [notes, setNotes] = useState("");
  const [level, setLevel] = useState<ServiceLevel>("routine");
  const [levelChosen, setLevelChosen] = useState(false);
  const [error, setError] = useState<UserError | null>(null);
  const [busy, setBusy] = useState(false);
  const defaultName = summary?.studyDescription || (isPhotos ? "Photos" : "");
  useEffect(() => {
    // The user's default service level (Settings) when the network can tell it; routine otherwise.
    if (!navigator.onLine || levelChosen) return;
    let live = true;
    getPreferences().then(
      (p) => live && setLevel((current) => (current === "routine" ? p.default_service_level : current)),
      () => undefined,
    );
    return () => {
      live = false;
    };
  }, [levelChosen]);
  const name = studyName ?? defaultName;

  async function submit(event: FormEvent) {
    event.preventDefault();
    if (!isPhotos && counts && !anythingToSend(counts)) {
      setError({
        code: "no_dicom",
        message: "None of the files picked is a DICOM image, a photo or an archive the server can unpack.",
        hint: "Pick the study's DICOM files, its folder (for example DICOM on the CD) or a ZIP or RAR of them.",
      });
      return;
    }
    if (notPhotos.length) return;
    const typedFields: StudyFields = {
      patientName: typed.patientName.trim().replace(/,\s*/, "^"),
      patientId: typed.patientId.trim(),
      patientBirthDate: "",
      patientSex: "",
      studyDate: typed.studyDate.replace(/-/g, ""),
      // External-camera photography: what the server stores for photos too.
      modality: isPhotos ? "XC" : "",
      studyDescription: name,
      accessionNumber: "",
    };
    const fields: StudyFields = typedPatient
      ? typedFields
      : {
          // Sent as hints only when every file agrees: the server checks them against the headers.
          patientName: summary?.patientCount === 1 ? summary.patientName : "",
          patientId: summary?.patientCount === 1 ? summary.patientId : "",
          patientBirthDate: summary?.patientBirthDate ?? "",
          patientSex: summary?.patientSex ?? "",
          studyDate: summary?.studyDate ?? "",
          modality: summary?.modality.split("/")[0] ?? "",
          studyDescription: summary?.studyDescription ?? "",
          accessionNumber: summary?.accessionNumber ?? "",
        };
    setBusy(true);
    try {
      await queueStudy({
        owner,
        files: picked.files,
        fields,
        studyName: name === fields.studyDescription && !typedPatient ? "" : name,
        clinicalNotes: notes,
        serviceLevel: level,
        series: picked.info?.map((i) => seriesLabel(i.header)),
      });
      onDone();
    } catch (e) {
      setError(toUserError(e));
      setBusy(false);
    }
  }

  const parsing = picked.info === null;
  return (
    <main className="screen">
      <h2>Confirm the study</h2>
      <form onSubmit={submit} className="form">
        {parsing ? (
          <p className="note" role="status">
            Reading the files… {picked.parsed} of {picked.files.length}
          </p>
        ) : typedPatient ? (
          <fieldset>
            <legend>Patient</legend>
            {!isPhotos && <p className="note">The patient could not be read from these files on this device: type it. The server checks it against the images.</p>}
            <label>
              Patient name
              <input value={typed.patientName} onChange={(e) => setTyped({ ...typed, patientName: e.target.value })} required placeholder="Family name, given name" />
            </label>
            <label>
              Patient ID
              <input value={typed.patientId} onChange={(e) => setTyped({ ...typed, patientId: e.target.value })} required />
            </label>
            <label>
              Date
              <input type="date" value={typed.studyDate} onChange={(e) => setTyped({ ...typed, studyDate: e.target.value })} required />
            </label>
          </fieldset>
        ) : (
          summary && (
            <dl className="facts" data-testid="study-facts">
              <dt>Patient</dt>
              <dd data-testid="patient-name">{displayName(summary.patientName) || "—"}</dd>
              <dt>Patient ID</dt>
              <dd data-testid="patient-id">{summary.patientId || "—"}</dd>
              <dt>Study date</dt>
              <dd data-testid="study-date">{displayDate(summary.studyDate) || "—"}</dd>
              <dt>Modality</dt>
              <dd data-testid="modality">{summary.modality || "—"}</dd>
              <dt>Description</dt>
              <dd data-testid="description">{summary.studyDescription || "—"}</dd>
            </dl>
          )
        )}
        {summary && summary.patientCount > 1 && (
          <p className="warning" role="alert">
            These files belong to {summary.patientCount} different patients. Check that you picked the right study; the first patient is shown.
          </p>
        )}
        {notPhotos.length > 0 && (
          <div className="error" role="alert" data-testid="not-photos">
            <strong>
              {notPhotos.length === 1 ? `${fileName(notPhotos[0]!)} is not a JPEG or PNG photo.` : `${notPhotos.length} files are not JPEG or PNG photos: ${notPhotos.map(fileName).join(", ")}.`}
            </strong>{" "}
            Go back and pick photos only (JPEG or PNG); send DICOM files with “DICOM files”.
          </div>
        )}
        <p className="note" data-testid="file-summary">
          {plural(picked.files.length, "file", "files")}, {formatBytes(totalSize)}
          {counts ? `: ${describeCounts(counts)}` : ""}
        </p>
        <label>
          Study name
          <input value={name} onChange={(e) => setStudyName(e.target.value)} placeholder="e.g. Chest X-ray" />
        </label>
        <label>
          Clinical notes
          <textarea value={notes} onChange={(e) => setNotes(e.target.value)} rows={3} />
        </label>
        <fieldset className="levels">
          <legend>Service level</legend>
          {SERVICE_LEVELS.map((l) => (
            <label key={l.value} className={level === l.value ? "level selected" : "level"}>
              <input
                type="radio"
                name="level"
                value={l.value}
                checked={level === l.value}
                onChange={() => {
                  setLevelChosen(true);
                  setLevel(l.value);
                }}
              />
              {l.label}
            </label>
          ))}
        </fieldset>
        <details open={picked.files.length <= 5}>
          <summary>Files</summary>
          <VirtualList
            label="Files"
            items={picked.files.map((f, i) => ({ f, info: picked.info?.[i] }))}
            rowHeight={28}
            height={240}
            render={({ f, info }) => (
              <div className="file-row" data-testid="file-row">
                {fileName(f)} · {info ? fileWords(info) : "…"} · {formatBytes(f.size)}
              </div>
            )}
          />
        </details>
        <ErrorBox error={error} />
        <div className="actions">
          <button type="button" onClick={onDone}>
            Back
          </button>
          <button className="primary" type="submit" disabled={busy || parsing || notPhotos.length > 0}>
            Send to PACS
          </button>
        </div>
      </form>
    </main>
  );
}

function fileWords(info: PickedFile): string {
  if (info.kind === "zip") return info.entries === null ? "ZIP archive, contents checked by the server" : `ZIP archive, ${plural(info.entries, "entry", "entries")}`;
  if (info.kind === "rar") return "RAR archive, contents checked by the server";
  if (info.kind === "other") return `not sent: ${info.reason}`;
  return KIND_WORDS[info.kind];
}

function duration(seconds: number): string {
  if (!isFinite(seconds) || seconds <= 0) return "";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.ceil(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function clock(ms: number | null | undefined): string {
  return ms ? new Date(ms).toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" }) : "";
}

/** The report's state for a delivered study, once a report exists (kept on the study). */
function useReportState(study: Study, online: boolean): void {
  const wanted = online && study.state === "completed" && study.uploadId !== null && study.summary !== undefined && study.summary !== null;
  useEffect(() => {
    if (!wanted) return;
    let live = true;
    signedInFetch<{ status: string }>(`/reports/upload/${study.uploadId}`).then(
      (report) => {
        // In the Reports screen's words ("Waiting for a radiologist", "Report ready").
        const words = reportStateWords(report.status);
        if (live && study.summary && words !== study.summary.report) {
          void db.studies.update(study.id!, { summary: { ...study.summary, report: words } });
        }
      },
      () => undefined, // no report (yet), or offline: nothing to show
    );
    return () => {
      live = false;
    };
  }, [wanted, study.id, study.uploadId, study.summary]);
}

/** "CT · Head · 2 series · 15 images · sent … · received …": nothing that names the patient. */
export function summaryWords(study: Study): string {
  const s = study.summary;
  if (!s) return `${study.fileCount} files · ${formatBytes(study.totalSize)}`;
  return [
    s.modality,
    s.series ? plural(s.series, "series", "series") : "",
    s.images ? plural(s.images, "image", "images") : "",
    s.skipped ? `${s.skipped} not sent` : "",
    s.sentAt ? `sent ${clock(s.sentAt)}` : "",
    s.receivedAt ? `received ${clock(s.receivedAt)}` : "",
    s.report,
  ]
    .filter(Boolean)
    .join(" · ");
}

function Verdicts({ study }: { study: Study }) {
  const files = study.serverFiles ?? [];
  if (!files.length) return null;
  return (
    <details className="verdicts" open={files.length <= 10}>
      <summary>{plural(files.length, "file was", "files were")} not sent</summary>
      <ul data-testid="verdicts">
        {files.map((f) => (
          <li key={`${f.verdict}:${f.name}`} data-verdict={f.verdict}>
            <span className="file-name">{f.name}</span>: {f.verdict === "rejected" ? "damaged, " : ""}
            {f.reason}
          </li>
        ))}
      </ul>
    </details>
  );
}

/** The choice a study with damaged files offers: send the sound files without them. */
function SendOthers({ study }: { study: Study }) {
  const rejected = (study.serverFiles ?? []).filter((f) => f.verdict === "rejected");
  const others = study.serverImages ?? 0;
  const names = new Set(rejected.map((f) => f.name));
  const series = [...new Set(study.files.filter((f) => names.has(f.name) && f.series).map((f) => f.series!))];
  return (
    <div className="choice-box" data-testid="send-others">
      <p>
        {rejected.length === 1 ? "1 file is damaged" : `${rejected.length} files are damaged`} and cannot be sent.{" "}
        {others > 0
          ? `The other ${plural(others, "file", "files")} can be sent without ${rejected.length === 1 ? "it" : "them"}; ${series.length ? `${series.join(", ")} will then be incomplete.` : "the series the damaged files belong to will then be incomplete."}`
          : "None of the other files can be sent either."}
      </p>
      <div className="actions">
        {others > 0 && (
          <button className="primary" onClick={() => void sendAgain(study, { allowPartial: true })}>
            Send the other {plural(others, "file", "files")}
          </button>
        )}
      </div>
    </div>
  );
}

/** What happened, then one sentence for what the app does: the hints of passing troubles
 * all say "it tries again by itself", which the time of the next try says better. */
function waitNoteWords(note: WaitNote): string {
  return `${note.message} The study stays on this device and the app tries again by itself at ${shownAsOf(note.retryAt)}, or now if you press Try now. Tell your administrator if this keeps happening.`;
}

function StudyCard({ study, online }: { study: Study; online: boolean }) {
  const preparing = study.state === "preparing";
  const done = preparing ? study.hashedBytes : study.bytesAcked;
  const percent = study.totalSize ? Math.floor((done / study.totalSize) * 100) : 100;
  const title = study.fields
    ? [study.studyName || study.fields.studyDescription || study.fields.modality || "Study", displayName(study.fields.patientName)].filter(Boolean).join(" · ")
    : study.summary
      ? [study.summary.studyDescription || (study.summary.modality ? `${study.summary.modality} study` : "Study"), clock(study.summary.sentAt ?? study.createdAt)].join(" · ")
      : `Study of ${new Date(study.createdAt).toLocaleDateString()}`;
  const uploading = study.state === "uploading" && online;
  const left = uploading && study.rate > 0 ? duration((study.totalSize - study.bytesAcked) / study.rate) : "";
  const [confirmCancel, setConfirmCancel] = useState(false);
  const cancelling = study.state === "cancelling";
  const over = study.state === "completed" || study.state === "cancelled";
  const recovery = recoveryOf(study);
  // The server answered the last try with a passing error: say so, and when the next is.
  // Past its time the engine is trying again (or another study's work goes first): no stale time.
  const waitNote = online && (study.state === "queued" || study.state === "uploading") && study.waitNote && study.waitNote.retryAt > Date.now() ? study.waitNote : null;
  useReportState(study, online);
  return (
    <li className={`study state-${study.state}`} data-testid="study" data-state={study.state}>
      <div className="study-head">
        <span className="study-title" data-testid="study-title">
          {title}
        </span>
        <span className="state" data-testid="study-state">
          {stateLabel(study.state, online)}
        </span>
      </div>
      {cancelling && (
        <p className="note" data-testid="cancel-note">
          {online
            ? "Asking the server to cancel this study. It stays on this device until the server confirms."
            : "The cancel is sent as soon as the network is back. Until the server confirms it, the study stays on this device."}
        </p>
      )}
      {!over && !cancelling && (
        <>
          <progress max={100} value={percent} aria-label="progress" />
          <div className="numbers">
            {formatBytes(done)} of {formatBytes(study.totalSize)} · {percent}%{uploading && study.rate > 0 ? ` · ${formatBytes(study.rate)}/s` : ""}
            {left ? ` · ${left} left` : ""}
          </div>
        </>
      )}
      {over && (
        <div className="numbers" data-testid="study-summary">
          {summaryWords(study)}
        </div>
      )}
      {waitNote && (
        <p className="note" data-testid="wait-note">
          {waitNoteWords(waitNote)}
        </p>
      )}
      {(study.state === "needs_attention" || ((study.state === "completed" || cancelling) && study.error)) && <ErrorBox error={study.error} />}
      {!over && <Verdicts study={study} />}
      {recovery === "send_others" && <SendOthers study={study} />}
      <div className="actions">
        {waitNote && <button onClick={tryUploadsNow}>Try now</button>}
        {(study.state === "uploading" || study.state === "queued") && <button onClick={() => void pauseStudy(study.id!)}>Pause</button>}
        {study.state === "paused" && <button onClick={() => void resumeStudy(study.id!)}>Resume</button>}
        {recovery === "send_anyway" && <button onClick={() => void retryStudy(study, { force: true })}>Send anyway</button>}
        {recovery === "confirm" && <button onClick={() => void retryStudy(study)}>Confirm and send</button>}
        {recovery === "retry" && <button onClick={() => void retryStudy(study)}>Retry</button>}
        {recovery === "send_again" && <button onClick={() => void sendAgain(study)}>Send again</button>}
        {!over && !cancelling && !confirmCancel && <button onClick={() => setConfirmCancel(true)}>Cancel</button>}
        {confirmCancel && !over && !cancelling && (
          <>
            <span>Cancel this study and delete it from this device?</span>
            <button
              className="danger"
              onClick={() => {
                setConfirmCancel(false);
                void cancelStudy(study.id!);
              }}
            >
              Yes, cancel it
            </button>
            <button onClick={() => setConfirmCancel(false)}>No</button>
          </>
        )}
        {over && (
          <button onClick={() => void dismissStudy(study.id!)} aria-label="Dismiss this study (the history keeps it)">
            Dismiss
          </button>
        )}
      </div>
    </li>
  );
}

function StorageUse() {
  const [text, setText] = useState("");
  const count = useLiveQuery(() => db.blobs.count(), []);
  useEffect(() => {
    void navigator.storage?.estimate?.().then((e) => {
      if (e.quota) setText(`Storage on this device: ${formatBytes(e.usage ?? 0)} used of ${formatBytes(e.quota)}`);
    });
  }, [count]);
  return text ? <p className="storage">{text}</p> : null;
}

/** What this account's start screen offers, once the server told its role and approval
 * (offline, or until then, the upload button stays: the server has the last word). */
function useHome(owner: string, online: boolean): Home | null {
  const [home, setHome] = useState<Home | null>(null);
  useEffect(() => {
    if (!online) return;
    let live = true;
    getProfile().then(
      (profile) => live && setHome(homeFor(profile)),
      () => undefined,
    );
    return () => {
      live = false;
    };
  }, [owner, online]);
  return home;
}

function InstallBanner() {
  const offer = useInstallOffer();
  if (!offer) return null;
  return (
    <div className="install-banner" role="region" aria-label="Add to home screen" data-testid="install-banner">
      <span>Open RelayPACS like an app, from the home screen.</span>
      <span className="actions">
        <button className="link" onClick={offer.install}>
          Add to home screen
        </button>
        <button className="link" onClick={offer.dismiss}>
          Not now
        </button>
      </span>
    </div>
  );
}

function Queue({ owner, online }: { owner: string; online: boolean }) {
  const all = useLiveQuery(() => db.studies.where("owner").equals(owner).reverse().sortBy("createdAt"), [owner]);
  const studies = all?.filter((s) => !s.dismissed);
  const [picked, setPicked] = useState<Picked | null>(null);
  const [signingOut, setSigningOut] = useState<LeftOnDevice | null>(null);
  const home = useHome(owner, online);
  const sends = home?.sends ?? true;
  const listsVersion = useListsVersion();

  async function onPick(files: File[], kind: Picked["kind"]) {
    const entry: Picked = { files, kind, info: null, parsed: 0 };
    setPicked(entry);
    const info = await readPickedFiles(files, (parsed) => setPicked((p) => (p === null ? p : { ...p, parsed })));
    setPicked((p) => (p && p.files === files ? { ...p, info } : p));
  }

  async function askSignOut() {
    const left = await leftOnDevice(owner);
    if (somethingLeft(left)) setSigningOut(left);
    else await doSignOut();
  }
  async function doSignOut(discard = false) {
    if (discard) await discardAll(owner);
    // Answers to the radiologist may describe the patient: none outlives the sign-out (the
    // warning said so when some were not sent yet).
    await repliesForget(owner);
    await reportsForget(owner);
    await statsForget(owner);
    liveFor(null);
    forgetLastId(owner);
    stopUploads();
    // This device's push subscription goes before the session does (never holding it up).
    await deviceForget();
    await signOut();
  }

  if (picked) return <Confirm owner={owner} picked={picked} onDone={() => setPicked(null)} />;
  return (
    <main className="screen">
      <div className="toolbar">
        <span className="user">{owner}</span>
        <div className="actions">
          {sends && <button onClick={() => navigate({ screen: "reports" })}>Reports</button>}
          {sends && <button onClick={() => navigate({ screen: "dashboard" })}>Dashboard</button>}
          <button onClick={() => navigate({ screen: "settings" })}>Settings</button>
          <button onClick={() => void askSignOut()}>Sign out</button>
        </div>
      </div>
      {signingOut !== null && (
        <div className="dialog" role="alertdialog" aria-label="Sign out">
          {leftWords(signingOut).map((line) => (
            <p key={line}>{line}</p>
          ))}
          <div className="actions">
            <button className="primary" onClick={() => setSigningOut(null)}>
              {leftChoices(signingOut).stay}
            </button>
            <button className="danger" onClick={() => void doSignOut(true)}>
              {leftChoices(signingOut).discard}
            </button>
          </div>
        </div>
      )}
      {home?.text && (
        <section className="home" data-testid="role-notice" role="status">
          <p>{home.text}</p>
          {home.link && (
            <a className="button-link" href={home.link.href}>
              {home.link.label}
            </a>
          )}
        </section>
      )}
      {sends && <UploadButton onPick={(f, k) => void onPick(f, k)} />}
      {sends && <PushOffer owner={owner} online={online} />}
      {(sends || (studies?.length ?? 0) > 0) && <h2>Studies</h2>}
      {sends && studies && studies.length === 0 && <p className="note">No studies yet. Press “Upload study” to send one.</p>}
      <ul className="studies">
        {studies?.map((s) => (
          <StudyCard key={s.id} study={s} online={online} />
        ))}
      </ul>
      <StorageUse />
      {sends && <History online={online} studies={all ?? []} refreshKey={`${listsVersion}:${all?.map((s) => `${s.id}:${s.state}:${s.uploadId ? 1 : 0}`).join() ?? ""}`} />}
      <InstallBanner />
    </main>
  );
}

export function App() {
  const session = useLiveQuery(() => currentSession().then((s) => s ?? null), []);
  const online = useOnline();
  const route = useRoute();
  // Restart the uploader only when the user or the session's validity changes, not on every
  // token refresh.
  const activeUser = session && !session.expired ? session.username : null;
  useEffect(() => {
    // At start-up: refused answers to the radiologist nobody sent again or discarded within
    // a week leave the device (they may describe the patient).
    void repliesExpire().catch(() => undefined);
  }, []);
  useEffect(() => {
    if (activeUser) {
      startUploads(activeUser);
      void resumePreparation(activeUser);
    } else stopUploads();
  }, [activeUser]);
  useEffect(() => {
    // The live stream while signed in and online: pushed states, notifications, toasts.
    liveFor(activeUser && online ? activeUser : null);
  }, [activeUser, online]);
  // A notification clicked opens its screen here; a push reloads the notifications.
  useEffect(() => followServiceWorker(activeUser !== null), [activeUser]);
  useEffect(() => {
    // Answers to radiologists' questions written offline go as soon as the network is back.
    if (activeUser && online) void repliesSend(activeUser).catch(() => undefined);
  }, [activeUser, online]);
  if (session === undefined) return null;
  return (
    <>
      <header className="bar">
        <span className="brand">RelayPACS</span>
        {activeUser && <NotificationsButton />}
      </header>
      {!online && (
        <div className="offline" role="status" data-testid="offline-banner">
          You are offline. Studies you add are kept on this device and sent when the network is back.
        </div>
      )}
      {!window.isSecureContext && (
        <div className="offline" role="status" data-testid="insecure-banner">
          {INSECURE_NOTICE}
        </div>
      )}
      <Screen route={route} user={activeUser} expiredUser={session?.expired ? session.username : undefined} online={online} />
      {activeUser && <Toasts />}
    </>
  );
}

function Screen({ route, user, expiredUser, online }: { route: ReturnType<typeof useRoute>; user: string | null; expiredUser?: string; online: boolean }) {
  // The pages an email links to open whether or not someone is signed in on this device.
  if (route.screen === "verify") return <VerifyEmail token={route.token} />;
  if (route.screen === "reset") return <ResetPassword uid={route.uid} token={route.token} />;
  if (user) {
    if (route.screen === "settings") return <Settings key={user} username={user} online={online} />;
    if (route.screen === "reports") return <Reports key={user} owner={user} online={online} focus={route.focus} />;
    if (route.screen === "dashboard") return <Dashboard key={user} owner={user} online={online} />;
    if (route.screen === "notifications") return <NotificationCentre online={online} />;
    if (route.screen === "study") return <StudyScreen key={route.uploadId} owner={user} uploadId={route.uploadId} online={online} />;
    return <Queue owner={user} online={online} />;
  }
  if (route.screen === "register") return <Register />;
  if (route.screen === "forgot") return <ForgotPassword />;
  return <SignIn expiredUser={expiredUser} />;
}

/** A study opened from a notification: its card when this device has it, and what the
 * server knows of it (state, size, times, error) either way. */
function StudyScreen({ owner, uploadId, online }: { owner: string; uploadId: string; online: boolean }) {
  const local = useLiveQuery(
    () =>
      db.studies
        .where("owner")
        .equals(owner)
        .filter((s) => s.uploadId === uploadId)
        .first()
        .then((s) => s ?? null),
    [owner, uploadId],
  );
  const [server, setServer] = useState<UploadStatus | null>(null);
  const [error, setError] = useState<UserError | null>(null);
  const state = local?.state;
  useEffect(() => {
    if (!online) {
      setError(STUDY_WORDS.offline);
      return;
    }
    let live = true;
    signedInFetch<UploadStatus>(`/upload/${uploadId}/status`).then(
      (status) => {
        if (!live) return;
        setServer(status);
        setError(null);
      },
      (e: unknown) => {
        if (!live) return;
        if (e instanceof ApiError && e.status === 404) setError(STUDY_WORDS.gone);
        else if (e instanceof ApiError && e.status === 0) setError(STUDY_WORDS.offline);
        else setError(toUserError(e));
      },
    );
    return () => {
      live = false;
    };
  }, [uploadId, online, state]);
  const serverState = server ? fromServerState(server.state) : null;
  const serverError = server?.error ? toUserError(new ApiError(0, server.error.code, server.error.message, server.error.hint ?? "")) : null;
  return (
    <main className="screen">
      <div className="toolbar">
        <h1>{STUDY_WORDS.title}</h1>
        <div className="actions">
          <button onClick={() => navigate({ screen: "notifications" })}>Notifications</button>
          <button onClick={() => navigate({ screen: "home" })}>Back to studies</button>
        </div>
      </div>
      {local && (
        <ul className="studies">
          <StudyCard study={local} online={online} />
        </ul>
      )}
      {local === null && server && <p className="note">{STUDY_WORDS.notOnDevice}</p>}
      {local === null && !server && !error && <p className="note">{STUDY_WORDS.loading}</p>}
      {server && (
        <dl className="facts" data-testid="server-study">
          <dt>State</dt>
          <dd data-testid="server-state">{serverState ? stateLabel(serverState, online) : server.state_label || server.state}</dd>
          <dt>Size</dt>
          <dd>{formatBytes(server.total_size)}</dd>
          {server.studies?.length ? (
            <>
              <dt>Images</dt>
              <dd>{server.studies.reduce((n, st) => n + st.instances, 0)}</dd>
            </>
          ) : null}
          {server.completed_at && (
            <>
              <dt>Received by the PACS</dt>
              <dd>{clock(Date.parse(server.completed_at))}</dd>
            </>
          )}
        </dl>
      )}
      {!local && serverError && <ErrorBox error={serverError} />}
      <ErrorBox error={error} />
    </main>
  );
}
