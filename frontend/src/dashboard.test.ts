/** The dashboard's figures: what the device keeps (aggregates only), the words of the
 * KPI cards, and the charts' geometry. */
import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ApiError } from "./api";
import {
  facilitiesKnown,
  filtersStore,
  filtersStored,
  keptStats,
  linePoints,
  NO_FILTERS,
  percent,
  pieSlices,
  seconds,
  statsCsv,
  statsForget,
  statsKept,
  statsQuery,
  statsRefresh,
  viewKey,
  type Stats,
} from "./dashboard";
import { db } from "./db";
import { OWNER, signInOnDevice } from "./testkit";

const figures = { uploads: 4, bytes: 100, completed: 3, failed: 1, cancelled: 0, in_progress: 0, success_rate: 0.75, average_upload_seconds: 12.5 };

function answer(): Stats & Record<string, unknown> {
  return {
    period: "1m",
    since: "2026-11-02",
    until: "2026-12-01",
    total_uploads: 4,
    total_bytes: 100,
    success_rate: 0.75,
    average_upload_seconds: 12.5,
    by_modality: [{ modality: "CT", ...figures, extra: "x" } as Stats["by_modality"][number]],
    by_service_level: [{ service_level: "urgent", ...figures }],
    daily: [{ date: "2026-12-01", ...figures }],
    scope: "all_facilities",
    by_facility: [{ facility_id: 3, facility_code: "north", facility_name: "North Clinic", ...figures, extra: "y" } as NonNullable<Stats["by_facility"]>[number]],
    network: { outages: 2 },
    generated_at: "2026-12-01T15:20:03Z",
    cached: false,
  };
}

