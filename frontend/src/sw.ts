/// <reference lib="webworker" />
/** Service worker: the app shell offline (Workbox precache), Background Sync uploads, and
 * Web Push (the notification, the app icon's badge, opening the screen it links to). */
import { cleanupOutdatedCaches, createHandlerBoundToURL, precacheAndRoute } from "workbox-precaching";
import { NavigationRoute, registerRoute } from "workbox-routing";
import { apiFetch } from "./api";
import { accessToken, currentSession } from "./auth";
import { badgeSet } from "./badge";
import { db } from "./db";
import { NOTIFICATION_OPEN, PUSH_ARRIVED, PUSH_SUBSCRIPTIONS, pushPayloadOf, someoneLooking, windowFor, type WorkerMessage } from "./pushPayload";
import { repliesSend, REPORT_DOWNLOAD_PATH } from "./reports";
import { SYNC_TAG, UPLOADER_LOCK, Uploader } from "./uploader";

declare const self: ServiceWorkerGlobalScope & { __WB_MANIFEST: Array<{ url: string; revision: string | null }> };

// A report's PDF is fetched when opened and never kept on the device: this route, first of
// all, sends it straight to the network (no Workbox cache, no HTTP cache), whatever runtime
// caching is added below later. The API is otherwise not cached here either.
registerRoute(
  ({ url, sameOrigin }) => sameOrigin && REPORT_DOWNLOAD_PATH.test(url.pathname),
  ({ request }) => fetch(request, { cache: "no-store" }),
);
precacheAndRoute(self.__WB_MANIFEST);
cleanupOutdatedCaches();
// Every navigation outside the server's own paths gets the app shell, among them the pages
// emailed links open (/verify-email, /reset-password): they load offline too, and say the
// network is needed for what they send.
registerRoute(
  new NavigationRoute(createHandlerBoundToURL("/index.html"), {
    denylist: [/^\/api\//, /^\/admin/, /^\/static\//],
  }),
);

self.addEventListener("install", () => void self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

interface SyncEvent extends ExtendableEvent {
  tag: string;
}

async function uploadInBackground(): Promise<void> {
  const session = await currentSession();
  if (!session || session.expired) return;
  // When a page holds the lock it is already uploading: nothing to do here.
  await navigator.locks.request(UPLOADER_LOCK, { ifAvailable: true }, async (lock) => {
    if (!lock) return;
    // Answers to radiologists' questions first: one small request each.
    await repliesSend(session.username);
    await new Uploader(session.username, new AbortController().signal).run({ untilSent: true });
    const left =
      (await db.studies.where("owner").equals(session.username).filter((s) => s.state === "queued" || s.state === "uploading" || s.state === "cancelling").count()) +
      (await db.replies.where("owner").equals(session.username).filter((r) => r.state === "queued").count());
    // Failing the sync event makes the browser try again later (with its own backoff).
    if (left > 0) throw new Error(`${left} studies (or cancels) still to send`);
  });
}

self.addEventListener("sync", (event) => {
  const sync = event as SyncEvent;
  if (sync.tag === SYNC_TAG) sync.waitUntil(uploadInBackground());
});

// The app's icon, in the notification and as its small status-bar "badge" image (Android
// keeps only the image's shape for that one).
const NOTIFICATION_ICON = "/icon-192.png";

function readPush(event: PushEvent): unknown {
  try {
    return event.data?.json() ?? null;
  } catch {
    return null; // not JSON: shown with the app's name only
  }
}

// What a push shows when nobody is signed in on this device (a subscription the sign-out
// could not remove, offline): the browser requires a notification for every push
// (`userVisibleOnly`), but not the signed-out account's title, link or count.
const SIGNED_OUT_NOTIFICATION = { title: "RelayPACS", body: "Open the app to see what is new.", url: "/", tag: "relaypacs-signed-out" } as const;

/** A push: the badge from its unread count, the open windows told (they reload their
 * notifications), and the notification shown unless someone is looking at the app (its
 * page shows the toast itself). Title and body are the server's, without patient data.
 * With no signed-in session (signed out, or the sign-in expired) the badge is cleared and
 * only SIGNED_OUT_NOTIFICATION is shown, whoever is looking. */
async function pushArrived(event: PushEvent): Promise<void> {
  const session = await currentSession();
  if (!session || session.expired) {
    await badgeSet(0, self.navigator);
    const { title, body, url, tag } = SIGNED_OUT_NOTIFICATION;
    await self.registration.showNotification(title, { body, tag, data: { url, notificationId: null }, icon: NOTIFICATION_ICON, badge: NOTIFICATION_ICON });
    return;
  }
  const payload = pushPayloadOf(readPush(event), self.location.origin);
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const message: WorkerMessage = { type: PUSH_ARRIVED, kind: payload.kind, unread: payload.unread, seq: payload.seq };
  for (const client of windows) client.postMessage(message);
  if (payload.unread !== null) await badgeSet(payload.unread, self.navigator);
  if (someoneLooking(windows, self.location.origin)) return;
  await self.registration.showNotification(payload.title, {
    body: payload.body,
    tag: payload.tag || undefined,
    data: { url: payload.url, notificationId: payload.notificationId },
    icon: NOTIFICATION_ICON,
    badge: NOTIFICATION_ICON,
  });
}

/** The clicked notification, read on the server too (best effort: offline or signed out,
 * it stays unread in the notification centre). */
async function notificationRead(id: number | null): Promise<void> {
  if (id === null) return;
  try {
    const session = await currentSession();
    if (!session || session.expired) return;
    await apiFetch(`/notifications/${id}/read`, { method: "POST", token: await accessToken() });
  } catch {
    // Not read on the server: the centre still lists it as unread.
  }
}

/** A click on a notification: an open window of the app is focused and its router shown
 * the linked screen; without one, a new window opens on it. Only this app's routes. */
async function notificationOpened(notification: Notification): Promise<void> {
  const data = notification.data as { url?: unknown; notificationId?: unknown } | null;
  const { url, notificationId } = pushPayloadOf({ url: data?.url, notification_id: data?.notificationId }, self.location.origin);
  const read = notificationRead(notificationId);
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const target = windowFor(windows, self.location.origin);
  if (!target) {
    await Promise.all([self.clients.openWindow(url), read]);
    return;
  }
  const message: WorkerMessage = { type: NOTIFICATION_OPEN, url };
  target.postMessage(message);
  try {
    await target.focus();
  } catch {
    // Focusing is allowed only in answer to the user's click; the screen changed anyway.
  }
  await read;
}

self.addEventListener("push", (event) => event.waitUntil(pushArrived(event)));

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(notificationOpened(event.notification));
});

interface PushSubscriptionChangeEvent extends ExtendableEvent {
  readonly oldSubscription: PushSubscription | null;
  readonly newSubscription: PushSubscription | null;
}

/** The browser replaced or dropped this device's subscription (Firefox does, when its push
 * service asks): the new one goes to the server for the signed-in device, made again with
 * the same key when the browser gave none. Signed out, nothing is sent. */
async function subscriptionRenewed(event: PushSubscriptionChangeEvent): Promise<void> {
  const session = await currentSession();
  if (!session || session.expired) return;
  const key = event.oldSubscription?.options.applicationServerKey ?? null;
  const subscription = event.newSubscription ?? (key ? await self.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }) : null);
  if (!subscription) return;
  await apiFetch(PUSH_SUBSCRIPTIONS, { method: "POST", token: await accessToken(), json: subscription.toJSON() });
}

self.addEventListener("pushsubscriptionchange", (event) => {
  const change = event as PushSubscriptionChangeEvent;
  change.waitUntil(subscriptionRenewed(change));
});
