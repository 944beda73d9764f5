/// <reference lib="webworker" />
/** Service worker: the app shell offline (Workbox precache) and Background Sync uploads. */
import { cleanupOutdatedCaches, createHandlerBoundToURL, precacheAndRoute } from "workbox-precaching";
import { NavigationRoute, registerRoute } from "workbox-routing";
import { currentSession } from "./auth";
import { db } from "./db";
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
