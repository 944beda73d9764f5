/** Whether upload states arrive by push right now, shared by the page's live stream
 * (live.ts) and the upload engine (uploader.ts): while the stream is connected the engine
 * does not poll the status of studies the server is processing or forwarding; it asks
 * once for a study the stream says has ended (to keep its summary) or that may have
 * changed while the stream was not there. Nothing here talks to the network. */

let live = false;
const due = new Set<string>();

export function streamLive(): boolean {
  return live;
}

export function setStreamLive(value: boolean): void {
  live = value;
}

/** Ask the engine to fetch this upload's status once, live stream or not. */
export function statusDue(uploadId: string): void {
  due.add(uploadId);
}

let onLinkLost: (() => void) | null = null;

/** Who hears that the engine could not reach the server (the page's live stream). */
export function whenLinkLost(callback: (() => void) | null): void {
  onLinkLost = callback;
}

/** The engine could not reach the server at all: the stream's own connection is likely gone
 * too, though a link dropped without a reset leaves its socket looking open for a minute. */
export function linkLost(): void {
  onLinkLost?.();
}

export function hasStatusDue(): boolean {
  return due.size > 0;
}

/** Whether the engine should fetch the status of `uploadId` now (consumes a `statusDue`). */
export function takeStatusDue(uploadId: string): boolean {
  const asked = due.delete(uploadId);
  return asked || !live;
}
