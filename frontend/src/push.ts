/** Web Push for this device (docs/notifications.md, "Web Push"): whether it can be on here,
 * turning it on (the browser's permission, `pushManager.subscribe` with the server's VAPID
 * key, the subscription sent to `/notifications/push-subscriptions`) and off, and when the
 * app offers it: once the user's first study has reached the server, with a card that says
 * why, never on first load; "Not now" is remembered on this device for this user.
 *
 * The browser's parts come through a `PushEnv` so the logic runs in Vitest with stand-ins;
 * `browserEnv()` is the real one. */
import { signedInFetch } from "./account";
import { ApiError } from "./api";
import { centre } from "./notifications";
import { navigate, routeOf } from "./router";
import { NOTIFICATION_OPEN, PUSH_ARRIVED, PUSH_SUBSCRIPTIONS, type WorkerMessage } from "./pushPayload";

export { PUSH_SUBSCRIPTIONS };
const NOT_NOW_KEY = "relaypacs-push-not-now:";
// Signing out does not wait longer than this for the device's subscription to go.
export const FORGET_TIMEOUT_MS = 4000;
// How long to wait for a service worker still installing before calling push unsupported.
const READY_TIMEOUT_MS = 10_000;

/** The sentences of push, on the card and in Settings. */
export const PUSH_WORDS = {
  offerTitle: "Know when your study arrives",
  offer: "Get told when your study reaches the hospital or a radiologist asks a question, even when the app is closed. The browser asks for your permission next.",
  turnOn: "Turn on",
  notNow: "Not now",
  nowOn: "Notifications are on for this device. You can turn them off in Settings.",
  nowDenied: "Notifications stay off because the browser blocks them for this site. Settings says how to allow them.",
  on: "On: this device is told when a study reaches the PACS or a radiologist asks a question, even when the app is closed.",
  off: "Off: turn them on to be told when a study reaches the PACS or a radiologist asks a question, even when the app is closed.",
  denied:
    "The browser blocks notifications from RelayPACS. To allow them, open the site's settings in the browser (the icon beside the address, or the browser's settings for this site), allow notifications, then reload this page.",
  unavailable: "Notifications when the app is closed are not available here: this server does not send them.",
  unsupported: "Notifications when the app is closed are not available in this browser. On an iPhone or iPad, add RelayPACS to the home screen and open it from there.",
  enable: "Turn on notifications",
  disable: "Turn off notifications",
  turnedOff: "Notifications are off for this device.",
  serviceFailed: "The browser could not reach its notification service, so notifications are not on.",
  serviceFailedHint: "Try again later; with the app open you still see what happens.",
  offline: "Turning notifications on or off needs the network, and the server cannot be reached.",
} as const;

/** What the server says (GET): its public key, and whether this device is subscribed. */
export interface PushServerState {
  vapid_public_key: string;
  subscribed: boolean;
  enabled: boolean;
}

/** Where push stands on this device:
 * - `unsupported`: this browser has no service worker, PushManager or notifications;
 * - `unavailable`: the server does not send push;
 * - `denied`: the user blocked notifications for the site in the browser;
 * - `off`: it can be turned on; `on`: this device receives them. */
export type PushState = "unsupported" | "unavailable" | "denied" | "off" | "on";

export interface PushSubscriptionLike {
  readonly endpoint: string;
  readonly options: { readonly applicationServerKey: ArrayBuffer | null };
  toJSON(): PushSubscriptionJSON;
  unsubscribe(): Promise<boolean>;
}

export interface PushManagerLike {
  getSubscription(): Promise<PushSubscriptionLike | null>;
  subscribe(options: { userVisibleOnly: boolean; applicationServerKey: Uint8Array<ArrayBuffer> }): Promise<PushSubscriptionLike>;
}

export interface PushEnv {
  fetcher: typeof signedInFetch;
  /** The service worker's push manager, or null where push cannot work. */
  pushManager(): Promise<PushManagerLike | null>;
  /** The Notification permission, or null without the Notification API. */
  permission(): NotificationPermission | null;
  requestPermission(): Promise<NotificationPermission>;
  storage: Pick<Storage, "getItem" | "setItem" | "removeItem"> | null;
}

