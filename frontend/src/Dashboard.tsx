/** The dashboard of clinic staff and administrators (docs/analytics.md): four KPI cards,
 * the modality pie, service-level bars and the daily trend, for a period and filters
 * (facility for administrators, modality, service level), and for administrators a table
 * of the facilities; refreshed every minute; offline, the last figures this device loaded
 * for that view, marked "cached" with their time; "Download CSV" saves the view's export.
 * The charts are a few SVG elements drawn here (no chart library: Recharts would add about
 * 118 kB gzipped to an app of about 90 kB for three simple charts). */
import { useLiveQuery } from "dexie-react-hooks";
import { useEffect, useState } from "react";
import { saveFile } from "./account";
import { ApiError } from "./api";
import {
  COMMON_MODALITIES,
  csvFileName,
  dashboardError,
  facilitiesKnown,
  filtersStore,
  filtersStored,
  linePoints,
  NO_FILTERS,
  percent,
  PERIODS,
  pieSlices,
  REFRESH_MS,
  seconds,
  SERVICE_LEVELS,
  statsCsv,
  statsKept,
  statsRefresh,
  viewKey,
  type Period,
  type Stats,
  type StatsFilters,
} from "./dashboard";
import type { UserError } from "./db";
import { navigate } from "./router";
import { formatBytes } from "./studies";
import { ErrorBox, useHeadingFocus } from "./ui";
import { DASHBOARD_WORDS as W } from "./words";

const COLOURS = ["#0b5cad", "#1e7b34", "#c77700", "#7a3db8", "#b3261e", "#5b6470"];
const PERIOD_KEY = "relaypacs-dashboard-period";

function when(iso: string | number): string {
  const date = new Date(iso);
  return isNaN(date.getTime()) ? "" : date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}

function storedPeriod(): Period {
  try {
    const value = localStorage.getItem(PERIOD_KEY);
    return (PERIODS as readonly string[]).includes(value ?? "") ? (value as Period) : "1m";
  } catch {
    return "1m";
  }
}

function Kpi({ label, value, testid }: { label: string; value: string; testid: string }) {
  return (
    <div className="kpi" data-testid={testid}>
      <span className="kpi-value">{value}</span>
      <span className="kpi-label">{label}</span>
    </div>
  );
}

function Pie({ stats }: { stats: Stats }) {
  const r = 70;
  const slices = pieSlices(
    stats.by_modality.map((m) => ({ label: m.modality === "unknown" ? "Unknown" : m.modality, value: m.uploads })),
    r,
  );
  if (!slices.length) return <p className="note">{W.nothing}</p>;
  return (
    <div className="pie" data-testid="modality-pie">
      <svg viewBox={`0 0 ${2 * r} ${2 * r}`} width={2 * r} height={2 * r} role="img" aria-label={slices.map((s) => `${s.label}: ${s.value}`).join(", ")}>
        {slices.map((s, i) => (
          <path key={s.label} d={s.path} fill={COLOURS[i % COLOURS.length]} stroke="#fff" strokeWidth={1.5} />
        ))}
      </svg>
      <ul className="legend">
        {slices.map((s, i) => (
          <li key={s.label}>
            <span className="swatch" style={{ background: COLOURS[i % COLOURS.length] }} />
            {s.label} <strong>{s.value}</strong> <span className="note">{percent(s.share)}</span>
          </li>
        ))}
      </ul>
    </div>
  );
}

function Bars({ stats }: { stats: Stats }) {
  const rows = stats.by_service_level.filter((l) => l.uploads > 0);
  if (!rows.length) return <p className="note">{W.nothing}</p>;
  const top = Math.max(...rows.map((l) => l.uploads));
  return (
    <ul className="bars" data-testid="level-bars">
      {rows.map((l) => (
        <li key={l.service_level}>
          <span className="bar-label">{W.levels[l.service_level] ?? l.service_level}</span>
          <span className="bar-track">
            <span className="bar-fill" style={{ width: `${Math.max(2, (l.uploads / top) * 100)}%` }} />
          </span>
          <span className="bar-value">
            {l.uploads} · {percent(l.success_rate)}
          </span>
        </li>
      ))}
    </ul>
  );
}

