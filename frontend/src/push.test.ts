/** Web Push on this device (push.ts), what a push message carries and where a click goes
 * (pushPayload.ts), and the app icon's badge (badge.ts). The browser's push manager and
 * permission are stand-ins here (Chromium's real ones are in tests_e2e/test_pwa_push.py);
 * the server's answers are those of docs/notifications.md. */
import "fake-indexeddb/auto";
import { afterEach, describe, expect, it, vi } from "vitest";
import { ApiError, type RequestOptions } from "./api";
import { badgeFollow, badgeSet, type BadgeNavigator } from "./badge";
import {
  FORGET_TIMEOUT_MS,
  keyBytes,
  offerDue,
  pushDecline,
  pushDeclined,
  pushDisable,
  pushEnable,
  pushForget,
  pushStatus,
  PUSH_SUBSCRIPTIONS,
  PUSH_WORDS,
  sameKey,
  type PushEnv,
  type PushManagerLike,
  type PushServerState,
  type PushSubscriptionLike,
} from "./push";
import { appPath, pushPayloadOf, someoneLooking, windowFor, type WindowLike } from "./pushPayload";
import { clearChoices, clearWords } from "./signOut";

// Two uncompressed P-256 points' worth of bytes (65, starting 0x04), base64url unpadded.
const KEY_A = btoa(String.fromCharCode(4, ...Array.from({ length: 64 }, (_, i) => i)))
  .replace(/\+/g, "-")
  .replace(/\//g, "_")
  .replace(/=+$/, "");
const KEY_B = btoa(String.fromCharCode(4, ...Array.from({ length: 64 }, (_, i) => 200 - i)))
  .replace(/\+/g, "-")
  .replace(/\//g, "_")
  .replace(/=+$/, "");
const ORIGIN = "https://relaypacs.example";

class FakeSubscription implements PushSubscriptionLike {
  unsubscribed = false;
  readonly options: { applicationServerKey: ArrayBuffer | null };
  constructor(
    readonly endpoint: string,
    key: Uint8Array,
    private readonly manager: FakeManager,
  ) {
    this.options = { applicationServerKey: key.slice().buffer };
  }
  toJSON(): PushSubscriptionJSON {
    return { endpoint: this.endpoint, expirationTime: null, keys: { p256dh: "BPkey", auth: "authsecret" } };
  }
  async unsubscribe(): Promise<boolean> {
    this.unsubscribed = true;
    if (this.manager.current === this) this.manager.current = null;
    return true;
  }
}

/** The browser's pushManager as far as the app uses it. */
class FakeManager implements PushManagerLike {
  current: FakeSubscription | null = null;
  subscribed: { userVisibleOnly: boolean; applicationServerKey: Uint8Array }[] = [];
  failSubscribe = false;
  async getSubscription() {
    return this.current;
  }
  async subscribe(options: { userVisibleOnly: boolean; applicationServerKey: Uint8Array<ArrayBuffer> }) {
    if (this.failSubscribe) throw new DOMException("Registration failed - push service error", "AbortError");
    this.subscribed.push(options);
    this.current = new FakeSubscription(`https://push.example/${this.subscribed.length}`, options.applicationServerKey, this);
    return this.current;
  }
}

class MemoryStorage {
  values = new Map<string, string>();
  getItem(key: string) {
    return this.values.get(key) ?? null;
  }
  setItem(key: string, value: string) {
    this.values.set(key, value);
  }
  removeItem(key: string) {
    this.values.delete(key);
  }
}

interface World {
  env: PushEnv;
  manager: FakeManager;
  calls: string[];
  requests: { method: string; path: string; json?: unknown }[];
  server: PushServerState;
  setPermission(p: NotificationPermission): void;
}

function world(options: { permission?: NotificationPermission | null; server?: Partial<PushServerState>; manager?: boolean; answer?: NotificationPermission; deleteFails?: boolean } = {}): World {
  const manager = new FakeManager();
  const calls: string[] = [];
  const requests: World["requests"] = [];
  const server: PushServerState = { vapid_public_key: KEY_A, subscribed: false, enabled: true, ...options.server };
  let permission = options.permission === undefined ? "default" : options.permission;
  const fetcher = async <T>(path: string, request: RequestOptions = {}): Promise<T> => {
    const method = request.method ?? "GET";
    calls.push(`${method} ${path}`);
    requests.push({ method, path, json: request.json });
    if (method === "DELETE") {
      if (options.deleteFails) throw new ApiError(0, "network_unavailable", "The server cannot be reached.", "");
      server.subscribed = false;
      return undefined as T;
    }
    if (method === "POST") {
      server.subscribed = true;
      return { subscribed: true } as T;
    }
    return { ...server } as T;
  };
  const env: PushEnv = {
    fetcher: fetcher as PushEnv["fetcher"],
    pushManager: async () => (options.manager === false ? null : manager),
    permission: () => permission,
    requestPermission: async () => {
      calls.push("requestPermission");
      permission = options.answer ?? "granted";
      return permission;
    },
    storage: new MemoryStorage(),
  };
  return { env, manager, calls, requests, server, setPermission: (p) => (permission = p) };
}

describe("the server's key", () => {
  it("is read from base64url without padding, and a subscription made with another key is told apart", () => {
    const a = keyBytes(KEY_A);
    expect(a.length).toBe(65);
    expect(a[0]).toBe(4);
    const manager = new FakeManager();
    const sub = new FakeSubscription("https://push.example/1", a, manager);
    expect(sameKey(sub, keyBytes(KEY_A))).toBe(true);
    expect(sameKey(sub, keyBytes(KEY_B))).toBe(false);
  });
});

describe("where push stands on this device", () => {
  it("is unsupported without a push manager or without notifications, and the server is not asked", async () => {
    const noManager = world({ manager: false });
    expect(await pushStatus(noManager.env)).toBe("unsupported");
    const noNotifications = world({ permission: null });
    expect(await pushStatus(noNotifications.env)).toBe("unsupported");
    expect([...noManager.calls, ...noNotifications.calls]).toEqual([]);
  });

  it("is unavailable when the server does not send push, whatever the browser allows", async () => {
    expect(await pushStatus(world({ permission: "granted", server: { enabled: false, vapid_public_key: "" } }).env)).toBe("unavailable");
  });

  it("is denied when the browser blocks the site, and off while the permission was never asked", async () => {
    expect(await pushStatus(world({ permission: "denied" }).env)).toBe("denied");
    expect(await pushStatus(world({ permission: "default" }).env)).toBe("off");
  });

  it("is on when the server has this device's subscription and the browser still has it", async () => {
    const w = world({ permission: "granted" });
    expect(await pushEnable(w.env)).toBe("on");
    expect(await pushStatus(w.env)).toBe("on");
    // The browser dropped it (site data cleared): off until turned on again, not resubscribed silently.
    await w.manager.current!.unsubscribe();
    expect(await pushStatus(w.env)).toBe("off");
    expect(w.manager.subscribed).toHaveLength(1);
  });

  it("subscribes again with the new key when the server's key changed, and tells the server", async () => {
    const w = world({ permission: "granted" });
    await pushEnable(w.env);
    const old = w.manager.current!;
    w.server.vapid_public_key = KEY_B;
    expect(await pushStatus(w.env)).toBe("on");
    expect(old.unsubscribed).toBe(true);
    expect(w.manager.subscribed).toHaveLength(2);
    expect(Array.from(w.manager.subscribed[1]!.applicationServerKey)).toEqual(Array.from(keyBytes(KEY_B)));
    const posts = w.requests.filter((r) => r.method === "POST");
    expect(posts).toHaveLength(2);
    expect(posts[1]!.json).toEqual({ endpoint: "https://push.example/2", expirationTime: null, keys: { p256dh: "BPkey", auth: "authsecret" } });
  });
});

describe("turning push on", () => {
  it("asks the browser's permission before anything else, then subscribes with the server's key and sends the subscription", async () => {
    const w = world({ permission: "default", answer: "granted" });
    expect(await pushEnable(w.env)).toBe("on");
    expect(w.calls).toEqual(["requestPermission", `GET ${PUSH_SUBSCRIPTIONS}`, `POST ${PUSH_SUBSCRIPTIONS}`]);
    expect(w.manager.subscribed).toHaveLength(1);
    expect(w.manager.subscribed[0]!.userVisibleOnly).toBe(true);
    expect(Array.from(w.manager.subscribed[0]!.applicationServerKey)).toEqual(Array.from(keyBytes(KEY_A)));
    expect(w.requests.at(-1)!.json).toEqual(w.manager.current!.toJSON());
  });

  it("keeps the browser's subscription when it was made with the same key (one per device)", async () => {
    const w = world({ permission: "granted" });
    await pushEnable(w.env);
    await pushEnable(w.env);
    expect(w.manager.subscribed).toHaveLength(1);
  });

  it("stops at a refusal or an unanswered question, without subscribing", async () => {
    const refused = world({ permission: "default", answer: "denied" });
    expect(await pushEnable(refused.env)).toBe("denied");
    const closed = world({ permission: "default", answer: "default" });
    expect(await pushEnable(closed.env)).toBe("off");
    expect([...refused.calls, ...closed.calls]).toEqual(["requestPermission", "requestPermission"]);
    expect(refused.manager.subscribed.length + closed.manager.subscribed.length).toBe(0);
  });

  it("says in a sentence that the browser's push service failed, and sends nothing to the server", async () => {
    const w = world({ permission: "granted" });
    w.manager.failSubscribe = true;
    const error = await pushEnable(w.env).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).message).toBe(PUSH_WORDS.serviceFailed);
    expect(w.requests.filter((r) => r.method === "POST")).toHaveLength(0);
  });
});