function localStore(): PushEnv["storage"] {
  try {
    return typeof localStorage === "undefined" ? null : localStorage;
  } catch {
    return null;
  }
}

export function browserEnv(): PushEnv {
  return {
    fetcher: signedInFetch,
    async pushManager() {
      if (typeof navigator === "undefined" || !("serviceWorker" in navigator) || typeof PushManager === "undefined") return null;
      const registration = await navigator.serviceWorker.getRegistration();
      if (!registration) return null;
      if (!registration.active) {
        // `subscribe` needs an active worker; a first visit may still be installing it.
        const ready = await Promise.race([navigator.serviceWorker.ready, new Promise<null>((resolve) => setTimeout(() => resolve(null), READY_TIMEOUT_MS))]);
        if (!ready) return null;
      }
      return registration.pushManager as unknown as PushManagerLike;
    },
    permission: () => (typeof Notification === "undefined" ? null : Notification.permission),
    requestPermission: () => Notification.requestPermission(),
    storage: localStore(),
  };
}

/** The VAPID public key (base64url, unpadded, an uncompressed P-256 point) as bytes. */
export function keyBytes(base64url: string): Uint8Array<ArrayBuffer> {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (base64url.length % 4)) % 4);
  const raw = atob(base64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/** Whether `subscription` was made with `key` (a new server key needs a new subscription). */
export function sameKey(subscription: PushSubscriptionLike, key: Uint8Array): boolean {
  const had = subscription.options.applicationServerKey;
  if (!had) return false;
  const bytes = new Uint8Array(had);
  return bytes.length === key.length && bytes.every((b, i) => b === key[i]);
}

async function serverState(env: PushEnv): Promise<PushServerState> {
  return env.fetcher<PushServerState>(PUSH_SUBSCRIPTIONS);
}

/** Subscribe with the server's key (again when the browser's subscription has another one)
 * and send the subscription to the server (which replaces this device's previous one). */
async function subscribeAndSend(manager: PushManagerLike, server: PushServerState, env: PushEnv): Promise<void> {
  const key = keyBytes(server.vapid_public_key);
  let subscription = await manager.getSubscription();
  if (subscription && !sameKey(subscription, key)) {
    await subscription.unsubscribe();
    subscription = null;
  }
  if (!subscription) {
    try {
      subscription = await manager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    } catch {
      // The browser's push service (Google's, Mozilla's, Apple's) refused or cannot be reached.
      throw new ApiError(503, "push_service_unreachable", PUSH_WORDS.serviceFailed, PUSH_WORDS.serviceFailedHint);
    }
  }
  await env.fetcher(PUSH_SUBSCRIPTIONS, { method: "POST", json: subscription.toJSON() });
}

/** Where push stands on this device. When it is on but the server's key changed (keys
 * rotated), it subscribes again with the new key and tells the server. Throws what the
 * server's GET throws (offline, signed out). */
export async function pushStatus(env: PushEnv = browserEnv()): Promise<PushState> {
  const permission = env.permission();
  const manager = permission === null ? null : await env.pushManager();
  if (!manager) return "unsupported";
  const server = await serverState(env);
  if (!server.enabled || !server.vapid_public_key) return "unavailable";
  if (permission === "denied") return "denied";
  if (permission !== "granted" || !server.subscribed) return "off";
  const subscription = await manager.getSubscription();
  // The browser dropped it (site data cleared): off until the user turns it on again.
  if (!subscription) return "off";
  if (!sameKey(subscription, keyBytes(server.vapid_public_key))) await subscribeAndSend(manager, server, env);
  return "on";
}

/** Turn push on for this device: the browser's permission first (asked only here, from the
 * user's tap), then the subscription. Returns where push stands after. */
export async function pushEnable(env: PushEnv = browserEnv()): Promise<PushState> {
  let permission = env.permission();
  if (permission === null) return "unsupported";
  // Asked before anything else is awaited: some browsers allow the prompt only right in the tap.
  if (permission === "default") permission = await env.requestPermission();
  if (permission === "denied") return "denied";
  if (permission !== "granted") return "off";
  const manager = await env.pushManager();
  if (!manager) return "unsupported";
  const server = await serverState(env);
  if (!server.enabled || !server.vapid_public_key) return "unavailable";
  await subscribeAndSend(manager, server, env);
  return "on";
}

/** Turn push off for this device: the server forgets the subscription and the browser drops
 * it. The browser's part is done even when the server cannot be reached (the push service
 * then refuses the server's next message and the server deletes the subscription); the
 * server's error is thrown after it. */
export async function pushDisable(env: PushEnv = browserEnv()): Promise<PushState> {
  let failure: unknown = null;
  try {
    await env.fetcher(PUSH_SUBSCRIPTIONS, { method: "DELETE" });
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) failure = error;
  }
  const manager = await env.pushManager();
  const subscription = await manager?.getSubscription();
  await subscription?.unsubscribe();
  if (failure) throw failure;
  return env.permission() === "denied" ? "denied" : "off";
}

