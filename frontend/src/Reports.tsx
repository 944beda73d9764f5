/** The Reports screen of the sending clinic: each sent study's report in words, its PDF when
 * ready (fetched when opened, never kept), the radiologist's question with the answer box
 * and "Add images". What was loaded stays readable offline, marked with when it was loaded. */
import { useLiveQuery } from "dexie-react-hooks";
import { useEffect, useRef, useState, type FormEvent } from "react";
import { db, type CachedReport, type QueuedReply, type ServiceLevel, type UserError } from "./db";
import { newestFirst, PDF_URL_LIFETIME_MS, QUESTION_OPEN, replyDiscard, replyQueue, replyRetry, repliesSend, reportError, reportPdf, reportsRefresh, shownAsOf } from "./reports";
import { navigate } from "./router";
import { requestBackgroundSync } from "./runtime";
import { queueStudy } from "./studies";
import { ErrorBox, Notice, useHeadingFocus } from "./ui";
import { reportStateWords } from "./words";

const LEVELS: Record<string, string> = { urgent: "Urgent", emergency: "Emergency", stat: "STAT" };

function day(ms: number): string {
  return ms ? new Date(ms).toLocaleString([], { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" }) : "";
}

function titleOf(report: CachedReport): string {
  return report.studyDescription || (report.modality ? `${report.modality} study` : "Study");
}

/** Open the report's PDF in a new tab: the tab is opened in the tap itself (a tab opened
 * after the download would be a blocked pop-up), then shown the PDF from memory. The
 * object URL is revoked once the tab had time to load it; when no tab could be opened,
 * the card offers a link to tap instead, revoked the same way. */
function usePdf(reportId: number) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<UserError | null>(null);
  const [fallback, setFallback] = useState<string | null>(null);
  const urls = useRef(new Set<string>());
  useEffect(() => {
    const open = urls.current;
    return () => {
      for (const url of open) URL.revokeObjectURL(url);
      open.clear();
    };
  }, []);
  async function openPdf() {
    setError(null);
    setFallback(null);
    const tab = window.open("", "_blank");
    if (tab) tab.document.title = "Report";
    setBusy(true);
    try {
      const url = URL.createObjectURL(await reportPdf(reportId));
      urls.current.add(url);
      setTimeout(() => {
        URL.revokeObjectURL(url);
        urls.current.delete(url);
        setFallback((f) => (f === url ? null : f));
      }, PDF_URL_LIFETIME_MS);
      if (tab && !tab.closed) tab.location.href = url;
      else setFallback(url);
    } catch (e) {
      tab?.close();
      setError(reportError(e));
    } finally {
      setBusy(false);
    }
  }
  return { busy, error, fallback, openPdf };
}

function Question({ owner, report, reply, online }: { owner: string; report: CachedReport; reply: QueuedReply | undefined; online: boolean }) {
  const [answer, setAnswer] = useState("");
  const [error, setError] = useState<UserError | null>(null);
  const [added, setAdded] = useState("");
  async function send(event: FormEvent) {
    event.preventDefault();
    setError(null);
    try {
      await replyQueue({ owner, reportId: report.id, answer });
      setAnswer("");
      // Sent by the service worker when the network is back, even with the app closed.
      void requestBackgroundSync();
    } catch (e) {
      setError(reportError(e));
    }
  }
  async function addImages(files: File[], photos: boolean) {
    setError(null);
    setAdded("");
    try {
      await queueStudy({
        owner,
        files,
        // Photos are converted on the server; the patient comes from the report as the
        // upload starts (uploader.ts), so it is not stored here. DICOM files carry their own.
        // The description here names the card on this device only: the server gets the
        // report's own, so the study keeps one description in the PACS.
        fields: { patientName: "", patientId: "", patientBirthDate: "", patientSex: "", studyDate: "", modality: photos ? "XC" : "", studyDescription: `Images for: ${titleOf(report)}`, accessionNumber: "" },
        studyName: "",
        clinicalNotes: "",
        serviceLevel: (report.serviceLevel || "routine") as ServiceLevel,
        addTo: { reportId: report.id },
      });
      const one = files.length === 1;
      setAdded(
        `${one ? "1 image is" : `${files.length} images are`} queued for this study. ${one ? "It is" : "They are"} ${online ? "being sent" : "sent when the network is back"}; the main screen shows the progress.`,
      );
    } catch (e) {
      setError(reportError(e));
    }
  }
  const pick = (photos: boolean) => (e: React.ChangeEvent<HTMLInputElement>) => {
    const files = Array.from(e.target.files ?? []);
    e.target.value = "";
    if (files.length) void addImages(files, photos);
  };
  return (
    <div className="question">
      {report.question && (
        <blockquote data-testid="report-question">
          <span className="question-label">The radiologist asks:</span> {report.question}
        </blockquote>
      )}
      {reply?.state === "queued" && (
        <div data-testid="reply-queued">
          <p className="note">Your answer: “{reply.answer}”</p>
          <p className="note" role="status">
            {online ? "Sending your answer…" : "Your answer is saved on this device and is sent as soon as the network is back."}
          </p>
        </div>
      )}
      {reply?.state === "refused" && (
        <div data-testid="reply-refused">
          <ErrorBox error={reply.error} />
          <p className="note">Your answer: “{reply.answer}”</p>
          <div className="actions">
            <button onClick={() => void replyRetry(reply)}>Send again</button>
            <button onClick={() => void replyDiscard(reply.id!)}>Discard the answer</button>
          </div>
        </div>
      )}
      {!reply && (
        <form className="form" onSubmit={(e) => void send(e)}>
          <label>
            Your answer
            <textarea name="answer" rows={3} value={answer} onChange={(e) => setAnswer(e.target.value)} required />
          </label>
          <ErrorBox error={error} />
          <div className="actions">
            <button className="primary" type="submit" disabled={!answer.trim()}>
              Send the answer
            </button>
          </div>
        </form>
      )}
      <details className="add-images">
        <summary>Add images</summary>
        <p className="note">Photos or DICOM files of this study: they join it in the PACS and the radiologist sees them with the report.</p>
        <div className="choices">
          <label className="choice">
            Photos
            <input type="file" multiple accept="image/jpeg,image/png" capture="environment" data-testid="add-photos" onChange={pick(true)} />
          </label>
          <label className="choice">
            DICOM files
            <input type="file" multiple data-testid="add-dicom" onChange={pick(false)} />
          </label>
        </div>
      </details>
      {reply && <ErrorBox error={error} />}
      <Notice>{added}</Notice>
    </div>
  );
}

function ReportCard({ owner, report, reply, online, focused = false }: { owner: string; report: CachedReport; reply: QueuedReply | undefined; online: boolean; focused?: boolean }) {
  const pdf = usePdf(report.id);
  const final = report.status === "ready" || report.status === "amended";
  return (
    <li className={`report report-${report.status}${focused ? " focused" : ""}`} data-testid="report" data-report-id={report.id} data-status={report.status}>
      <div className="study-head">
        <span className="study-title">{titleOf(report)}</span>
        <span className="state" data-testid="report-state">
          {reportStateWords(report.status)}
        </span>
      </div>
      <div className="numbers">{[report.modality, LEVELS[report.serviceLevel] ?? "", report.createdAt ? `received ${day(report.createdAt)}` : ""].filter(Boolean).join(" · ")}</div>
      {final && report.pdf && (
        <div className="actions">
          <button className="primary" onClick={() => void pdf.openPdf()} disabled={!online || pdf.busy}>
            {pdf.busy ? "Opening the report…" : "Open the report (PDF)"}
          </button>
          {!online && <span className="note">Opening the report needs the network: it is not kept on this device.</span>}
          {pdf.fallback && (
            <a className="button-link" href={pdf.fallback} target="_blank" rel="noopener">
              Show the PDF
            </a>
          )}
        </div>
      )}
      <ErrorBox error={pdf.error} />
      {(report.status === QUESTION_OPEN || reply) && <Question owner={owner} report={report} reply={reply} online={online} />}
    </li>
  );
}

export function Reports({ owner, online, focus }: { owner: string; online: boolean; focus?: number }) {
  const heading = useHeadingFocus<HTMLHeadingElement>();
  const rows = useLiveQuery(() => db.reports.where("owner").equals(owner).toArray(), [owner]);
  const view = useLiveQuery(() => db.reportViews.get(owner), [owner]);
  const replies = useLiveQuery(() => db.replies.where("owner").equals(owner).toArray(), [owner]);
  const [error, setError] = useState<UserError | null>(null);
  const [loading, setLoading] = useState(false);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    if (!online) return;
    let live = true;
    setLoading(true);
    void (async () => {
      try {
        await repliesSend(owner);
        await reportsRefresh(owner);
        if (live) setError(null);
      } catch (e) {
        if (live) setError(reportError(e));
      } finally {
        if (live) setLoading(false);
      }
    })();
    return () => {
      live = false;
    };
  }, [owner, online, tick]);

  const reports = rows ? newestFirst(rows) : [];
  const focused = focus !== undefined && reports.some((r) => r.id === focus);
  useEffect(() => {
    // Opened from a notification: bring its report's card into view.
    if (focused) document.querySelector(`[data-report-id="${focus}"]`)?.scrollIntoView({ block: "center" });
  }, [focused, focus]);
  const unreachable = !online || error?.code === "network_unavailable";
  const byReport = new Map((replies ?? []).map((r) => [r.reportId, r]));
  return (
    <main className="screen">
      <div className="toolbar">
        <h1 ref={heading} tabIndex={-1}>
          Reports
        </h1>
        <div className="actions">
          <button onClick={() => setTick((t) => t + 1)} disabled={!online || loading}>
            {loading ? "Refreshing…" : "Refresh"}
          </button>
          <button onClick={() => navigate({ screen: "home" })}>Back to studies</button>
        </div>
      </div>
      {unreachable && view && (
        <p className="offline-mark" role="status" data-testid="reports-offline">
          Offline — shown as of {shownAsOf(view.fetchedAt)}. Reports and answers are brought up to date when the network is back.
        </p>
      )}
      {unreachable && !view && (
        <p className="note" role="status" data-testid="reports-offline">
          You are offline, and this device has not loaded the reports yet. Connect to the network to see them.
        </p>
      )}
      {error && error.code !== "network_unavailable" && <ErrorBox error={error} />}
      {view && rows && reports.length === 0 && <p className="note">No reports yet: a study's report appears here once the PACS has received it.</p>}
      <ul className="studies" data-testid="reports">
        {reports.map((r) => (
          <ReportCard key={r.id} owner={owner} report={r} reply={byReport.get(r.id)} online={online} focused={r.id === focus} />
        ))}
      </ul>
      <p className="note privacy">This device keeps only each report's state and what tells the studies apart; the PDF is downloaded each time it is opened and not kept.</p>
    </main>
  );
}