describe("turning push off and signing out", () => {
  it("deletes the server's subscription and drops the browser's", async () => {
    const w = world({ permission: "granted" });
    await pushEnable(w.env);
    const sub = w.manager.current!;
    expect(await pushDisable(w.env)).toBe("off");
    expect(w.calls.at(-1)).toBe(`DELETE ${PUSH_SUBSCRIPTIONS}`);
    expect(sub.unsubscribed).toBe(true);
    expect(w.server.subscribed).toBe(false);
  });

  it("drops the browser's subscription even when the server cannot be reached, then says so", async () => {
    const w = world({ permission: "granted", deleteFails: true });
    await pushEnable(w.env);
    const sub = w.manager.current!;
    await expect(pushDisable(w.env)).rejects.toBeInstanceOf(ApiError);
    expect(sub.unsubscribed).toBe(true);
  });

  it("never throws at sign-out and gives up after a few seconds when the server does not answer", async () => {
    vi.useFakeTimers();
    try {
      const w = world({ permission: "granted" });
      w.env.fetcher = (() => new Promise(() => undefined)) as PushEnv["fetcher"];
      let done = false;
      const forgetting = pushForget(w.env).then(() => (done = true));
      await vi.advanceTimersByTimeAsync(FORGET_TIMEOUT_MS - 1);
      expect(done).toBe(false);
      await vi.advanceTimersByTimeAsync(1);
      await forgetting;
      expect(done).toBe(true);
    } finally {
      vi.useRealTimers();
    }
    const failing = world({ permission: "granted", deleteFails: true });
    await expect(pushForget(failing.env)).resolves.toBeUndefined();
  });
});

