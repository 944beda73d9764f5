/** The client of the user's event stream (docs/notifications.md) over the WebSocket
 * `/ws/notifications`: a fresh single-use ticket for every connection (never a token in a
 * URL), `{"type": "resume", "after": lastId}` as the first message so nothing is missed or
 * repeated, and a reconnect with backoff (1, 2, 4 … 30 s, jittered) whenever it drops.
 *
 * Why the WebSocket rather than EventSource: over HTTP/1.1 a browser opens at most six
 * connections per origin, shared by every tab and by the chunk uploads (three at once); an
 * EventSource held open by each tab takes one of them for good, a WebSocket does not. The
 * SSE endpoint stays for clients and proxies that cannot do WebSockets.
 *
 * Everything the browser gives (the socket, timers, the ticket request, storage of the
 * last id) comes in through `StreamDeps`, so the logic runs in Vitest as it runs in the
 * page. */
import { backoffDelay } from "./backoff";

/** One message of the stream, as far as the app reads it. */
export interface StreamMessage {
  type: string;
  id?: number;
  upload_id?: string | null;
  report_id?: number | null;
  state?: string;
  /** The upload's (report's) state and when it last changed, when the event was written
   * (events can be written late: `state` may be older than what the app shows). */
  current_state?: string;
  updated_at?: string;
  reason?: string;
  notification?: ServerNotification;
  unread_count?: number;
  notification_ids?: number[];
  error?: { code: string; message: string; hint: string };
}

export interface ServerNotification {
  id: number;
  kind: string;
  title: string;
  body: string;
  upload_id: string | null;
  report_id: number | null;
  created_at: string;
  read: boolean;
  read_at: string | null;
}

/** The part of a WebSocket the client uses. */
export interface SocketLike {
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number): void;
}

export interface StreamDeps {
  /** A fresh ticket (POST /notifications/ticket); `refresh`: after the server closed the
   * stream for an ended session or an expired token, get a new access token first. */
  ticket(refresh: boolean): Promise<string>;
  /** Open `/ws/notifications?ticket=…` (the page: same host, ws or wss). */
  open(ticket: string): SocketLike;
  loadLastId(): number | null;
  saveLastId(id: number): void;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(handle: unknown): void;
  random?: () => number;
}

export interface StreamHandlers {
  /** Connected (after `ready`) or not: polling stops and starts on this. */
  onLive(live: boolean): void;
  /** An event (upload, report, notification, read state), once, in order. */
  onEvent(message: StreamMessage): void;
  /** The server no longer has what was missed: reload the lists. Also after the first
   * connection of a device that never had one (nothing to resume from). */
  onReset(message: StreamMessage): void;
  /** The ticket could not be had because the user must sign in again: the stream waits
   * until `start` is called again. */
  onSignInNeeded?(): void;
}

// The server sends a heartbeat every 25 s of silence; twice that and more means the link
// is dead even if the socket has not noticed (mobile NATs drop idle flows silently).
export const SILENCE_LIMIT_MS = 60_000;
// A lost link (`recheck`) drops a connection that looks open at most this often.
export const RECHECK_MIN_MS = 10_000;
// The backoff of docs/notifications.md: 1, 2, 4 … 30 s.
export const RECONNECT_BASE_MS = 1000;
export const RECONNECT_MAX_MS = 30_000;

export class LiveStream {
  private socket: SocketLike | null = null;
  private running = false;
  private live = false;
  private attempt = 0;
  private reconnectTimer: unknown = null;
  private silenceTimer: unknown = null;
  private refreshFirst = false;
  private lastId: number | null;
  private generation = 0;
  private connecting = false;
  private lastRecheck = -Infinity;

  constructor(private readonly deps: StreamDeps, private readonly handlers: StreamHandlers) {
    this.lastId = deps.loadLastId();
  }

  get connected(): boolean {
    return this.live;
  }

  get position(): number | null {
    return this.lastId;
  }

  /** Connect (now, whatever the backoff said) and stay connected until `stop`. */
  start(): void {
    if (this.running && (this.socket || this.connecting)) return;
    this.running = true;
    this.clearReconnect();
    this.attempt = 0;
    void this.connect();
  }