/** At sign-out: this device's subscription goes (server, then browser), within
 * FORGET_TIMEOUT_MS. Never throws and never holds the sign-out longer. */
export async function pushForget(env: PushEnv = browserEnv()): Promise<void> {
  const forget = pushDisable(env).then(
    () => undefined,
    () => undefined,
  );
  await Promise.race([forget, new Promise<void>((resolve) => setTimeout(resolve, FORGET_TIMEOUT_MS))]);
}

/** Whether the user said "Not now" to the offer on this device. */
export function pushDeclined(owner: string, env: Pick<PushEnv, "storage"> = browserEnv()): boolean {
  try {
    return env.storage?.getItem(NOT_NOW_KEY + owner) === "1";
  } catch {
    return false;
  }
}

export function pushDecline(owner: string, env: Pick<PushEnv, "storage"> = browserEnv()): void {
  try {
    env.storage?.setItem(NOT_NOW_KEY + owner, "1");
  } catch {
    // No storage: the card comes back next time, and "Not now" again hides it.
  }
}

/** The moment the app offers push: after the user's first study reached the server (every
 * byte sent), which is when there is something to be told about; never before, never again
 * after "Not now", and only while the browser would still ask (a permission granted or
 * refused already is for Settings). */
export function offerDue(input: { studySent: boolean; declined: boolean; permission: NotificationPermission | null; state: PushState | null }): boolean {
  return input.studySent && !input.declined && input.permission === "default" && input.state === "off";
}

/** The local states of a study whose bytes have all reached the server. */
export const SENT_STATES: ReadonlySet<string> = new Set(["processing", "forwarding", "completed"]);

/** What the page does with the service worker's messages: open the screen a notification
 * links to, reload the notifications when a push arrived. Returns the function that stops. */
export function listenToServiceWorker(handlers: { open(path: string): void; pushed(unread: number | null): void }): () => void {
  if (typeof navigator === "undefined" || !("serviceWorker" in navigator)) return () => undefined;
  const onMessage = (event: MessageEvent) => {
    const message = event.data as WorkerMessage | null;
    if (!message || typeof message !== "object") return;
    if (message.type === NOTIFICATION_OPEN && typeof message.url === "string") handlers.open(message.url);
    if (message.type === PUSH_ARRIVED) handlers.pushed(message.unread);
  };
  navigator.serviceWorker.addEventListener("message", onMessage);
  return () => navigator.serviceWorker.removeEventListener("message", onMessage);
}

/** The page's side of the service worker's messages: a notification clicked opens its screen
 * here (the router, no reload); a push that arrived reloads the notification centre when
 * someone is signed in (the badge follows the centre). */
export function followServiceWorker(signedIn: boolean): () => void {
  return listenToServiceWorker({
    open: (path) => navigate(routeOf(new URL(path, window.location.origin))),
    pushed: () => {
      if (signedIn) void centre.load();
    },
  });
}