describe("when the app offers push", () => {
  const due = { studySent: true, declined: false, permission: "default" as NotificationPermission, state: "off" as const };

  it("only once a study reached the server, while the browser would still ask and the user did not say not now", () => {
    expect(offerDue(due)).toBe(true);
    expect(offerDue({ ...due, studySent: false })).toBe(false); // first load, nothing sent yet
    expect(offerDue({ ...due, declined: true })).toBe(false);
    expect(offerDue({ ...due, permission: "granted" })).toBe(false);
    expect(offerDue({ ...due, permission: "denied" })).toBe(false);
    expect(offerDue({ ...due, permission: null })).toBe(false);
    expect(offerDue({ ...due, state: "unavailable" })).toBe(false);
    expect(offerDue({ ...due, state: "unsupported" })).toBe(false);
    expect(offerDue({ ...due, state: null })).toBe(false); // the server not asked yet
  });

  it("remembers not now per user on this device", () => {
    const { env } = world();
    expect(pushDeclined("tech", env)).toBe(false);
    pushDecline("tech", env);
    expect(pushDeclined("tech", env)).toBe(true);
    expect(pushDeclined("nurse", env)).toBe(false);
  });
});

describe("a push message", () => {
  it("keeps the server's title, body, tag, unread count and kind", () => {
    const payload = pushPayloadOf({ title: "CT study received by the PACS", body: "Every image arrived.", url: "/#/study/0b5c-ad", tag: "upload-1", unread: 3, kind: "upload_completed", seq: 41, notification_id: 7 }, ORIGIN);
    expect(payload).toEqual({ title: "CT study received by the PACS", body: "Every image arrived.", url: "/#/study/0b5c-ad", tag: "upload-1", unread: 3, kind: "upload_completed", seq: 41, notificationId: 7 });
  });

  it("falls back to the app's name and the start screen for anything malformed", () => {
    expect(pushPayloadOf(null, ORIGIN)).toEqual({ title: "RelayPACS", body: "", url: "/", tag: "", unread: null, kind: "", seq: null, notificationId: null });
    expect(pushPayloadOf({ title: 5, unread: -1, seq: 1.5 }, ORIGIN)).toMatchObject({ title: "RelayPACS", unread: null, seq: null });
  });

  it("opens only screens of this app: no other site, no server path", () => {
    expect(appPath("/#/reports/12", ORIGIN)).toBe("/#/reports/12");
    expect(appPath("/#/notifications", ORIGIN)).toBe("/#/notifications");
    for (const bad of ["https://evil.example/#/study/1", "//evil.example/x", "/\\evil.example", "javascript:alert(1)", "/api/v1/auth/logout", "/admin/", "#/study/1", 42]) {
      expect(appPath(bad, ORIGIN)).toBe("/");
    }
  });
});

