/** The dashboard's figures (docs/analytics.md, `GET /api/v1/upload/stats`): fetched per
 * period and filters (facility for administrators, modality, service level), and the last
 * answer of each such view kept in IndexedDB for the offline "cached" badge; the CSV of
 * the same view (`/upload/stats/export`). The answer holds aggregate numbers only
 * (counts, bytes, durations, rates, and for administrators facility names): nothing about
 * a patient or a single upload. The charts' geometry is computed here, pure, so it is
 * tested without a browser. */
import { signedInFetch } from "./account";
import { API, ApiError, networkError } from "./api";
import { accessToken } from "./auth";
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

export interface FacilityFigures extends Figures {
  facility_id: number | null;
  facility_code: string | null;
  facility_name: string;
}

export interface Stats {
  period: string;
  scope?: "all_facilities" | "facility";
  since: string | null;
  until: string;
  total_uploads: number;
  total_bytes: number;
  success_rate: number | null;
  average_upload_seconds: number | null;
  by_modality: (Figures & { modality: string })[];
  by_service_level: (Figures & { service_level: string })[];
  daily: (Figures & { date: string })[];
  /** Administrators only: one row per facility. */
  by_facility?: FacilityFigures[];
  generated_at: string;
  cached?: boolean;
}

/** The API's filters; "" is no filter. */
export interface StatsFilters {
  facility: string;
  modality: string;
  service_level: string;
}

export const NO_FILTERS: StatsFilters = { facility: "", modality: "", service_level: "" };
export const SERVICE_LEVELS = ["routine", "urgent", "emergency", "stat"] as const;
// Offered before the figures name any: the modalities clinics send most.
export const COMMON_MODALITIES = ["CR", "CT", "DX", "MG", "MR", "NM", "US", "XC"];

/** The query string of a view: the period, then the filters that are set. */
export function statsQuery(period: Period, filters: StatsFilters): string {
  const query = new URLSearchParams({ period });
  for (const name of ["facility", "modality", "service_level"] as const) {
    if (filters[name]) query.set(name, filters[name]);
  }
  return query.toString();
}

/** The key a view is kept under: the period alone without filters (as before filters
 * existed), else the whole query, so that offline a filtered view never shows another
 * view's figures. */
export function viewKey(period: Period, filters: StatsFilters): string {
  const query = statsQuery(period, filters);
  return query === `period=${period}` ? period : query;
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
    ...(stats.by_facility && {
      scope: stats.scope,
      by_facility: stats.by_facility.map((f) => ({ facility_id: f.facility_id, facility_code: f.facility_code, facility_name: f.facility_name, ...figuresOf(f) })),
    }),
    generated_at: stats.generated_at,
  };
}

export interface KeptStats {
  owner: string;
  period: string;
  fetchedAt: number;
  stats: Stats;
}

/** Fetch the view's figures and keep them (``period`` of the kept row is the view's
 * key); throws an ApiError (offline too). */
export async function statsRefresh(owner: string, period: Period, filters: StatsFilters = NO_FILTERS, now = Date.now()): Promise<Stats> {
  const stats = await signedInFetch<Stats>(`/upload/stats?${statsQuery(period, filters)}`);
  // The facility filter's choices first: the kept row's arrival redraws the screen.
  if (stats.by_facility) facilitiesRemember(owner, stats.by_facility);
  await db.dashboard.put({ owner, period: viewKey(period, filters), fetchedAt: now, stats: keptStats(stats) });
  return stats;
}

export function statsKept(owner: string, period: Period, filters: StatsFilters = NO_FILTERS): Promise<KeptStats | undefined> {
  return db.dashboard.get([owner, viewKey(period, filters)]);
}

export async function statsForget(owner: string): Promise<void> {
  await db.dashboard.where("owner").equals(owner).delete();
  for (const key of [filtersKey(owner), facilitiesKey(owner)]) {
    try {
      localStorage.removeItem(key);
    } catch {
      // Nothing was kept.
    }
  }
}

/** The export of the view as CSV text, fetched with the access token (refreshed once if
 * refused); throws an ApiError (``network_unavailable`` offline). */
export async function statsCsv(period: Period, filters: StatsFilters): Promise<string> {
  const url = `${API}/upload/stats/export?${statsQuery(period, filters)}`;
  let response: Response | null = null;
  for (const fresh of [false, true]) {
    try {
      // JSON accepted too: the API negotiates with its JSON renderer (errors come as JSON).
      response = await fetch(url, { headers: { Accept: "text/csv, application/json;q=0.9", Authorization: `Bearer ${await accessToken(fresh)}` } });
    } catch {
      throw networkError();
    }
    if (response.status !== 401) break;
  }
  if (response && response.ok) return response.text();
  let error: { code?: string; message?: string; hint?: string } | undefined;
  try {
    error = ((await response?.json()) as { error?: typeof error }).error;
  } catch {
    // Not the API's error form: the words below.
  }
  const status = response?.status ?? 0;
  throw new ApiError(status, error?.code ?? `http_${status}`, error?.message ?? "The server did not send the CSV.", error?.hint ?? "Try again; if it keeps happening, tell your administrator.");
}

export function csvFileName(period: Period): string {
  return `relaypacs-upload-stats-${period}.csv`;
}

// ---- What the dashboard remembers between visits (this device, this account) -----------

function filtersKey(owner: string): string {
  return `relaypacs-dashboard-filters:${owner}`;
}

function facilitiesKey(owner: string): string {
  return `relaypacs-dashboard-facilities:${owner}`;
}

function readJson(key: string): unknown {
  try {
    return JSON.parse(localStorage.getItem(key) ?? "null");
  } catch {
    return null;
  }
}

function writeJson(key: string, value: unknown): void {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Not kept: the defaults next time.
  }
}

export function filtersStored(owner: string): StatsFilters {
  const value = readJson(filtersKey(owner)) as Partial<StatsFilters> | null;
  const text = (v: unknown) => (typeof v === "string" ? v : "");
  return { facility: text(value?.facility), modality: text(value?.modality), service_level: text(value?.service_level) };
}

export function filtersStore(owner: string, filters: StatsFilters): void {
  writeJson(filtersKey(owner), filters);
}

export interface FacilityChoice {
  code: string;
  name: string;
}

/** The facilities an administrator's answers named, for the facility filter (kept, so
 * that the list stays whole while one facility is chosen, and offline). */
export function facilitiesKnown(owner: string): FacilityChoice[] {
  const value = readJson(facilitiesKey(owner));
  return Array.isArray(value) ? (value as FacilityChoice[]).filter((f) => typeof f?.code === "string" && typeof f?.name === "string") : [];
}

function facilitiesRemember(owner: string, rows: FacilityFigures[]): void {
  const known = new Map(facilitiesKnown(owner).map((f) => [f.code, f]));
  for (const row of rows) if (row.facility_code) known.set(row.facility_code, { code: row.facility_code, name: row.facility_name });
  writeJson(
    facilitiesKey(owner),
    [...known.values()].sort((a, b) => a.name.localeCompare(b.name)),
  );
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