describe("the dashboard's figures", () => {
  beforeEach(async () => {
    await Promise.all([db.dashboard.clear(), db.auth.clear()]);
    await signInOnDevice();
    // The browser's localStorage (Node has none).
    const store = new Map<string, string>();
    vi.stubGlobal("localStorage", { getItem: (k: string) => store.get(k) ?? null, setItem: (k: string, v: string) => store.set(k, v), removeItem: (k: string) => store.delete(k) });
  });
  afterEach(() => vi.unstubAllGlobals());

  it("keeps the last answer per period and filters, with only the numbers it draws", async () => {
    const calls: string[] = [];
    vi.stubGlobal("fetch", async (url: string) => {
      calls.push(String(url));
      return new Response(JSON.stringify(answer()), { status: 200, headers: { "Content-Type": "application/json" } });
    });
    await statsRefresh(OWNER, "1m", NO_FILTERS, 1000);
    const ct = { ...NO_FILTERS, modality: "CT", service_level: "urgent" };
    await statsRefresh(OWNER, "1m", ct, 2000);
    expect(calls).toEqual(["/api/v1/upload/stats?period=1m", "/api/v1/upload/stats?period=1m&modality=CT&service_level=urgent"]);
    const kept = await statsKept(OWNER, "1m");
    expect(kept?.fetchedAt).toBe(1000);
    expect(kept?.stats.total_uploads).toBe(4);
    expect((await statsKept(OWNER, "1m", ct))?.fetchedAt).toBe(2000);
    expect(await statsKept(OWNER, "1m", { ...ct, service_level: "" })).toBeUndefined();
    const text = JSON.stringify(kept);
    expect(text).not.toContain("extra");
    expect(text).not.toContain("outages");
    expect(await statsKept(OWNER, "1w")).toBeUndefined();
    // The administrator's facilities are remembered for the facility filter.
    expect(facilitiesKnown(OWNER)).toEqual([{ code: "north", name: "North Clinic" }]);
    filtersStore(OWNER, ct);
    expect(filtersStored(OWNER)).toEqual(ct);
    await statsForget(OWNER);
    expect(await statsKept(OWNER, "1m")).toBeUndefined();
    expect(await statsKept(OWNER, "1m", ct)).toBeUndefined();
    expect(filtersStored(OWNER)).toEqual(NO_FILTERS);
    expect(facilitiesKnown(OWNER)).toEqual([]);
  });

  it("keeps exactly the fields of the charts and the facility table", () => {
    const kept = keptStats(answer());
    expect(Object.keys(kept).sort()).toEqual(["average_upload_seconds", "by_facility", "by_modality", "by_service_level", "daily", "generated_at", "period", "scope", "since", "success_rate", "total_bytes", "total_uploads", "until"]);
    expect(kept.by_modality[0]).toEqual({ modality: "CT", ...figures });
    expect(kept.by_facility?.[0]).toEqual({ facility_id: 3, facility_code: "north", facility_name: "North Clinic", ...figures });
    const staff = keptStats({ ...answer(), scope: "facility", by_facility: undefined });
    expect("by_facility" in staff || "scope" in staff).toBe(false);
  });

  it("names a view by its period and the filters that are set", () => {
    expect(statsQuery("1w", NO_FILTERS)).toBe("period=1w");
    expect(viewKey("1w", NO_FILTERS)).toBe("1w");
    const f = { facility: "north clinic", modality: "", service_level: "stat" };
    expect(statsQuery("all", f)).toBe("period=all&facility=north+clinic&service_level=stat");
    expect(viewKey("all", f)).toBe("period=all&facility=north+clinic&service_level=stat");
  });

  it("fetches the CSV of the view with the access token, and says why it could not", async () => {
    const asked: [string, string | null][] = [];
    vi.stubGlobal("fetch", async (url: string, init: RequestInit) => {
      asked.push([String(url), new Headers(init.headers).get("Authorization")]);
      return new Response("date,facility\r\n2026-12-01,north\r\n", { status: 200, headers: { "Content-Type": "text/csv" } });
    });
    expect(await statsCsv("1m", { ...NO_FILTERS, facility: "north" })).toBe("date,facility\r\n2026-12-01,north\r\n");
    expect(asked[0]![0]).toBe("/api/v1/upload/stats/export?period=1m&facility=north");
    expect(asked[0]![1]).toMatch(/^Bearer .+/);

    vi.stubGlobal("fetch", async () => {
      throw new TypeError("Failed to fetch");
    });
    await expect(statsCsv("1m", NO_FILTERS)).rejects.toMatchObject({ code: "network_unavailable" });

    vi.stubGlobal("fetch", async () => new Response(JSON.stringify({ error: { code: "permission_denied", message: "You can see the statistics of your own facility only.", hint: "" } }), { status: 403 }));
    const refused = await statsCsv("1m", NO_FILTERS).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ApiError);
    expect((refused as ApiError).message).toBe("You can see the statistics of your own facility only.");
  });

  it("words the KPI values", () => {
    expect(percent(null)).toBe("—");
    expect(percent(1)).toBe("100%");
    expect(percent(0.9851)).toBe("98.5%");
    expect(seconds(null)).toBe("—");
    expect(seconds(0.4)).toBe("< 1 s");
    expect(seconds(42.4)).toBe("42 s");
    expect(seconds(184.2)).toBe("3 min");
    expect(seconds(7200)).toBe("2.0 h");
  });

  it("draws pie slices largest first, groups the smallest as Other, and a lone slice as a full circle", () => {
    const slices = pieSlices(
      [
        { label: "MR", value: 1 },
        { label: "CT", value: 3 },
        { label: "XC", value: 0 },
      ],
      50,
    );
    expect(slices.map((s) => [s.label, s.share])).toEqual([
      ["CT", 0.75],
      ["MR", 0.25],
    ]);
    expect(slices[0]!.path.startsWith("M 50 50 L 50.00 0.00 A 50 50 0 1 1")).toBe(true);
    const many = pieSlices("ABCDEFGH".split("").map((label, i) => ({ label, value: 10 - i })), 50, 4);
    expect(many.map((s) => s.label)).toEqual(["A", "B", "C", "Other"]);
    expect(many[3]!.value).toBe(7 + 6 + 5 + 4 + 3);
    const one = pieSlices([{ label: "CT", value: 5 }], 50);
    expect(one[0]!.path.split(" A ").length).toBe(3);
  });

  it("puts the trend line in its box, the busiest day at the top", () => {
    expect(linePoints([0, 2, 4], 100, 50)).toEqual({ points: "0.0,50.0 50.0,25.0 100.0,0.0", top: 4 });
    expect(linePoints([], 100, 50)).toEqual({ points: "", top: 1 });
    expect(linePoints([0, 0], 100, 50).points).toBe("0.0,50.0 100.0,50.0");
  });
});