describe("the windows a push and a click look at", () => {
  const win = (url: string, focused: boolean, visibilityState: DocumentVisibilityState = "visible"): WindowLike => ({ url, focused, visibilityState });

  it("shows the notification unless a window of the app is focused and visible", () => {
    expect(someoneLooking([], ORIGIN)).toBe(false);
    expect(someoneLooking([win(`${ORIGIN}/`, false, "hidden")], ORIGIN)).toBe(false);
    expect(someoneLooking([win(`${ORIGIN}/#/settings`, true)], ORIGIN)).toBe(true);
    // The Django admin of the same origin is not the app.
    expect(someoneLooking([win(`${ORIGIN}/admin/`, true)], ORIGIN)).toBe(false);
  });

  it("goes to the focused window, else a visible one, else any window of the app, else none", () => {
    const hidden = win(`${ORIGIN}/`, false, "hidden");
    const visible = win(`${ORIGIN}/#/reports`, false);
    const focused = win(`${ORIGIN}/#/settings`, true);
    expect(windowFor([hidden, visible, focused], ORIGIN)).toBe(focused);
    expect(windowFor([hidden, visible], ORIGIN)).toBe(visible);
    expect(windowFor([hidden], ORIGIN)).toBe(hidden);
    expect(windowFor([win(`${ORIGIN}/admin/`, true)], ORIGIN)).toBeNull();
  });
});

describe("the app icon's badge", () => {
  function spyNavigator(fail = false) {
    const calls: (number | "clear")[] = [];
    const nav: BadgeNavigator = {
      setAppBadge: async (n?: number) => {
        calls.push(n ?? 0);
        if (fail) throw new DOMException("not allowed", "NotAllowedError");
      },
      clearAppBadge: async () => {
        calls.push("clear");
      },
    };
    return { nav, calls };
  }

  it("shows the unread count and is cleared at none; a refusal or a missing API is no error", async () => {
    const { nav, calls } = spyNavigator();
    await badgeSet(4, nav);
    await badgeSet(0, nav);
    await badgeSet(Number.NaN, nav);
    expect(calls).toEqual([4, "clear", "clear"]);
    await expect(badgeSet(2, spyNavigator(true).nav)).resolves.toBeUndefined();
    await expect(badgeSet(2, {})).resolves.toBeUndefined();
    await expect(badgeSet(2, undefined)).resolves.toBeUndefined();
  });

  it("follows the centre's count once it is loaded, not before", async () => {
    const { nav, calls } = spyNavigator();
    let state = { loaded: false, unreadCount: 0 };
    const listeners = new Set<() => void>();
    const source = {
      get: () => state,
      subscribe: (l: () => void) => {
        listeners.add(l);
        return () => listeners.delete(l);
      },
    };
    const change = (next: typeof state) => {
      state = next;
      for (const l of listeners) l();
    };
    const stop = badgeFollow(source, nav);
    expect(calls).toEqual([]);
    change({ loaded: true, unreadCount: 2 });
    change({ loaded: true, unreadCount: 0 });
    stop();
    change({ loaded: true, unreadCount: 5 });
    await Promise.resolve();
    expect(calls).toEqual([2, "clear"]);
  });
});

describe("clearing the device while something is unsent", () => {
  it("says what would be lost, in sentences, with choices that fit the count", () => {
    expect(clearWords({ studies: 1, replies: 0 })).toEqual(["1 study is not yet received by the PACS: clearing deletes it from this device, and it is not sent."]);
    expect(clearWords({ studies: 2, replies: 1 })).toEqual([
      "2 studies are not yet received by the PACS: clearing deletes them from this device, and they are not sent.",
      "1 answer to the radiologist is not yet sent: clearing deletes it too.",
    ]);
    expect(clearChoices({ studies: 1, replies: 0 })).toEqual({ keep: "Keep it and do not clear", discard: "Delete it and clear" });
    expect(clearChoices({ studies: 1, replies: 1 })).toEqual({ keep: "Keep them and do not clear", discard: "Delete them and clear" });
  });
});

afterEach(() => {
  vi.useRealTimers();
});
