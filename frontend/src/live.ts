/** The page's live connection: the signed-in user's event stream (liveStream.ts) while the
 * device is online, and what its messages change — the studies' states in the queue, the
 * reports list, the notification centre, a toast for each new notification. While it is
 * connected the upload engine stops polling (pushState.ts); when it drops, polling comes
 * back by itself and the stream reconnects with its last id. */
import { useSyncExternalStore } from "react";
import { signedInFetch } from "./account";
import { accessToken } from "./auth";
import { db } from "./db";
import { LiveStream, type ServerNotification, type SocketLike, type StreamMessage } from "./liveStream";
import { centre, centreActionOf } from "./notifications";
import { setStreamLive, statusDue, whenLinkLost } from "./pushState";
import { fromServerState } from "./queueState";
import { reportsRefresh } from "./reports";
import { wakeUploads } from "./runtime";
import { studyEvent } from "./uploader";

const LAST_ID_KEY = "relaypacs-stream-last-id:";
// A toast stays this long unless closed or opened (long enough to read two lines).
export const TOAST_MS = 8000;
// Report events often come in twos (assigned, then pending): one reload for both.
const REPORTS_RELOAD_MS = 300;
// Server states the engine can apply from the event alone; for the others (completed,
// failed, needs confirmation, cancelled) it asks the status once, for the summary, the
// error's code and the choices it offers.
const PUSHED_STATES = new Set(["processing", "forwarding", "waiting_for_pacs"]);

type Listener = () => void;

class Signal<T> {
  private listeners = new Set<Listener>();
  constructor(private value: T) {}
  get = (): T => this.value;
  set(value: T): void {
    if (Object.is(value, this.value)) return;
    this.value = value;
    for (const l of this.listeners) l();
  }
  subscribe = (l: Listener): (() => void) => {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  };
}

export interface Toast {
  key: number;
  notification: ServerNotification;
}

const connected = new Signal(false);
const toasts = new Signal<Toast[]>([]);
/** Bumped when the server's lists may have changed (an upload event, a reset): the
 * History reloads on it. */
const listsVersion = new Signal(0);
let toastKey = 0;

function storage(): Storage | null {
  try {
    return typeof localStorage === "undefined" ? null : localStorage;
  } catch {
    return null;
  }
}

export function loadLastId(owner: string): number | null {
  const value = Number(storage()?.getItem(LAST_ID_KEY + owner) ?? "");
  return Number.isInteger(value) && value > 0 ? value : null;
}

function saveLastId(owner: string, id: number): void {
  try {
    storage()?.setItem(LAST_ID_KEY + owner, String(id));
  } catch {
    // No storage: the next page load starts from now and reloads the lists.
  }
}

export function forgetLastId(owner: string): void {
  try {
    storage()?.removeItem(LAST_ID_KEY + owner);
  } catch {
    // Nothing stored.
  }
}

async function ticket(refresh: boolean): Promise<string> {
  if (refresh) await accessToken(true);
  const answer = await signedInFetch<{ ticket: string }>("/notifications/ticket", { method: "POST" });
  return answer.ticket;
}

function openSocket(ticketValue: string): SocketLike {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return new WebSocket(`${scheme}://${location.host}/ws/notifications?ticket=${encodeURIComponent(ticketValue)}`) as unknown as SocketLike;
}

/** Studies the server is working on: after a reconnect or a reset, the engine asks their
 * status once (what happened before the stream started is not on it). */
async function followActive(owner: string): Promise<void> {
  const studies = await db.studies.where("owner").equals(owner).toArray();
  for (const s of studies) if (s.uploadId && (s.state === "processing" || s.state === "forwarding")) statusDue(s.uploadId);
  wakeUploads();
}

// Per upload, the `updated_at` of the last event applied: an event written late (a worker
// retrying) must not move a study back.
const appliedAt = new Map<string, number>();

/** Whether an event for `uploadId` changed at `updatedAt` is not older than the last one
 * applied (and records it). Events without `updated_at` are applied. */
export function freshEvent(uploadId: string, updatedAt: string | undefined): boolean {
  const at = updatedAt ? Date.parse(updatedAt) : NaN;
  if (isNaN(at)) return true;
  if ((appliedAt.get(uploadId) ?? -Infinity) > at) return false;
  appliedAt.set(uploadId, at);
  return true;
}