  stop(): void {
    this.running = false;
    this.connecting = false;
    this.generation += 1;
    this.clearReconnect();
    this.clearSilence();
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      socket.close(1000);
    }
    this.setLive(false);
  }

  /** Another request to the server failed for want of a connection: the stream's socket
   * may look open on a link that is gone (no reset came), and would be found dead only
   * after SILENCE_LIMIT_MS, while the engine trusts it and does not poll. Drop it and
   * connect again now (the usual backoff follows if the link is still down); at most once
   * per RECHECK_MIN_MS, so that failures in a row do not churn a connection that works. */
  recheck(now: number = Date.now()): void {
    // Only a socket that looks open, or a ticket request under way (it may hang on the same
    // dead link: fetch has no timeout), is in doubt: a stream waiting out its backoff keeps
    // it (1, 2, 4 … 30 s), whatever the engine's failures. connect() starts a new
    // generation: what the old ticket request brings later is dropped.
    if (!this.running || (!this.socket && !this.connecting) || now - this.lastRecheck < RECHECK_MIN_MS) return;
    this.lastRecheck = now;
    this.drop();
    this.clearReconnect();
    this.attempt = 0;
    void this.connect();
  }

  /** Forget the socket (no events from it any more), close it, and say the stream is down. */
  private drop(): void {
    const socket = this.socket;
    this.socket = null;
    this.clearSilence();
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      socket.close(4000);
    }
    this.setLive(false);
  }

  private async connect(): Promise<void> {
    const generation = ++this.generation;
    let ticket: string;
    this.connecting = true;
    try {
      ticket = await this.deps.ticket(this.refreshFirst);
      this.refreshFirst = false;
    } catch (error) {
      if (generation !== this.generation) return;
      this.connecting = false;
      if ((error as { code?: string }).code === "sign_in_required") {
        this.running = false;
        this.handlers.onSignInNeeded?.();
        return;
      }
      this.scheduleReconnect();
      return;
    }
    if (generation !== this.generation || !this.running) return;
    this.connecting = false;
    let socket: SocketLike;
    try {
      socket = this.deps.open(ticket);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      socket.send(JSON.stringify({ type: "resume", after: this.lastId }));
      this.watchSilence();
    };
    socket.onmessage = (event) => this.receive(event.data);
    socket.onerror = () => undefined; // onclose follows
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.clearSilence();
      this.setLive(false);
      if (this.running) this.scheduleReconnect();
    };
  }

  private receive(data: unknown): void {
    let message: StreamMessage;
    try {
      message = JSON.parse(String(data)) as StreamMessage;
    } catch {
      return;
    }
    this.watchSilence();
    switch (message.type) {
      case "heartbeat":
        return;
      case "ready": {
        const fresh = this.lastId === null;
        this.remember(message.id);
        this.attempt = 0;
        this.setLive(true);
        // Nothing to resume from (first connection on this device): what happened before
        // is not on the stream, so the lists are loaded as after a reset.
        if (fresh) this.handlers.onReset(message);
        return;
      }
      case "reset":
        this.remember(message.id);
        this.handlers.onReset(message);
        return;
      case "closed":
        // Session ended or token expired: new access token, new ticket, same position.
        this.refreshFirst = true;
        return;
      case "error":
        if (message.error?.code === "ticket_invalid" || message.error?.code === "not_authenticated") this.refreshFirst = true;
        return;
      default:
        if (typeof message.id !== "number") return;
        // After a second `resume` the server may send again what the client had.
        if (this.lastId !== null && message.id <= this.lastId) return;
        this.remember(message.id);
        this.handlers.onEvent(message);
    }
  }

  private remember(id: number | undefined): void {
    if (typeof id !== "number") return;
    this.lastId = id;
    this.deps.saveLastId(id);
  }

  private setLive(live: boolean): void {
    if (this.live === live) return;
    this.live = live;
    this.handlers.onLive(live);
  }

  private scheduleReconnect(): void {
    this.clearReconnect();
    const delay = backoffDelay(this.attempt, this.deps.random, RECONNECT_BASE_MS, RECONNECT_MAX_MS);
    this.attempt += 1;
    this.reconnectTimer = this.deps.setTimer(() => {
      this.reconnectTimer = null;
      if (this.running && !this.socket) void this.connect();
    }, delay);
  }

  private clearReconnect(): void {
    if (this.reconnectTimer !== null) this.deps.clearTimer(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  private watchSilence(): void {
    this.clearSilence();
    this.silenceTimer = this.deps.setTimer(() => {
      this.silenceTimer = null;
      // Dead link: drop it and reconnect (onclose does not come from a link that is gone).
      if (!this.socket) return;
      this.drop();
      if (this.running) this.scheduleReconnect();
    }, SILENCE_LIMIT_MS);
  }

  private clearSilence(): void {
    if (this.silenceTimer !== null) this.deps.clearTimer(this.silenceTimer);
    this.silenceTimer = null;
  }
}
