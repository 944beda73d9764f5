/** The account's uploads as the server knows them (GET /uploads): nothing that identifies a
 * patient, so it can be shown on a shared device, with the non-identifying summary this
 * device kept of each (modality, description, counts, times). Uploads the server can still
 * send again can be retried here; the others are sent again from their card. */
import { useEffect, useState } from "react";
import { apiFetch } from "./api";
import { accessToken } from "./auth";
import type { Study, UserError } from "./db";
import { fromServerState, stateLabel } from "./queueState";
import { formatBytes, SERVER_RETRIES } from "./studies";
import { toUserError } from "./uploader";
import { plainError } from "./words";

interface ServerUpload {
  upload_id: string;
  state: string;
  total_size: number;
  service_level: string;
  created_at: string;
  completed_at: string | null;
  error: { code: string; message: string; hint: string } | null;
}

interface Page {
  results: ServerUpload[];
}

const LABELS: Record<string, string> = { receiving: "Uploading", waiting_for_pacs: "Waiting for PACS" };

function localSummary(study: Study | undefined): string {
  const s = study?.summary;
  if (!s) return "";
  return [s.studyDescription, s.modality, s.series ? `${s.series} series` : "", s.images ? `${s.images} images` : "", s.report].filter(Boolean).join(" · ");
}

export function History({ online, refreshKey, studies = [] }: { online: boolean; refreshKey: string; studies?: Study[] }) {
  const [uploads, setUploads] = useState<ServerUpload[] | null>(null);
  const [error, setError] = useState<UserError | null>(null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    if (!online) return;
    let stale = false;
    void (async () => {
      try {
        const page = await apiFetch<Page>("/uploads", { token: await accessToken() });
        if (!stale) {
          setUploads(page.results.slice(0, 20));
          setError(null);
        }
      } catch (e) {
        if (!stale) setError(toUserError(e));
      }
    })();
    return () => {
      stale = true;
    };
  }, [online, refreshKey, tick]);

  async function retry(id: string) {
    try {
      await apiFetch(`/upload/${id}/retry`, { method: "POST", token: await accessToken() });
      setTick((t) => t + 1);
    } catch (e) {
      setError(toUserError(e));
    }
  }

  if (!online) return null;
  const kept = new Map(studies.filter((s) => s.uploadId).map((s) => [s.uploadId!, s]));
  return (
    <section className="history" aria-label="History">
      <h2>History</h2>
      {error && (
        <div className="error" role="alert">
          <strong>{error.message}</strong> {error.hint}
        </div>
      )}
      {uploads && uploads.length === 0 && <p className="note">Nothing sent from this account yet.</p>}
      <ul className="history-list">
        {uploads?.map((u) => {
          const local = fromServerState(u.state);
          const label = LABELS[u.state] ?? (local ? stateLabel(local, true) : u.state);
          const summary = localSummary(kept.get(u.upload_id));
          const error = u.error ? plainError({ code: u.error.code, message: u.error.message, hint: u.error.hint ?? "" }) : null;
          return (
            <li key={u.upload_id} data-testid="history-item">
              {summary && <span className="history-summary">{summary}</span>}
              <span>sent {new Date(u.created_at).toLocaleString()}</span>
              {u.completed_at && <span>received {new Date(u.completed_at).toLocaleString()}</span>}
              <span>{formatBytes(u.total_size)}</span>
              <span className={`state-${local ?? "other"}`}>{label}</span>
              {u.state === "failed" && error && <span className="history-error">{error.message}</span>}
              {u.state === "failed" && SERVER_RETRIES.has(u.error?.code ?? "") && <button onClick={() => void retry(u.upload_id)}>Retry</button>}
            </li>
          );
        })}
      </ul>
    </section>
  );
}
