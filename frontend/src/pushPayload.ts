/** What a Web Push message carries (docs/notifications.md, "Web Push") and what the service
 * worker does with it, as pure functions shared by the service worker (sw.ts) and the page
 * (push.ts): the payload read defensively, the screen it opens kept to this app's own
 * routes, the window a click goes to. No patient data is ever in a payload; the title and
 * body are shown as the server wrote them. */

export interface PushPayload {
  title: string;
  body: string;
  /** A route of this app ("/#/study/<id>"): always a same-origin path. */
  url: string;
  tag: string;
  /** The user's unread notifications when it was sent, for the badge; null when absent. */
  unread: number | null;
  kind: string;
  seq: number | null;
  /** The notification this push shows: a click marks it read. */
  notificationId: number | null;
}

/** This device's subscription on the server (GET, POST, DELETE). */
export const PUSH_SUBSCRIPTIONS = "/notifications/push-subscriptions";

/** The messages between the service worker and the page (`postMessage`). */
export const PUSH_ARRIVED = "relaypacs:push";
export const NOTIFICATION_OPEN = "relaypacs:open";

export type WorkerMessage = { type: typeof PUSH_ARRIVED; kind: string; unread: number | null; seq: number | null } | { type: typeof NOTIFICATION_OPEN; url: string };

const DEFAULT_TITLE = "RelayPACS";
// What the browser shows cuts long text anyway; a payload is at most ~4 kB.
const TITLE_MAX = 120;
const BODY_MAX = 400;
// Server paths that are not the app: a click never opens them.
const NOT_THE_APP = /^\/(api|admin|static|ws)(\/|$)/;

function text(value: unknown, max: number): string {
  return typeof value === "string" ? value.slice(0, max) : "";
}

function count(value: unknown): number | null {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 ? value : null;
}

/** `path` when it is a relative URL of this origin's app ("/#/reports/12"), else "/".
 * Absolute URLs, protocol-relative ones ("//elsewhere") and the server's own paths are
 * refused, so that a payload can only open a screen of the app. */
export function appPath(path: unknown, origin: string): string {
  if (typeof path !== "string" || !path.startsWith("/") || path.startsWith("//") || path.startsWith("/\\")) return "/";
  let url: URL;
  try {
    url = new URL(path, origin);
  } catch {
    return "/";
  }
  if (url.origin !== origin || NOT_THE_APP.test(url.pathname)) return "/";
  return `${url.pathname}${url.search}${url.hash}`;
}

/** The payload of a push message (its JSON, already parsed, or anything else). */
export function pushPayloadOf(data: unknown, origin: string): PushPayload {
  const d = data !== null && typeof data === "object" ? (data as Record<string, unknown>) : {};
  return {
    title: text(d.title, TITLE_MAX) || DEFAULT_TITLE,
    body: text(d.body, BODY_MAX),
    url: appPath(d.url, origin),
    tag: text(d.tag, TITLE_MAX),
    unread: count(d.unread),
    kind: text(d.kind, TITLE_MAX),
    seq: count(d.seq),
    notificationId: count(d.notification_id),
  };
}

/** The part of a `WindowClient` the choices below look at. */
export interface WindowLike {
  url: string;
  focused: boolean;
  visibilityState: DocumentVisibilityState;
}

/** Whether someone is looking at the app right now (a focused, visible window of it): then
 * the page's own toast tells, and the service worker need not show a notification. */
export function someoneLooking(windows: readonly WindowLike[], origin: string): boolean {
  return appWindows(windows, origin).some((w) => w.focused && w.visibilityState === "visible");
}

/** The app's windows among `windows` (not an admin or API page of the same origin). */
export function appWindows<T extends WindowLike>(windows: readonly T[], origin: string): T[] {
  return windows.filter((w) => {
    try {
      const url = new URL(w.url);
      return url.origin === origin && !NOT_THE_APP.test(url.pathname);
    } catch {
      return false;
    }
  });
}

/** The window a notification click goes to: the focused one, else a visible one, else any
 * window of the app; null when none is open (a new one is opened). */
export function windowFor<T extends WindowLike>(windows: readonly T[], origin: string): T | null {
  const mine = appWindows(windows, origin);
  return mine.find((w) => w.focused) ?? mine.find((w) => w.visibilityState === "visible") ?? mine[0] ?? null;
}
