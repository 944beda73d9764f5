import "fake-indexeddb/auto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { accessToken } from "./auth";
import { db } from "./db";

function jwt(expSecondsFromNow: number): string {
  const payload = btoa(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + expSecondsFromNow }));
  return `h.${payload.replace(/=+$/, "")}.s`;
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

describe("access tokens", () => {
  beforeEach(async () => {
    await db.auth.clear();
  });
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("uses a valid access token without asking the server", async () => {
    const fetch = vi.fn();
    vi.stubGlobal("fetch", fetch);
    const access = jwt(3600);
    await db.auth.put({ key: "current", username: "tech", access, refresh: "r1", expired: false });
    expect(await accessToken()).toBe(access);
    expect(fetch).not.toHaveBeenCalled();
  });

  it("refreshes an expired token once, however many callers ask at the same time", async () => {
    const fresh = jwt(3600);
    const fetch = vi.fn(async () => json(200, { access: fresh, refresh: "r2" }));
    vi.stubGlobal("fetch", fetch);
    await db.auth.put({ key: "current", username: "tech", access: jwt(-10), refresh: "r1", expired: false });
    const tokens = await Promise.all([accessToken(), accessToken(), accessToken()]);
    expect(tokens).toEqual([fresh, fresh, fresh]);
    expect(fetch).toHaveBeenCalledTimes(1); // a rotated refresh token is never used twice
    expect((await db.auth.get("current"))?.refresh).toBe("r2");
  });

  it("keeps the queue and asks to sign in again when the refresh token is refused", async () => {
    vi.stubGlobal(
      "fetch",
      vi.fn(async () => json(401, { error: { code: "invalid_refresh_token", message: "m", hint: "h" } })),
    );
    await db.auth.put({ key: "current", username: "tech", access: jwt(-10), refresh: "r1", expired: false });
    await expect(accessToken()).rejects.toMatchObject({ code: "sign_in_required" });
    expect((await db.auth.get("current"))?.expired).toBe(true);
  });
});
