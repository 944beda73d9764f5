/** The live stream's client: a fresh ticket per connection, resume from the last id, no
 * event twice, reconnect with backoff, refresh after the server closed, dead links
 * noticed by their silence. */
import { describe, expect, it } from "vitest";
import { LiveStream, RECHECK_MIN_MS, RECONNECT_MAX_MS, SILENCE_LIMIT_MS, type SocketLike, type StreamMessage } from "./liveStream";

class FakeSocket implements SocketLike {
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  sent: unknown[] = [];
  closedWith: number | null = null;
  constructor(readonly ticket: string) {}
  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000): void {
    this.closedWith = code;
  }
  // The server's side.
  open(): void {
    this.onopen?.({});
  }
  say(message: object): void {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
  drop(code = 1006): void {
    this.onclose?.({ code });
  }
}

/** A clock the test moves: timers run when `advance` passes them. */
class Clock {
  now = 0;
  private timers = new Map<number, { at: number; fn: () => void }>();
  private next = 1;
  set = (fn: () => void, ms: number): number => {
    const id = this.next++;
    this.timers.set(id, { at: this.now + ms, fn });
    return id;
  };
  clear = (id: unknown): void => {
    this.timers.delete(id as number);
  };
  pending(): number[] {
    return [...this.timers.values()].map((t) => t.at - this.now).sort((a, b) => a - b);
  }
  async advance(ms: number): Promise<void> {
    const end = this.now + ms;
    for (;;) {
      const due = [...this.timers.entries()].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.now = due[1].at;
      due[1].fn();
      await flush();
    }
    this.now = end;
  }
}

const flush = () => new Promise((resolve) => setTimeout(resolve, 0));

function setup(stored: number | null = null) {
  const clock = new Clock();
  const sockets: FakeSocket[] = [];
  const tickets: boolean[] = [];
  const events: StreamMessage[] = [];
  const resets: StreamMessage[] = [];
  const liveChanges: boolean[] = [];
  let saved = stored;
  let ticketFails: unknown = null;
  let ticketHeld: Promise<void> | null = null;
  let n = 0;
  const stream = new LiveStream(
    {
      ticket: async (refresh) => {
        tickets.push(refresh);
        if (ticketHeld) await ticketHeld;
        if (ticketFails) throw ticketFails;
        return `t${++n}`;
      },
      open: (ticket) => {
        const socket = new FakeSocket(ticket);
        sockets.push(socket);
        return socket;
      },
      loadLastId: () => saved,
      saveLastId: (id) => {
        saved = id;
      },
      setTimer: clock.set,
      clearTimer: clock.clear,
      random: () => 1, // the top of each backoff step
    },
    {
      onLive: (live) => liveChanges.push(live),
      onEvent: (m) => events.push(m),
      onReset: (m) => resets.push(m),
    },
  );
  return {
    stream,
    clock,
    sockets,
    tickets,
    events,
    resets,
    liveChanges,
    saved: () => saved,
    failTickets: (error: unknown) => {
      ticketFails = error;
    },
    /** Ticket requests from now on wait until the returned function is called. */
    holdTickets: () => {
      let release!: () => void;
      ticketHeld = new Promise((resolve) => (release = resolve));
      return () => {
        ticketHeld = null;
        release();
      };
    },
    last: () => sockets[sockets.length - 1]!,
  };
}

const event = (id: number, type = "upload.forwarding") => ({ id, type, upload_id: "u1", report_id: null, state: "forwarding" });

