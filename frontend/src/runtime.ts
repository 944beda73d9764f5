/** Starts the upload engine in the page for the signed-in user and wakes it when something
 * changes: back online, page visible again, a study added in another tab. */
import { SYNC_TAG, UPLOADER_LOCK, Uploader, WAKE_CHANNEL, wakeUploaders } from "./uploader";

interface SyncRegistration extends ServiceWorkerRegistration {
  sync?: { register(tag: string): Promise<void> };
}

let current: { owner: string; stop: () => void; uploader: Uploader | null } | null = null;

export function startUploads(owner: string): void {
  if (current?.owner === owner) return;
  stopUploads();
  const controller = new AbortController();
  const state: { owner: string; stop: () => void; uploader: Uploader | null } = {
    owner,
    uploader: null,
    stop: () => controller.abort(),
  };
  current = state;
  const wake = () => state.uploader?.wake();
  const onVisible = () => {
    if (document.visibilityState === "visible") wake();
  };
  const channel = new BroadcastChannel(WAKE_CHANNEL);
  channel.onmessage = wake;
  window.addEventListener("online", wake);
  window.addEventListener("offline", wake);
  document.addEventListener("visibilitychange", onVisible);
  controller.signal.addEventListener("abort", () => {
    channel.close();
    window.removeEventListener("online", wake);
    window.removeEventListener("offline", wake);
    document.removeEventListener("visibilitychange", onVisible);
    wake();
  });
  const run = async () => {
    const uploader = new Uploader(owner, controller.signal);
    state.uploader = uploader;
    await uploader.run();
  };
  // One uploader at a time across tabs and the service worker; other tabs wait their turn.
  // Without a secure context there are no Web Locks (and no service worker): this page sends.
  if (!navigator.locks) void run().catch(() => undefined);
  else void navigator.locks.request(UPLOADER_LOCK, { signal: controller.signal }, run).catch(() => undefined);
}

export function stopUploads(): void {
  current?.stop();
  current = null;
}

export function wakeUploads(): void {
  current?.uploader?.wake();
}

/** "Try now": end the engine's wait at once, in whichever tab holds the upload lock. One
 * message reaches every tab's uploader, this one's too (its channel is another object); a
 * second, direct wake could arrive late and cut short the wait after the next try. */
export function tryUploadsNow(): void {
  if (typeof BroadcastChannel !== "undefined") wakeUploaders();
  else wakeUploads();
}

/** Ask the browser to run the service worker's uploader when the network is back, even if
 * every tab is closed (Background Sync; Chromium only). */
export async function requestBackgroundSync(): Promise<void> {
  try {
    const registration = (await navigator.serviceWorker?.getRegistration()) as SyncRegistration | undefined;
    await registration?.sync?.register(SYNC_TAG);
  } catch {
    // Not supported here: the page resumes on start and on `online` instead.
  }
}
