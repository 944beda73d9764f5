/// <reference lib="webworker" />
/** Service worker: the app shell offline (Workbox precache) and Background Sync uploads. */
import { cleanupOutdatedCaches, createHandlerBoundToURL, precacheAndRoute } from "workbox-precaching";
import { NavigationRoute, registerRoute } from "workbox-routing";
import { currentSession } from "./auth";
import { db } from "./db";
import { SYNC_TAG, UPLOADER_LOCK, Uploader } from "./uploader";

declare const self: ServiceWorkerGlobalScope & { __WB_MANIFEST: Array<{ url: string; revision: string | null }> };

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
    await new Uploader(session.username, new AbortController().signal).run({ untilSent: true });
    const left = await db.studies.where("owner").equals(session.username).filter((s) => s.state === "queued" || s.state === "uploading" || s.state === "cancelling").count();
    // Failing the sync event makes the browser try again later (with its own backoff).
    if (left > 0) throw new Error(`${left} studies (or cancels) still to send`);
  });
}

self.addEventListener("sync", (event) => {
  const sync = event as SyncEvent;
  if (sync.tag === SYNC_TAG) sync.waitUntil(uploadInBackground());
});