describe("the live stream client", () => {
  it("resumes from the stored id, counts as live only after ready, and stores each event's id", async () => {
    const t = setup(40);
    t.stream.start();
    await flush();
    expect(t.sockets).toHaveLength(1);
    expect(t.last().ticket).toBe("t1");
    t.last().open();
    expect(t.last().sent).toEqual([{ type: "resume", after: 40 }]);
    expect(t.stream.connected).toBe(false);
    t.last().say({ type: "ready", id: 40 });
    expect(t.stream.connected).toBe(true);
    expect(t.resets).toEqual([]); // it had a position: the backlog comes on the stream
    t.last().say(event(41));
    t.last().say({ type: "heartbeat" });
    t.last().say(event(42, "upload.completed"));
    expect(t.events.map((e) => e.id)).toEqual([41, 42]);
    expect(t.saved()).toBe(42);
    expect(t.liveChanges).toEqual([true]);
  });

  it("reloads the lists on a first connection (nothing to resume from) and on reset", async () => {
    const t = setup(null);
    t.stream.start();
    await flush();
    t.last().open();
    expect(t.last().sent).toEqual([{ type: "resume", after: null }]);
    t.last().say({ type: "ready", id: 7 });
    expect(t.resets).toHaveLength(1);
    expect(t.saved()).toBe(7);
    t.last().say({ type: "reset", id: 90, reason: "Events since your last connection are no longer kept." });
    expect(t.resets).toHaveLength(2);
    expect(t.saved()).toBe(90);
    t.last().say(event(91));
    expect(t.events.map((e) => e.id)).toEqual([91]);
  });

  it("reconnects after a drop with a fresh ticket and the last id, and never hands an event twice", async () => {
    const t = setup(10);
    t.stream.start();
    await flush();
    t.last().open();
    t.last().say({ type: "ready", id: 10 });
    t.last().say(event(11));
    t.last().drop();
    expect(t.stream.connected).toBe(false);
    expect(t.liveChanges).toEqual([true, false]);
    // First retry after 1 s (the top of the jittered step).
    expect(t.clock.pending()).toEqual([1000]);
    await t.clock.advance(1000);
    expect(t.sockets).toHaveLength(2);
    expect(t.last().ticket).toBe("t2"); // a used ticket is worthless: a new one each time
    t.last().open();
    expect(t.last().sent).toEqual([{ type: "resume", after: 11 }]);
    t.last().say({ type: "ready", id: 11 });
    // What happened while away, then an old id a second resume could repeat.
    for (const id of [12, 13, 14]) t.last().say(event(id));
    t.last().say(event(13));
    expect(t.events.map((e) => e.id)).toEqual([11, 12, 13, 14]);
    expect(t.stream.connected).toBe(true);
  });

  it("backs off 1, 2, 4 … 30 s while the server cannot be reached, and starts again at 1 s once connected", async () => {
    const t = setup(5);
    t.failTickets(Object.assign(new Error("unreachable"), { code: "network_unavailable" }));
    t.stream.start();
    await flush();
    const delays: number[] = [];
    for (let i = 0; i < 7; i++) {
      const [next] = t.clock.pending();
      delays.push(next!);
      await t.clock.advance(next!);
    }
    expect(delays).toEqual([1000, 2000, 4000, 8000, 16000, RECONNECT_MAX_MS, RECONNECT_MAX_MS]);
    expect(t.sockets).toHaveLength(0);
    t.failTickets(null);
    await t.clock.advance(RECONNECT_MAX_MS);
    t.last().open();
    t.last().say({ type: "ready", id: 5 });
    t.last().drop();
    expect(t.clock.pending()).toEqual([1000]);
  });

  it("coming back online reconnects at once instead of waiting out the backoff", async () => {
    const t = setup(5);
    t.failTickets(new Error("offline"));
    t.stream.start();
    await flush();
    await t.clock.advance(t.clock.pending()[0]!);
    await t.clock.advance(t.clock.pending()[0]!);
    expect(t.clock.pending()).toEqual([4000]);
    t.failTickets(null);
    t.stream.start(); // the page's `online`
    await flush();
    expect(t.sockets).toHaveLength(1);
    expect(t.clock.pending()).toEqual([]);
  });

  it("after the server closed the stream (session ended, token expired) refreshes the token before the next ticket", async () => {
    const t = setup(3);
    t.stream.start();
    await flush();
    t.last().open();
    t.last().say({ type: "ready", id: 3 });
    t.last().say({ type: "closed", reason: "token_expired" });
    t.last().drop(4401);
    await t.clock.advance(1000);
    expect(t.tickets).toEqual([false, true]);
    t.last().open();
    expect(t.last().sent).toEqual([{ type: "resume", after: 3 }]);
  });

  it("stops asking for tickets when the user must sign in again", async () => {
    const signIn: string[] = [];
    const t = setup(3);
    (t.stream as unknown as { handlers: { onSignInNeeded: () => void } }).handlers.onSignInNeeded = () => signIn.push("sign in");
    t.failTickets(Object.assign(new Error("Your session has ended."), { code: "sign_in_required" }));
    t.stream.start();
    await flush();
    expect(signIn).toEqual(["sign in"]);
    expect(t.clock.pending()).toEqual([]);
  });

  it("drops a link that has been silent for a minute (no heartbeat) and reconnects", async () => {
    const t = setup(3);
    t.stream.start();
    await flush();
    t.last().open();
    t.last().say({ type: "ready", id: 3 });
    await t.clock.advance(SILENCE_LIMIT_MS - 1000);
    t.last().say({ type: "heartbeat" }); // heard: the minute starts again
    await t.clock.advance(SILENCE_LIMIT_MS - 1000);
    expect(t.stream.connected).toBe(true);
    await t.clock.advance(1000);
    expect(t.stream.connected).toBe(false);
    expect(t.sockets[0]!.closedWith).toBe(4000);
    await t.clock.advance(1000);
    expect(t.sockets).toHaveLength(2);
  });

  it("drops a connection that looks open when another request found the link lost, and connects again at once", async () => {
    const t = setup(3);
    t.stream.start();
    await flush();
    t.last().open();
    t.last().say({ type: "ready", id: 3 });
    expect(t.stream.connected).toBe(true);
    // A chunk request could not reach the server; the socket has heard nothing of it.
    t.stream.recheck(100_000);
    expect(t.stream.connected).toBe(false);
    expect(t.liveChanges).toEqual([true, false]);
    expect(t.sockets[0]!.closedWith).toBe(4000);
    await flush();
    expect(t.sockets).toHaveLength(2); // no backoff first
    t.sockets[0]!.drop(); // the old socket's late close changes nothing
    expect(t.sockets).toHaveLength(2);
    t.last().open();
    expect(t.last().sent).toEqual([{ type: "resume", after: 3 }]);
    t.last().say({ type: "ready", id: 3 });
    expect(t.stream.connected).toBe(true);
    // Failures in a row within RECHECK_MIN_MS leave the new connection alone.
    t.stream.recheck(100_000 + RECHECK_MIN_MS - 1);
    expect(t.stream.connected).toBe(true);
    expect(t.sockets).toHaveLength(2);
    t.stream.recheck(100_000 + RECHECK_MIN_MS);
    expect(t.stream.connected).toBe(false);
  });

  it("a recheck of a stream already reconnecting keeps its backoff, and does nothing once stopped", async () => {
    const t = setup(3);
    t.stream.start();
    await flush();
    t.last().open();
    t.last().say({ type: "ready", id: 3 });
    t.failTickets(new Error("offline"));
    t.last().drop(); // the stream knows it is down: it backs off
    await t.clock.advance(1000);
    await t.clock.advance(2000);
    expect(t.tickets).toHaveLength(3);
    expect(t.clock.pending()).toEqual([4000]);
    // The engine failing too changes nothing: no ticket now, the same wait.
    t.stream.recheck(50_000);
    await flush();
    expect(t.tickets).toHaveLength(3);
    expect(t.clock.pending()).toEqual([4000]);
    t.stream.stop();
    t.stream.recheck(50_000 + RECHECK_MIN_MS);
    await flush();
    expect(t.tickets).toHaveLength(3);
    expect(t.clock.pending()).toEqual([]);
  });

  it("a recheck while a ticket request hangs asks again, and what the old one brings is dropped", async () => {
    const t = setup(3);
    const release = t.holdTickets();
    t.stream.start();
    await flush();
    expect(t.tickets).toHaveLength(1);
    expect(t.sockets).toHaveLength(0);
    t.stream.recheck(20_000);
    await flush();
    expect(t.tickets).toHaveLength(2);
    release();
    await flush();
    await flush();
    // Only the second request opens a socket.
    expect(t.sockets).toHaveLength(1);
    t.last().open();
    t.last().say({ type: "ready", id: 3 });
    expect(t.stream.connected).toBe(true);
  });

  it("stop closes the socket and schedules nothing", async () => {
    const t = setup(3);
    t.stream.start();
    await flush();
    t.last().open();
    t.last().say({ type: "ready", id: 3 });
    t.stream.stop();
    expect(t.sockets[0]!.closedWith).toBe(1000);
    expect(t.stream.connected).toBe(false);
    expect(t.clock.pending()).toEqual([]);
    t.sockets[0]!.drop(); // a late close event changes nothing
    expect(t.clock.pending()).toEqual([]);
  });
});