function Trend({ stats }: { stats: Stats }) {
  const width = 320;
  const height = 100;
  const values = stats.daily.map((d) => d.uploads);
  const { points, top } = linePoints(values, width, height);
  if (!values.some((v) => v > 0)) return <p className="note">{W.nothing}</p>;
  const first = stats.daily[0]?.date ?? "";
  const last = stats.daily[stats.daily.length - 1]?.date ?? "";
  return (
    <figure className="trend" data-testid="trend">
      <svg viewBox={`-4 -4 ${width + 8} ${height + 8}`} preserveAspectRatio="none" role="img" aria-label={`${W.trend}: up to ${top} a day`}>
        <line x1={0} y1={height} x2={width} y2={height} stroke="#d7dce2" />
        <polyline points={points} fill="none" stroke="#0b5cad" strokeWidth={2} vectorEffect="non-scaling-stroke" />
      </svg>
      <figcaption className="trend-axis">
        <span>{first}</span>
        <span>max {top}/day</span>
        <span>{last}</span>
      </figcaption>
    </figure>
  );
}

function FacilityTable({ stats }: { stats: Stats }) {
  const rows = stats.by_facility ?? [];
  if (!rows.length) return <p className="note">{W.nothing}</p>;
  const C = W.facilityColumns;
  return (
    <div className="table-scroll">
      <table className="facility-table" data-testid="facility-table">
        <thead>
          <tr>
            <th scope="col">{C.facility}</th>
            <th scope="col">{C.uploads}</th>
            <th scope="col">{C.success}</th>
            <th scope="col">{C.average}</th>
            <th scope="col">{C.bytes}</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((f) => (
            <tr key={f.facility_id ?? "none"} data-testid="facility-row">
              <th scope="row">{f.facility_name}</th>
              <td>{f.uploads}</td>
              <td>{percent(f.success_rate)}</td>
              <td>{seconds(f.average_upload_seconds)}</td>
              <td>{formatBytes(f.bytes)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function Filters({ owner, stats, filters, onChange }: { owner: string; stats: Stats | null; filters: StatsFilters; onChange: (f: StatsFilters) => void }) {
  const admin = stats?.scope === "all_facilities" || Boolean(filters.facility);
  const facilities = facilitiesKnown(owner);
  if (filters.facility && !facilities.some((f) => f.code === filters.facility)) facilities.push({ code: filters.facility, name: filters.facility });
  const modalities = [...new Set([...COMMON_MODALITIES, ...(stats?.by_modality ?? []).map((m) => m.modality).filter((m) => m && m !== "unknown"), ...(filters.modality ? [filters.modality] : [])])].sort();
  const set = (name: keyof StatsFilters) => (e: React.ChangeEvent<HTMLSelectElement>) => onChange({ ...filters, [name]: e.target.value });
  const any = Boolean(filters.facility || filters.modality || filters.service_level);
  return (
    <fieldset className="filters" data-testid="filters">
      <legend>{W.filters}</legend>
      {admin && (
        <label>
          {W.facility}
          <select value={filters.facility} onChange={set("facility")}>
            <option value="">{W.everyFacility}</option>
            {facilities.map((f) => (
              <option key={f.code} value={f.code}>
                {f.name}
              </option>
            ))}
          </select>
        </label>
      )}
      <label>
        {W.modality}
        <select value={filters.modality} onChange={set("modality")}>
          <option value="">{W.everyModality}</option>
          {modalities.map((m) => (
            <option key={m} value={m}>
              {m}
            </option>
          ))}
        </select>
      </label>
      <label>
        {W.serviceLevel}
        <select value={filters.service_level} onChange={set("service_level")}>
          <option value="">{W.everyLevel}</option>
          {SERVICE_LEVELS.map((l) => (
            <option key={l} value={l}>
              {W.levels[l]}
            </option>
          ))}
        </select>
      </label>
      {any && (
        <button type="button" className="link" onClick={() => onChange(NO_FILTERS)}>
          {W.clearFilters}
        </button>
      )}
    </fieldset>
  );
}

export function Dashboard({ owner, online }: { owner: string; online: boolean }) {
  const heading = useHeadingFocus<HTMLHeadingElement>();
  const [period, setPeriod] = useState<Period>(storedPeriod);
  const [filters, setFilters] = useState<StatsFilters>(() => filtersStored(owner));
  const [error, setError] = useState<UserError | null>(null);
  const [loading, setLoading] = useState(false);
  const [tick, setTick] = useState(0);
  const [csvState, setCsvState] = useState<"idle" | "busy">("idle");
  const [csvError, setCsvError] = useState<string | null>(null);
  const view = viewKey(period, filters);
  const found = useLiveQuery(() => statsKept(owner, period, filters).then((k) => k ?? null), [owner, view]);
  // Until the new view's row is read, the query still holds the previous view's.
  const kept = found && found.period !== view ? undefined : found;
  useEffect(() => {
    if (!online) return;
    let live = true;
    setLoading(true);
    statsRefresh(owner, period, filters).then(
      () => live && setError(null),
      (e: unknown) => live && setError(dashboardError(e)),
    ).finally(() => live && setLoading(false));
    const timer = setInterval(() => setTick((t) => t + 1), REFRESH_MS);
    return () => {
      live = false;
      clearInterval(timer);
    };
    // `view` stands for period and filters.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [owner, view, online, tick]);

  function filter(next: StatsFilters) {
    setFilters(next);
    filtersStore(owner, next);
  }

  async function download() {
    setCsvError(null);
    if (!online) {
      setCsvError(W.downloadOffline);
      return;
    }
    setCsvState("busy");
    try {
      saveFile(csvFileName(period), await statsCsv(period, filters), "text/csv");
    } catch (e) {
      const offline = e instanceof ApiError && e.code === "network_unavailable";
      setCsvError(offline ? W.downloadOffline : W.downloadFailed(e instanceof ApiError ? e.message : dashboardError(e).message));
    } finally {
      setCsvState("idle");
    }
  }

  function choose(p: Period) {
    setPeriod(p);
    try {
      localStorage.setItem(PERIOD_KEY, p);
    } catch {
      // Not kept: the default next time.
    }
  }

  const stats = kept?.stats ?? null;
  const unreachable = !online || error?.code === "network_unavailable";
  return (
    <main className="screen">
      <div className="toolbar">
        <h1 ref={heading} tabIndex={-1}>
          {W.title}
        </h1>
        <div className="actions">
          <button onClick={() => setTick((t) => t + 1)} disabled={!online || loading}>
            {W.refresh}
          </button>
          <button onClick={() => void download()} disabled={csvState === "busy"}>
            {csvState === "busy" ? W.downloading : W.download}
          </button>
          <button onClick={() => navigate({ screen: "home" })}>{W.back}</button>
        </div>
      </div>
      {csvError && (
        <p className="error" role="alert" data-testid="csv-error">
          {csvError}
        </p>
      )}
      <div className="periods" role="group" aria-label="Period">
        {PERIODS.map((p) => (
          <button key={p} className={p === period ? "period selected" : "period"} aria-pressed={p === period} onClick={() => choose(p)}>
            {W.periods[p]}
          </button>
        ))}
      </div>
      <Filters owner={owner} stats={stats} filters={filters} onChange={filter} />
      {unreachable && kept && (
        <p className="cached-badge" role="status" data-testid="cached-badge">
          {W.cached(when(kept.fetchedAt))}
        </p>
      )}
      {unreachable && kept === null && (
        <p className="note" role="status" data-testid="cached-badge">
          {W.noCache}
        </p>
      )}
      {error && error.code !== "network_unavailable" && <ErrorBox error={error} />}
      {stats && (
        <>
          <div className="kpis">
            <Kpi testid="kpi-uploads" label={W.uploads} value={String(stats.total_uploads)} />
            <Kpi testid="kpi-success" label={W.success} value={percent(stats.success_rate)} />
            <Kpi testid="kpi-average" label={W.average} value={seconds(stats.average_upload_seconds)} />
            <Kpi testid="kpi-volume" label={W.volume} value={formatBytes(stats.total_bytes)} />
          </div>
          <section className="section">
            <h2>{W.byModality}</h2>
            <Pie stats={stats} />
          </section>
          <section className="section">
            <h2>{W.byLevel}</h2>
            <Bars stats={stats} />
          </section>
          <section className="section">
            <h2>{W.trend}</h2>
            <Trend stats={stats} />
          </section>
          {stats.by_facility && (
            <section className="section">
              <h2>{W.byFacility}</h2>
              <FacilityTable stats={stats} />
            </section>
          )}
          {!unreachable && <p className="note">{W.updated(when(stats.generated_at))}</p>}
        </>
      )}
    </main>
  );
}
