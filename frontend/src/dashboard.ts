/** The dashboard's figures (docs/analytics.md, `GET /api/v1/upload/stats`): fetched per
 * period, and the last answer of each period kept in IndexedDB for the offline "cached"
 * badge. The answer holds aggregate numbers only (counts, bytes, durations, rates, and
 * for administrators facility names): nothing about a patient or a single upload. The
 * charts' geometry is computed here, pure, so it is tested without a browser. */
import { signedInFetch } from "./account";
import { ApiError } from "./api";
import { db, type UserError } from "./db";
import { dashboardWords } from "./words";

export const PERIODS = ["1w", "2w", "1m", "3m", "6m", "all"] as const;
export type Period = (typeof PERIODS)[number];
// The server caches 60 s too: refreshing more often would show the same figures.
export const REFRESH_MS = 60_000;

export interface Figures {
  uploads: number;
  bytes: number;
  completed: number;
  failed: number;
  cancelled: number;
  in_progress: number;
  success_rate: number | null;
  average_upload_seconds: number | null;
}

export interface Stats {
  period: string;
  since: string | null;
  until: string;
  total_uploads: number;
  total_bytes: number;
  success_rate: number | null;
  average_upload_seconds: number | null;
  by_modality: (Figures & { modality: string })[];
  by_service_level: (Figures & { service_level: string })[];
  daily: (Figures & { date: string })[];
  generated_at: string;
  cached?: boolean;
}

function figuresOf(f: Figures): Figures {
  return {
    uploads: f.uploads,
    bytes: f.bytes,
    completed: f.completed,
    failed: f.failed,
    cancelled: f.cancelled,
    in_progress: f.in_progress,
    success_rate: f.success_rate,
    average_upload_seconds: f.average_upload_seconds,
  };
}

/** What the device keeps of an answer: the fields the dashboard draws, nothing else. */
export function keptStats(stats: Stats): Stats {
  return {
    period: stats.period,
    since: stats.since,
    until: stats.until,
    total_uploads: stats.total_uploads,
    total_bytes: stats.total_bytes,
    success_rate: stats.success_rate,
    average_upload_seconds: stats.average_upload_seconds,
    by_modality: stats.by_modality.map((f) => ({ modality: f.modality, ...figuresOf(f) })),
    by_service_level: stats.by_service_level.map((f) => ({ service_level: f.service_level, ...figuresOf(f) })),
    daily: stats.daily.map((f) => ({ date: f.date, ...figuresOf(f) })),
    generated_at: stats.generated_at,
  };
}

export interface KeptStats {
  owner: string;
  period: string;
  fetchedAt: number;
  stats: Stats;
}

/** Fetch the period's figures and keep them; throws an ApiError (offline too). */
export async function statsRefresh(owner: string, period: Period, now = Date.now()): Promise<Stats> {
  const stats = await signedInFetch<Stats>(`/upload/stats?period=${period}`);
  await db.dashboard.put({ owner, period, fetchedAt: now, stats: keptStats(stats) });
  return stats;
}

export function statsKept(owner: string, period: Period): Promise<KeptStats | undefined> {
  return db.dashboard.get([owner, period]);
}

export async function statsForget(owner: string): Promise<void> {
  await db.dashboard.where("owner").equals(owner).delete();
}

export function dashboardError(error: unknown): UserError {
  const code = error instanceof ApiError ? error.code : "app_error";
  return { code, ...dashboardWords(code) };
}

// ---- Words for the figures -------------------------------------------------------------

export function percent(rate: number | null): string {
  return rate === null ? "—" : `${(rate * 100).toFixed(rate >= 0.999 || rate === 0 ? 0 : 1)}%`;
}

export function seconds(value: number | null): string {
  if (value === null) return "—";
  if (value < 1) return "< 1 s";
  if (value < 90) return `${Math.round(value)} s`;
  if (value < 5400) return `${Math.round(value / 60)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

// ---- Chart geometry ---------------------------------------------------------------------

export interface Slice {
  label: string;
  value: number;
  /** SVG path of the slice in a circle of radius `r` centred at (r, r). */
  path: string;
  share: number;
}

/** Pie slices, largest first, the smallest beyond `max - 1` grouped as "Other". */
export function pieSlices(items: { label: string; value: number }[], r: number, max = 6): Slice[] {
  const sorted = items.filter((i) => i.value > 0).sort((a, b) => b.value - a.value);
  const shown = sorted.length > max ? [...sorted.slice(0, max - 1), { label: "Other", value: sorted.slice(max - 1).reduce((s, i) => s + i.value, 0) }] : sorted;
  const total = shown.reduce((s, i) => s + i.value, 0);
  let angle = -Math.PI / 2;
  return shown.map((item) => {
    const share = item.value / total;
    const start = angle;
    angle += share * 2 * Math.PI;
    const point = (a: number) => `${(r + r * Math.cos(a)).toFixed(2)} ${(r + r * Math.sin(a)).toFixed(2)}`;
    // A full circle cannot be one arc: two halves.
    const path =
      share >= 0.9999
        ? `M ${point(start)} A ${r} ${r} 0 1 1 ${point(start + Math.PI)} A ${r} ${r} 0 1 1 ${point(start)} Z`
        : `M ${r} ${r} L ${point(start)} A ${r} ${r} 0 ${share > 0.5 ? 1 : 0} 1 ${point(angle)} Z`;
    return { label: item.label, value: item.value, path, share };
  });
}

/** The trend line's points in a `width` × `height` box (y grows downwards), and its top. */
export function linePoints(values: number[], width: number, height: number): { points: string; top: number } {
  const top = Math.max(1, ...values);
  if (!values.length) return { points: "", top };
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - (v / top) * height).toFixed(1)}`).join(" ");
  return { points, top };
}