/** Apply an upload event to the study on this device that it is about, if any: the
 * upload's `current_state` (its state when the event was written), unless an event that
 * changed later was applied already. */
export async function uploadEventApply(owner: string, message: StreamMessage): Promise<void> {
  const uploadId = message.upload_id;
  const state = message.current_state || message.state || "";
  if (!uploadId || !state) return;
  if (!freshEvent(uploadId, message.updated_at)) return;
  const study = await db.studies
    .where("owner")
    .equals(owner)
    .filter((s) => s.uploadId === uploadId)
    .first();
  if (!study || fromServerState(state) === null) return;
  if (PUSHED_STATES.has(state)) {
    if (study.state === "processing" || study.state === "forwarding") await studyEvent(study.id!, { type: "server", state }, { serverState: state });
    return;
  }
  statusDue(uploadId);
  wakeUploads();
}

class Live {
  private stream: LiveStream | null = null;
  private owner: string | null = null;
  private reportsTimer: ReturnType<typeof setTimeout> | null = null;

  start(owner: string): void {
    if (this.owner !== owner) {
      this.stop();
      this.owner = owner;
      centre.dispatch({ type: "cleared" });
      this.stream = new LiveStream(
        {
          ticket,
          open: openSocket,
          loadLastId: () => loadLastId(owner),
          saveLastId: (id) => saveLastId(owner, id),
          setTimer: (fn, ms) => setTimeout(fn, ms),
          clearTimer: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
        },
        {
          onLive: (live) => this.onLive(owner, live),
          onEvent: (message) => this.onEvent(owner, message),
          onReset: () => this.reloadLists(owner),
        },
      );
    }
    void centre.load();
    const stream = this.stream!;
    whenLinkLost(() => stream.recheck());
    stream.start();
  }

  stop(): void {
    this.stream?.stop();
    this.stream = null;
    whenLinkLost(null);
    this.owner = null;
    if (this.reportsTimer) clearTimeout(this.reportsTimer);
    this.reportsTimer = null;
    setStreamLive(false);
    connected.set(false);
  }

  private onLive(owner: string, live: boolean): void {
    setStreamLive(live);
    connected.set(live);
    // Live: one status per study in the works, then the stream tells. Down: the engine
    // polls again from now.
    if (live) void followActive(owner);
    else wakeUploads();
  }

  private onEvent(owner: string, message: StreamMessage): void {
    const action = centreActionOf(message);
    if (action) centre.dispatch(action);
    if (message.notification && !message.notification.read) showToast(message.notification);
    if (message.type.startsWith("upload.")) {
      void uploadEventApply(owner, message);
      listsVersion.set(listsVersion.get() + 1);
    }
    if (message.type.startsWith("report.")) this.reloadReports(owner);
  }

  private reloadReports(owner: string): void {
    if (this.reportsTimer) clearTimeout(this.reportsTimer);
    this.reportsTimer = setTimeout(() => {
      this.reportsTimer = null;
      void reportsRefresh(owner).catch(() => undefined);
    }, REPORTS_RELOAD_MS);
  }

  private reloadLists(owner: string): void {
    void centre.load();
    this.reloadReports(owner);
    listsVersion.set(listsVersion.get() + 1);
    void followActive(owner);
  }
}

const live = new Live();

/** Connect for `owner` (signed in and online) or disconnect (`null`). */
export function liveFor(owner: string | null): void {
  if (owner) live.start(owner);
  else live.stop();
}

export function showToast(notification: ServerNotification): void {
  const key = ++toastKey;
  // The newest three: a burst of notifications does not cover the screen.
  toasts.set([...toasts.get().filter((t) => t.notification.id !== notification.id), { key, notification }].slice(-3));
  setTimeout(() => dismissToast(key), TOAST_MS);
}

export function dismissToast(key: number): void {
  toasts.set(toasts.get().filter((t) => t.key !== key));
}

export function useLiveConnected(): boolean {
  return useSyncExternalStore(connected.subscribe, connected.get);
}

export function useToasts(): Toast[] {
  return useSyncExternalStore(toasts.subscribe, toasts.get);
}

export function useListsVersion(): number {
  return useSyncExternalStore(listsVersion.subscribe, listsVersion.get);
}

export function useCentre() {
  return useSyncExternalStore(centre.subscribe, centre.get);
}
