/** The notification centre's state (docs/notifications.md, "REST"): the user's
 * notifications newest first and the unread count, from the list endpoint and kept up to
 * date by the stream (a new notification, read state changed on this or another device).
 * Kept in memory only: titles and bodies name no patient, but nothing needs them offline.
 *
 * `centreReduce` is the whole logic, pure (Vitest); `centre` is the one store the page
 * uses, read by React with `useSyncExternalStore`. */
import { signedInFetch } from "./account";
import { ApiError } from "./api";
import { badgeFollow } from "./badge";
import type { UserError } from "./db";
import type { ServerNotification, StreamMessage } from "./liveStream";
import { notificationWords } from "./words";

export interface CentreState {
  items: ServerNotification[];
  unreadCount: number;
  /** The list was loaded from the server at least once. */
  loaded: boolean;
  /** More pages on the server (the centre shows the first ones). */
  more: boolean;
  error: UserError | null;
}

export type CentreAction =
  | { type: "loaded"; items: ServerNotification[]; unreadCount: number; more: boolean }
  | { type: "failed"; error: UserError }
  | { type: "arrived"; notification: ServerNotification; unreadCount?: number }
  | { type: "marked"; ids: number[]; read: boolean; unreadCount?: number; at?: string }
  | { type: "allRead"; at: string }
  | { type: "replaced"; notification: ServerNotification; unreadCount: number }
  | { type: "cleared" };

export const EMPTY_CENTRE: CentreState = { items: [], unreadCount: 0, loaded: false, more: false, error: null };

function newestFirst(items: ServerNotification[]): ServerNotification[] {
  return [...items].sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at) || b.id - a.id);
}

function countUnread(items: ServerNotification[]): number {
  return items.filter((n) => !n.read).length;
}

export function centreReduce(state: CentreState, action: CentreAction): CentreState {
  switch (action.type) {
    case "loaded":
      return { items: newestFirst(action.items), unreadCount: action.unreadCount, loaded: true, more: action.more, error: null };
    case "failed":
      return { ...state, error: action.error };
    case "arrived": {
      if (state.items.some((n) => n.id === action.notification.id)) {
        return { ...state, unreadCount: action.unreadCount ?? state.unreadCount };
      }
      const items = newestFirst([action.notification, ...state.items]);
      const unreadCount = action.unreadCount ?? state.unreadCount + (action.notification.read ? 0 : 1);
      return { ...state, items, unreadCount };
    }
    case "marked": {
      const ids = new Set(action.ids);
      const items = state.items.map((n) => (ids.has(n.id) && n.read !== action.read ? { ...n, read: action.read, read_at: action.read ? (action.at ?? new Date().toISOString()) : null } : n));
      // The server's count is the truth (it counts pages not loaded here); without one,
      // the change seen on the loaded items.
      const unreadCount = action.unreadCount ?? Math.max(0, state.unreadCount + countUnread(items) - countUnread(state.items));
      return { ...state, items, unreadCount };
    }
    case "allRead":
      return { ...state, items: state.items.map((n) => (n.read ? n : { ...n, read: true, read_at: action.at })), unreadCount: 0 };
    case "replaced":
      return { ...state, items: state.items.map((n) => (n.id === action.notification.id ? action.notification : n)), unreadCount: action.unreadCount };
    case "cleared":
      return EMPTY_CENTRE;
  }
}

/** What a stream message changes in the centre, if anything. */
export function centreActionOf(message: StreamMessage): CentreAction | null {
  if (message.notification) return { type: "arrived", notification: message.notification, unreadCount: message.unread_count };
  if (message.type === "notifications.read" || message.type === "notifications.unread") {
    return { type: "marked", ids: message.notification_ids ?? [], read: message.type === "notifications.read", unreadCount: message.unread_count };
  }
  // Another radiologist took a pooled report: its offer to this one is marked read.
  if (message.notification_ids?.length) return { type: "marked", ids: message.notification_ids, read: true, unreadCount: message.unread_count };
  return null;
}

// The centre lists the newest ones; older ones are a page away on the server.
export const CENTRE_PAGE_SIZE = 50;

interface Page {
  results: ServerNotification[];
  unread_count: number;
  next: string | null;
}

interface Marked {
  notification: ServerNotification;
  unread_count: number;
}

/** What the centre says of a failure of the notification endpoints, in the app's words. */
export function centreError(error: unknown): UserError {
  const code = error instanceof ApiError ? error.code : "app_error";
  return { code, ...notificationWords(code) };
}

type Listener = () => void;

/** The page's one notification centre. */
export class Centre {
  private state: CentreState = EMPTY_CENTRE;
  private listeners = new Set<Listener>();

  constructor(private readonly fetcher: typeof signedInFetch = signedInFetch) {}

  get = (): CentreState => this.state;

  subscribe = (listener: Listener): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  dispatch(action: CentreAction): void {
    this.state = centreReduce(this.state, action);
    for (const listener of this.listeners) listener();
  }

  async load(): Promise<void> {
    try {
      const page = await this.fetcher<Page>(`/notifications?page_size=${CENTRE_PAGE_SIZE}`);
      this.dispatch({ type: "loaded", items: page.results, unreadCount: page.unread_count, more: Boolean(page.next) });
    } catch (error) {
      this.dispatch({ type: "failed", error: centreError(error) });
    }
  }

  /** Mark one read (or unread); the change shows at once and is undone if the server refuses. */
  async mark(id: number, read: boolean): Promise<void> {
    const before = this.state.items.find((n) => n.id === id);
    this.dispatch({ type: "marked", ids: [id], read });
    try {
      const answer = await this.fetcher<Marked>(`/notifications/${id}/${read ? "read" : "unread"}`, { method: "POST" });
      this.dispatch({ type: "replaced", notification: answer.notification, unreadCount: answer.unread_count });
    } catch (error) {
      if (before) this.dispatch({ type: "marked", ids: [id], read: before.read });
      this.dispatch({ type: "failed", error: centreError(error) });
    }
  }

  async markAllRead(): Promise<void> {
    const before = this.state;
    this.dispatch({ type: "allRead", at: new Date().toISOString() });
    try {
      await this.fetcher(`/notifications/read-all`, { method: "POST" });
    } catch (error) {
      this.state = before;
      this.dispatch({ type: "failed", error: centreError(error) });
    }
  }

  dismissError(): void {
    if (this.state.error) {
      this.state = { ...this.state, error: null };
      for (const listener of this.listeners) listener();
    }
  }
}

export const centre = new Centre();
// The app icon's badge shows the unread count whenever the centre has it (badge.ts).
badgeFollow(centre);
