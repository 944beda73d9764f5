/** Sign-in and tokens. Tokens live in IndexedDB so the app (and its service worker) can open
 * and queue studies offline. Refreshes are serialised across tabs and the service worker with
 * the Web Locks API, because the server revokes a session whose rotated refresh token is
 * used twice. */
import { ApiError, apiFetch } from "./api";
import { db, type AuthSession } from "./db";

const REFRESH_LOCK = "relaypacs-token-refresh";
// Refresh a little before the access token runs out, so a chunk is not refused midway.
const EXPIRY_MARGIN_SECONDS = 60;

interface TokenPair {
  access: string;
  refresh: string;
}

export function tokenExpiry(token: string): number {
  try {
    const payload = JSON.parse(atob(token.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/"))) as { exp?: number };
    return payload.exp ?? 0;
  } catch {
    return 0;
  }
}

export async function currentSession(): Promise<AuthSession | undefined> {
  return db.auth.get("current");
}

/** Sign in; `otp` is the one-time code when the account has two-step sign-in (the server
 * answers `otp_required` without it). */
export async function signIn(username: string, password: string, otp?: string): Promise<AuthSession> {
  const pair = await apiFetch<TokenPair>("/auth/login", {
    method: "POST",
    json: { username, password, ...(otp ? { otp } : {}) },
  });
  const session: AuthSession = { key: "current", username, ...pair, expired: false };
  await db.auth.put(session);
  return session;
}

export async function signOut(): Promise<void> {
  const session = await currentSession();
  await db.auth.delete("current");
  if (session && !session.expired) {
    try {
      await apiFetch("/auth/logout", { method: "POST", json: { refresh: session.refresh } });
    } catch {
      // Offline or already revoked: the tokens are gone from this device either way.
    }
  }
}

// Where the Web Locks API is missing, refreshes are at least serialised within this context.
let localQueue: Promise<unknown> = Promise.resolve();

function withLock<T>(fn: () => Promise<T>): Promise<T> {
  if (typeof navigator !== "undefined" && navigator.locks) {
    return navigator.locks.request(REFRESH_LOCK, fn) as Promise<T>;
  }
  const run = localQueue.then(fn, fn);
  localQueue = run.catch(() => undefined);
  return run;
}

/** A valid access token, refreshed when needed; throws ApiError 401 when the user must sign
 * in again (the session is marked expired, the queue stays). */
export async function accessToken(force = false): Promise<string> {
  const before = await currentSession();
  if (!before || before.expired) throw signInAgain();
  if (!force && tokenExpiry(before.access) - EXPIRY_MARGIN_SECONDS > Date.now() / 1000) return before.access;
  return withLock(async () => {
    // Another tab or the service worker may have refreshed while we waited for the lock.
    const session = await currentSession();
    if (!session || session.expired) throw signInAgain();
    if (session.access !== before.access && tokenExpiry(session.access) - EXPIRY_MARGIN_SECONDS > Date.now() / 1000) {
      return session.access;
    }
    try {
      const pair = await apiFetch<TokenPair>("/auth/refresh", { method: "POST", json: { refresh: session.refresh } });
      await db.auth.update("current", { access: pair.access, refresh: pair.refresh });
      return pair.access;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        await db.auth.update("current", { expired: true });
        throw signInAgain();
      }
      throw error;
    }
  });
}

function signInAgain(): ApiError {
  return new ApiError(
    401,
    "sign_in_required",
    "Your session has ended.",
    "Sign in again to continue; the studies on this device stay queued.",
  );
}
