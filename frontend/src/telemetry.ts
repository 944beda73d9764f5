/** The network one upload saw, as the app measured it, for the statistics' network figures
 * (`POST /api/v1/upload/{id}/telemetry`, docs/upload-api.md and docs/analytics.md): bytes
 * of chunks sent (retries included), seconds spent sending, times the network went away,
 * seconds without it, and chunk requests sent again. Aggregate numbers only, nothing of the
 * patient; kept in memory for the upload (a reload starts a new measure) and sent once,
 * best effort: a failure is ignored and never touches the upload. */
import { ApiError, apiFetch } from "./api";
import { accessToken } from "./auth";
import { sleep } from "./backoff";

export interface NetworkReport {
  bytes_sent: number;
  active_seconds: number;
  outages: number;
  offline_seconds: number;
  retried_chunks: number;
}

export class NetworkMeter {
  private bytesSent = 0;
  private activeMs = 0;
  private outages = 0;
  private offlineMs = 0;
  private retried = 0;
  private activeSince: number | null = null;
  private offlineSince: number | null = null;
  private readonly tried = new Set<number>();

  /** Chunks start going (online again, if it was offline). */
  sending(now = Date.now()): void {
    this.online(now);
    this.activeSince ??= now;
  }

  /** Chunks stop going (all sent, paused, cut off). */
  idle(now = Date.now()): void {
    if (this.activeSince !== null) this.activeMs += Math.max(0, now - this.activeSince);
    this.activeSince = null;
  }

  /** The network went away (offline, server unreachable): one outage until it is back. */
  offline(now = Date.now()): void {
    this.idle(now);
    if (this.offlineSince !== null) return;
    this.offlineSince = now;
    this.outages += 1;
  }

  online(now = Date.now()): void {
    if (this.offlineSince !== null) this.offlineMs += Math.max(0, now - this.offlineSince);
    this.offlineSince = null;
  }

  /** A chunk request went out with `bytes`: a retry when chunk `index` was sent before. */
  chunkSent(index: number, bytes: number): void {
    this.bytesSent += bytes;
    if (this.tried.has(index)) this.retried += 1;
    else this.tried.add(index);
  }

  report(now = Date.now()): NetworkReport {
    const active = this.activeMs + (this.activeSince !== null ? Math.max(0, now - this.activeSince) : 0);
    const offline = this.offlineMs + (this.offlineSince !== null ? Math.max(0, now - this.offlineSince) : 0);
    return {
      bytes_sent: this.bytesSent,
      active_seconds: Math.round(active) / 1000,
      outages: this.outages,
      offline_seconds: Math.round(offline) / 1000,
      retried_chunks: this.retried,
    };
  }
}

/** Wait before the one second try, when the first failed on the way. */
export const TELEMETRY_RETRY_MS = 2000;

/** Send the upload's figures: with its upload token, once more (the access token after a
 * 401, or after a pause when the network failed). Never throws; true when the server took it. */
export async function telemetrySend(uploadId: string, uploadToken: string | null, report: NetworkReport, signal?: AbortSignal): Promise<boolean> {
  const path = `/upload/${uploadId}/telemetry`;
  try {
    await apiFetch(path, { method: "POST", token: uploadToken, json: report, signal });
    return true;
  } catch (error) {
    if (!(error instanceof ApiError) || !(error.status === 401 || error.transient)) return false;
    try {
      if (error.status !== 401) await sleep(TELEMETRY_RETRY_MS, signal);
      if (signal?.aborted) return false;
      await apiFetch(path, { method: "POST", token: error.status === 401 ? await accessToken() : uploadToken, json: report, signal });
      return true;
    } catch {
      return false;
    }
  }
}
